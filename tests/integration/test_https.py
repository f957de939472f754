"""HTTPS through the real nginx router with uploaded certificates: routing, headers, error pages,
HTTP/2 by ALPN, WebSockets over TLS, the HTTP→HTTPS redirect, the platform's wildcard, and every
bad upload refused with its reason."""

from __future__ import annotations

import json
import ssl
import stat
import warnings
from pathlib import Path

import pytest
import requests
import websocket

from helpers import push_sample, wait_for
from tlsutil import client_context, https_get, make_ca, make_leaf, served

pytestmark = pytest.mark.integration

SETTINGS = {"scheduler": {"boot_timeout": 15, "stop_grace": 5}, "router": {"read_timeout": 2.0}}


@pytest.fixture(scope="module")
def ca():
    return make_ca("bae https test root")


@pytest.fixture(scope="module")
def dev(server):
    return server.user("tls")


@pytest.fixture(scope="module")
def shop(server, dev, tmp_path_factory):
    return push_sample(dev, tmp_path_factory.mktemp("src") / "shop", "shop", domains=("www.shop.example",))


def upload(dev, target: str, issued, *extra) -> "object":
    return dev.ssh("certs:add", target, "-", input=(issued.cert_pem + b"".join(extra) + issued.key_pem).decode())


def serial_of(server, host):
    cert = served(server.https_port, host)
    return cert.serial_number if cert else None


def settled(server, host, expected) -> bool:
    """Five handshakes in a row see ``expected`` (a serial, None for none, True for any): after a reload an
    old worker of a loaded machine may still take a connection or two."""
    for _ in range(5):
        seen = serial_of(server, host)
        if not (seen is not None if expected is True else seen == expected):
            return False
    return True


def answered(server, host, path, context):
    """(status, headers, body) of an HTTPS request, or None when the handshake was refused: after a
    reload, a connection an old worker accepted just before it may still see the old configuration
    (seen rarely, even after five handshakes in a row saw the new one)."""
    try:
        return https_get(server.https_port, host, path, context=context)
    except ssl.SSLError:
        return None


def test_uploaded_certificate_serves_https_with_the_same_routing_and_headers(server, dev, shop, ca):
    leaf = make_leaf(ca, ["shop.bae.localhost", "www.shop.example"])
    result = upload(dev, "shop", leaf)
    assert result.returncode == 0, result.stderr
    assert "Added certificate" in result.stdout and "PRIVATE KEY-----\n" not in result.stdout + result.stderr
    wait_for(lambda: settled(server, "shop.bae.localhost", leaf.cert.serial_number), what="the certificate")
    context = client_context(cadata=ca.cert_pem)
    status, headers, body = wait_for(lambda: answered(server, "shop.bae.localhost", "/headers", context),
                                     what="an HTTPS answer")
    seen = json.loads(body)
    assert status == 200
    assert seen["X-Forwarded-Proto"] == "https" and seen["X-Forwarded-Port"] == str(server.https_port)
    assert headers["X-Request-Id"] == seen["X-Request-Id"]
    status, _, body = https_get(server.https_port, "www.shop.example", "/", context=context)
    assert status == 200 and json.loads(body)["BAE_APP"] == "shop"
    # the access log has the HTTPS requests too
    path = server.data / "logs" / "router" / "shop--default.log"
    https_get(server.https_port, "shop.bae.localhost", "/over-tls", context=context)
    wait_for(lambda: path.exists() and "/over-tls" in path.read_text(), what="the access log")
    # keys: root-only files, never in the database nor in any output
    keys = list((server.data / "tls").glob("*.key"))
    assert keys and all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    assert stat.S_IMODE((server.data / "tls").stat().st_mode) == 0o700
    listed = dev.ssh("certs", "shop")
    assert listed.returncode == 0 and "PRIVATE KEY-----" not in listed.stdout
    assert "uploaded" in listed.stdout and "www.shop.example" in listed.stdout and "bae https test root" in listed.stdout
    assert "PRIVATE KEY-----" not in server.log() and leaf.key_pem.decode().splitlines()[1] not in server.log()


def test_tls_versions_and_http2_by_alpn(server, dev, shop, ca):
    wait_for(lambda: settled(server, "shop.bae.localhost", True), what="a certificate")
    context = client_context(cadata=ca.cert_pem, alpn=("h2", "http/1.1"))
    import socket

    with socket.create_connection(("127.0.0.1", server.https_port)) as raw:
        with context.wrap_socket(raw, server_hostname="shop.bae.localhost") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", server.https_port)) as raw:
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname="shop.bae.localhost")
    # curl speaks HTTP/2 over it
    from helpers import run

    out = run(["curl", "-sS", "--http2", "--cacert", "/dev/stdin", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
               "--resolve", f"shop.bae.localhost:{server.https_port}:127.0.0.1",
               f"https://shop.bae.localhost:{server.https_port}/"], input=ca.cert_pem.decode())
    assert out.stdout.strip() == "2 200", out.stderr


