"""What the router serves over HTTPS, decided purely, and its nginx configuration.

``view`` turns the route table, the certificates and the deployments' TLS
choices into a ``TlsView``: which hostnames get which certificate (one HTTPS
server block per route and certificate), which hostnames redirect HTTP to
HTTPS, and what answers unknown names. ``http_lines``, ``challenge_location``,
``redirect_server`` and ``https_servers`` render it; router/nginx.py calls them
where they belong in nginx.conf. Who calls ``view``: the Router, on every pass.

Choices: TLS 1.2 and 1.3 only, Mozilla's "intermediate" ciphers, HTTP/2 by ALPN,
session resumption by a shared session cache and by tickets whose keys survive
reloads (files rotated by the certificate loop). A hostname without a
certificate is not served over HTTPS: the handshake is refused, unless the
platform's own wildcard covers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bae.logstore import router_log_name
from bae.model import Certificate, TlsState
from router.certs import choose
from router.pages import page

__all__ = ["Site", "TlsView", "view", "http_lines", "challenge_location", "redirect_server", "https_servers",
           "CHALLENGE_PATH"]

CHALLENGE_PATH = "/.well-known/acme-challenge/"

# Mozilla's "intermediate" configuration (TLS 1.2 ciphers; TLS 1.3 suites are OpenSSL's defaults).
_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
            "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
            "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384")


@dataclass(frozen=True)
class Site:
    """One HTTPS server block: some hostnames of one route, served with one certificate."""

    route_key: str
    app: str
    deployment: str
    hostnames: tuple[str, ...]
    cert: str  # path of NAME.pem; NAME.key is beside it
    serial: str
    hsts: bool


@dataclass(frozen=True)
class TlsView:
    listen: str  # host:port nginx listens on for HTTPS
    port: int
    sites: tuple[Site, ...]
    redirects: tuple[tuple[str, tuple[str, ...]], ...]  # (route key, hostnames) whose HTTP answers 308
    default_cert: str | None  # the platform's wildcard for names no site has; None: refuse the handshake
    ticket_keys: tuple[str, ...]  # files; the first encrypts new tickets
    challenge_upstream: str  # host:port of the HTTP-01 answers (router.acme.Challenges); "": none
    hsts_max_age: int

    def redirected(self, route_key: str) -> tuple[str, ...]:
        return next((hosts for key, hosts in self.redirects if key == route_key), ())



def view(routes, dep_ids: dict[str, int], certs: list[Certificate], states: dict[int, TlsState], now: datetime, *,
         listen: str, port: int, cert_dir: Path, ticket_keys: tuple[str, ...], challenge_upstream: str,
         hsts_max_age: int) -> TlsView:
    """Decide what HTTPS serves. ``dep_ids``: route key -> deployment id."""
    platform = [c for c in certs if c.deployment_id is None]
    by_dep: dict[int, list[Certificate]] = {}
    for c in certs:
        if c.deployment_id is not None:
            by_dep.setdefault(c.deployment_id, []).append(c)
    sites: list[Site] = []
    redirects = []
    for r in routes:
        dep_id = dep_ids.get(r.key)
        state = states.get(dep_id) or TlsState(dep_id or 0)
        groups: dict[str, list[str]] = {}
        chosen: dict[str, Certificate] = {}
        for host in r.hostnames:
            cert = choose(host, by_dep.get(dep_id, []) + platform, now)
            if cert is not None:
                groups.setdefault(cert.name, []).append(host)
                chosen[cert.name] = cert
        for name, hosts in groups.items():
            sites.append(Site(r.key, r.app, r.deployment, tuple(hosts), str(Path(cert_dir) / f"{name}.pem"),
                              chosen[name].serial, state.hsts))
        if state.redirect:
            hosts = tuple(h for h in r.hostnames if any(h in g for g in groups.values()))
            if hosts:
                redirects.append((r.key, hosts))
    default = None
    wildcard = [c for c in platform if c.hostnames and any(n.startswith("*.") for n in c.hostnames)]
    valid = [c for c in wildcard if datetime.fromisoformat(c.not_before) <= now < datetime.fromisoformat(c.not_after)]
    if valid:
        default = max(valid, key=lambda c: c.not_after)
    return TlsView(listen, port, tuple(sites), tuple(redirects),
                   str(Path(cert_dir) / f"{default.name}.pem") if default else None,
                   tuple(ticket_keys), challenge_upstream, hsts_max_age)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key(pem: str) -> str:
    return pem[: -len(".pem")] + ".key"


def http_lines(tls: TlsView) -> list[str]:
    """http-level settings every HTTPS server shares."""
    return [
        "  ssl_protocols TLSv1.2 TLSv1.3;",
        f"  ssl_ciphers {_CIPHERS};",
        "  ssl_prefer_server_ciphers off;",
        "  ssl_session_cache shared:bae_tls:20m; ssl_session_timeout 1d;",
        "  ssl_session_tickets on;",
        *[f"  ssl_session_ticket_key {path};" for path in tls.ticket_keys],
        "  ssl_buffer_size 16k;",
    ]


def challenge_location(tls: TlsView) -> list[str]:
    """HTTP-01 answers, before routing: from the ACME client's tokens (router.acme.Challenges)."""
    if not tls.challenge_upstream:
        return []
    return [f"    location ^~ {CHALLENGE_PATH} {{ proxy_pass http://{tls.challenge_upstream}; access_log off; }}"]


