"""What HTTPS serves (router/tls.py view), decided without nginx: one server block per route and
certificate, redirects only where a certificate exists, the platform wildcard for unknown names."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

from bae.model import Certificate, Route, TlsState
from router import tls

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def cert(name, dep, names, days=30, source="uploaded"):
    return Certificate(name, dep, source, tuple(names), "CA", name, name * 4, (NOW - timedelta(days=1)).isoformat(),
                       (NOW + timedelta(days=days)).isoformat())


ROUTES = [Route("shop", "default", ("shop.bae.localhost", "www.shop.example", "api.shop.example"), ()),
          Route("blog", "default", ("blog.bae.localhost",), ())]
IDS = {"shop--default": 1, "blog--default": 2}


def view(certs, states=None):
    return tls.view(ROUTES, IDS, certs, states or {}, NOW, listen="127.0.0.1:443", port=443, cert_dir=Path("/t"),
                    ticket_keys=("/t/ticket-1.key",), challenge_upstream="127.0.0.1:9", hsts_max_age=60)


def test_one_server_block_per_route_and_certificate():
    v = view([cert("a", 1, ["shop.bae.localhost", "www.shop.example"]), cert("b", 1, ["api.shop.example"], source="acme"),
              cert("p", None, ["*.bae.localhost"])])
    blocks = {(s.route_key, s.hostnames, s.cert) for s in v.sites}
    assert blocks == {("shop--default", ("shop.bae.localhost", "www.shop.example"), "/t/a.pem"),
                      ("shop--default", ("api.shop.example",), "/t/b.pem"),
                      ("blog--default", ("blog.bae.localhost",), "/t/p.pem")}
    assert v.default_cert == "/t/p.pem"


def test_no_certificate_no_https_and_no_redirect():
    v = view([cert("a", 1, ["www.shop.example"])], {1: TlsState(1, redirect=True, hsts=True)})
    assert v.redirected("shop--default") == ("www.shop.example",)
    assert v.redirected("blog--default") == () and v.default_cert is None
    assert all(s.hsts for s in v.sites)


def test_expired_certificates_are_not_served():
    assert view([cert("old", 1, ["www.shop.example"], days=-0.5)]).sites == ()


def test_rendered_blocks():
    v = view([cert("a", 1, ["www.shop.example"])], {1: TlsState(1, redirect=True, hsts=True)})
    text = "\n".join(tls.https_servers(v, ROUTES, Path("/logs"), []))
    assert "listen 127.0.0.1:443 ssl http2 default_server" in text and "ssl_reject_handshake on;" in text
    assert "ssl_certificate /t/a.pem; ssl_certificate_key /t/a.key;" in text
    assert 'Strict-Transport-Security "max-age=60"' in text and "location / { return 503; }" in text
    redirect = "\n".join(tls.redirect_server(v, "127.0.0.1:80", ("www.shop.example",), "/logs/x.log"))
    assert "return 308 https://$host$request_uri;" in redirect and "proxy_pass http://127.0.0.1:9;" in redirect
    http = "\n".join(tls.http_lines(v))
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in http and "ssl_session_ticket_key /t/ticket-1.key;" in http