def _handshake(server, context, session=None):
    """One HTTPS request on a new connection; (the TLS session, whether it was resumed)."""
    import socket

    with socket.create_connection(("127.0.0.1", server.https_port)) as raw:
        with context.wrap_socket(raw, server_hostname="shop.bae.localhost", session=session) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: shop.bae.localhost\r\nConnection: close\r\n\r\n")
            while tls.recv(65536):
                pass
            return tls.session, tls.session_reused


def _workers(server) -> set[str]:
    master = (server.data / "router" / "nginx.pid").read_text().strip()
    try:
        return set(Path(f"/proc/{master}/task/{master}/children").read_text().split())
    except OSError:
        return set()


def test_session_resumption_survives_a_reload(server, dev, shop, ca):
    leaf = make_leaf(ca, ["shop.bae.localhost", "www.shop.example"])
    assert upload(dev, "shop", leaf).returncode == 0  # replaces an upload for the same names
    wait_for(lambda: settled(server, "shop.bae.localhost", leaf.cert.serial_number), what="the certificate")
    context = client_context(cadata=ca.cert_pem)
    session, reused = _handshake(server, context)
    assert not reused
    assert _handshake(server, context, session)[1]  # resumed (TLS 1.3 ticket)
    assert list((server.data / "tls").glob("ticket-*.key"))  # ticket keys kept across reloads
    # a configuration change reloads nginx; once every worker is a new one, tickets issued before still resume
    before = _workers(server)
    assert dev.ssh("domains:add", "shop", "resume.shop.example").returncode == 0
    wait_for(lambda: _workers(server) and not (_workers(server) & before), what="the reload to replace every worker")
    assert _handshake(server, context, session)[1]
    assert dev.ssh("domains:remove", "shop", "resume.shop.example").returncode == 0


def test_websockets_over_tls(server, dev, shop, ca):
    wait_for(lambda: settled(server, "shop.bae.localhost", True), what="a certificate")
    sslopt = {"context": client_context(cadata=ca.cert_pem), "server_hostname": "shop.bae.localhost"}
    ws = websocket.create_connection(f"wss://127.0.0.1:{server.https_port}/ws", host="shop.bae.localhost",
                                     sslopt=sslopt, timeout=10)
    try:
        ws.send("over tls")
        assert ws.recv() == "echo from web.1: over tls"
    finally:
        ws.close()


def test_unknown_names_get_no_certificate_and_error_pages_are_the_same(server, dev, shop, ca):
    assert served(server.https_port, "nobody.example") is None  # handshake refused: no certificate to show
    context = client_context(cadata=ca.cert_pem)
    status, headers, body = https_get(server.https_port, "shop.bae.localhost", "/sleep/5", context=context)
    assert status == 504 and b"Gateway timeout" in body and headers["X-Request-Id"].encode() in body


def test_redirect_to_https_with_hsts(server, dev, shop, ca):
    http = f"http://127.0.0.1:{server.http_port}"
    assert dev.ssh("certs:redirect", "shop", "on", "--hsts").returncode == 0
    def status(path):
        return requests.get(http + path, headers={"Host": "shop.bae.localhost"}, allow_redirects=False,
                            timeout=5).status_code

    wait_for(lambda: all(status("/x?y=1") == 308 for _ in range(5)), what="the redirect")
    moved = requests.get(http + "/x?y=1", headers={"Host": "shop.bae.localhost"}, allow_redirects=False, timeout=5)
    assert moved.headers["Location"] == f"https://shop.bae.localhost:{server.https_port}/x?y=1"
    # the ACME challenge path is still answered over HTTP (404 for an unknown token, not a redirect)
    token = requests.get(http + "/.well-known/acme-challenge/nothing", headers={"Host": "shop.bae.localhost"},
                         allow_redirects=False, timeout=5)
    assert token.status_code == 404
    context = client_context(cadata=ca.cert_pem)
    headers = wait_for(lambda: (lambda got: got and "Strict-Transport-Security" in got[1] and got[1])(
        answered(server, "shop.bae.localhost", "/", context)), what="the HSTS header over HTTPS")
    assert headers["Strict-Transport-Security"].startswith("max-age=") and headers["X-Request-Id"]
    assert "Redirect HTTP to HTTPS: on" in dev.ssh("certs", "shop").stdout
    assert dev.ssh("certs:redirect", "shop", "off").returncode == 0
    wait_for(lambda: all(status("/") == 200 for _ in range(5)), what="the redirect to go")