def _https_url(tls: TlsView) -> str:
    return "https://$host" + ("" if tls.port == 443 else f":{tls.port}") + "$request_uri"


def redirect_server(tls: TlsView, listen: str, hostnames: tuple[str, ...], log: str) -> list[str]:
    """Plain HTTP for hostnames that redirect: HTTP-01 answers stay, everything else gets a 308."""
    return [
        "  server {",
        f"    listen {listen};",
        f"    server_name {' '.join(hostnames)};",
        f"    access_log {log} bae buffer=64k flush=1s;",
        *challenge_location(tls),
        f"    location / {{ return 308 {_https_url(tls)}; }}",
        "  }",
    ]


def https_servers(tls: TlsView, routes, logs: Path, error_pages: list[str]) -> list[str]:
    """The HTTPS default server and one server block per Site, routed like plain HTTP."""
    listen = f"{tls.listen} ssl http2"
    out = ["  server {", f"    listen {listen} default_server backlog=4096;", "    server_name _;"]
    if tls.default_cert:
        out += [f"    ssl_certificate {tls.default_cert}; ssl_certificate_key {_key(tls.default_cert)};",
                f"    access_log {logs}/_unknown.log bae buffer=32k flush=1s;",
                f"    location / {{ default_type text/html; return 404 {_quote(page(404))}; }}"]
    else:
        out += ["    ssl_reject_handshake on;"]
    out.append("  }")
    by_key = {r.key: r for r in routes}
    for site in tls.sites:
        r = by_key[site.route_key]
        out += [
            "  server {",
            f"    listen {listen};",
            f"    server_name {' '.join(site.hostnames)};",
            f"    ssl_certificate {site.cert}; ssl_certificate_key {_key(site.cert)};",
            f"    access_log {logs}/{router_log_name(r.app, r.deployment)} bae buffer=64k flush=1s;",
            *error_pages,
        ]
        if site.hsts:  # add_header at this level replaces the inherited ones: repeat the request id
            out += [f'    add_header Strict-Transport-Security "max-age={tls.hsts_max_age}" always;',
                    "    add_header X-Request-Id $bae_request_id always;"]
        if r.endpoints:
            out.append(f"    location / {{ proxy_pass http://u-{r.key}; }}")
        else:
            out.append("    location / { return 503; }")
        out.append("  }")
    return out