def test_every_bad_upload_is_refused_with_its_reason(server, dev, shop, ca):
    good = make_leaf(ca, ["www.shop.example"])
    cases = [
        (good.cert_pem + make_leaf(ca, ["www.shop.example"]).key_pem, "does not belong to the certificate"),
        (_both(make_leaf(ca, ["www.shop.example"], start=-100, days=10)).encode(), "expired on"),
        (_both(make_leaf(ca, ["www.shop.example"], start=3)).encode(), "not valid before"),
        (_both(make_leaf(ca, ["other.example"])).encode(), "matches none of"),
        (good.key_pem, "no certificate found"),
        (good.cert_pem, "no private key found"),
        (b"not pem at all", "no certificate found"),
        (good.cert_pem + make_ca("stranger").cert_pem + good.key_pem, "chain is broken"),
    ]
    for data, reason in cases:
        result = dev.ssh("certs:add", "shop", "-", input=data.decode())
        assert result.returncode != 0 and reason in result.stderr, (reason, result.stderr)
        assert "Traceback" not in result.stderr and "PRIVATE KEY-----\n" not in result.stderr + result.stdout
    stranger = server.user("stranger-tls")
    denied = stranger.ssh("certs:add", "shop", "-", input=_both(good))
    assert denied.returncode != 0 and "do not have access" in denied.stderr
    local_file = dev.ssh("certs:add", "shop", "/etc/passwd", "/etc/passwd")
    assert local_file.returncode != 0 and "standard input" in local_file.stderr
    platform = dev.ssh("certs:add", "--platform", "-", input=_both(good))
    assert platform.returncode != 0 and "only admins" in platform.stderr


def _both(issued) -> str:
    return (issued.cert_pem + issued.key_pem).decode()


def test_platform_wildcard_serves_app_hostnames_and_unknown_names(server, dev, shop, ca, admin):
    assert dev.ssh("apps:create", "other").returncode == 0
    wildcard = make_leaf(ca, ["*.bae.localhost"])
    wrong = admin.ssh("certs:add", "--platform", "-", input=_both(make_leaf(ca, ["www.shop.example"])))
    assert wrong.returncode != 0 and "*.bae.localhost" in wrong.stderr
    result = admin.ssh("certs:add", "--platform", "-", input=_both(wildcard))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: settled(server, "other.bae.localhost", wildcard.cert.serial_number), what="the wildcard")
    context = client_context(cadata=ca.cert_pem)
    status, _, body = https_get(server.https_port, "other.bae.localhost", "/", context=context)
    assert status == 503 and b"Application unavailable" in body  # nothing deployed: the same page as HTTP
    status, _, body = https_get(server.https_port, "nobody.bae.localhost", "/", context=context)
    assert status == 404 and b"No such app" in body
    # shop keeps its own certificate (its own wins over the platform's)
    assert serial_of(server, "shop.bae.localhost") != wildcard.cert.serial_number
    assert "platform" in dev.ssh("certs", "other").stdout
    assert admin.ssh("certs:remove", "--platform").returncode == 0
    wait_for(lambda: settled(server, "other.bae.localhost", None), what="the wildcard to go")


def test_remove_a_certificate(server, dev, shop, ca):
    assert upload(dev, "shop", make_leaf(ca, ["www.shop.example"])).returncode == 0  # a second one
    listed = dev.ssh("certs", "shop").stdout
    ids = {line.split()[0] for line in listed.splitlines() if line.split()[1:2] == ["uploaded"]}
    assert len(ids) == 2, listed
    ambiguous = dev.ssh("certs:remove", "shop")
    assert ambiguous.returncode != 0 and "say which one" in ambiguous.stderr
    before = len(list((server.data / "tls").glob("*.key")))
    for cert_id in ids:
        assert dev.ssh("certs:remove", "shop", cert_id).returncode == 0
    wait_for(lambda: settled(server, "shop.bae.localhost", None), what="the certificate to go")
    assert len(list((server.data / "tls").glob("*.key"))) == before - 2
    missing = dev.ssh("certs:remove", "shop", "abcdef123456")
    assert missing.returncode != 0 and "no certificate" in missing.stderr
