"""Automatic certificates against a real ACME server: Debian's Pebble on loopback, with
pebble-challtestsrv as its DNS (every name resolves to 127.0.0.1) and HTTP-01 validation sent
to the router's HTTP port. Certificates live 60 s, so renewal (at a third of the lifetime left)
happens during the test, under load, and during a CA outage."""

from __future__ import annotations

import json
import time

import pytest

from helpers import Load, free_port, push_sample, serving, wait_for
from tlsutil import Pebble, client_context, https_get, served

pytestmark = pytest.mark.integration

LIFETIME = 60


@pytest.fixture(scope="module")
def pebble(tmp_path_factory):
    ca = Pebble(tmp_path_factory.mktemp("pebble"), http_port=free_port(), validity=LIFETIME).start()
    yield ca
    ca.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, pebble):
    settings = {
        "scheduler": {"boot_timeout": 15, "stop_grace": 5},
        "router": {"http_port": pebble.http_port},
        "tls": {"acme_directory": pebble.directory, "acme_ca_bundle": str(pebble.ca_bundle),
                "challenge_port": pebble.http_port, "resolver": pebble.resolver, "acme_email": "ops@shop.example",
                "retry_min": 1.0, "retry_max": 4.0, "acme_timeout": 30.0},
    }
    with serving(tmp_path_factory.mktemp("bae"), settings) as srv:
        srv.http_port = pebble.http_port
        yield srv


@pytest.fixture(scope="module")
def dev(server):
    return server.user("acme")


@pytest.fixture(scope="module")
def shop(server, dev, tmp_path_factory):
    return push_sample(dev, tmp_path_factory.mktemp("src") / "shop", "shop", domains=("www.shop.example",))


def serial(server, host):
    cert = served(server.https_port, host)
    return cert.serial_number if cert else None


def trusted(pebble):
    """A client context that trusts Pebble's current root (it changes when Pebble restarts)."""
    return client_context(cadata=pebble.root_pem())


def test_issuance_for_an_app_and_a_custom_domain(server, dev, shop, pebble):
    result = dev.ssh("certs:auto", "shop", "on")
    assert result.returncode == 0, result.stderr + server.log()[-3000:]
    assert "Certificate issued and served" in result.stdout
    context = trusted(pebble)
    for host in ("shop.bae.localhost", "www.shop.example"):
        status, headers, body = https_get(server.https_port, host, "/headers", context=context)  # verifies the chain
        assert status == 200 and json.loads(body)["X-Forwarded-Proto"] == "https"
    listed = dev.ssh("certs", "shop").stdout
    assert "acme" in listed and "Pebble" in listed and "Automatic certificates (ACME): on" in listed
    assert "succeeded" in listed
    keys = list((server.data / "tls").glob("*.key"))
    assert keys and all(k.stat().st_mode & 0o777 == 0o600 for k in keys)


def test_renewal_before_expiry_serves_the_new_certificate_without_failed_requests(server, dev, shop, pebble):
    first = wait_for(lambda: serial(server, "shop.bae.localhost"), what="a certificate")
    url = f"https://127.0.0.1:{server.https_port}/"
    with Load(url, "shop.bae.localhost", threads=4, rate=200, context=trusted(pebble)) as load:
        wait_for(lambda: serial(server, "shop.bae.localhost") not in (None, first), timeout=LIFETIME,
                 what="the renewed certificate")
        time.sleep(1)
    print(f"{load.ok} HTTPS requests succeeded during the renewal; {load.resent} resent after an idle "
          "keep-alive connection closed on reload")
    assert not load.failures, load.failures[:5]
    assert load.ok > 500
    # still before the old one expired: renewal happened at a third of the lifetime left
    assert "last renewal" in dev.ssh("certs", "shop").stdout
    assert "renewal due" in server.log()


def test_ca_outage_keeps_the_old_certificate_and_shows_the_error(server, dev, shop, pebble):
    # wait for a fresh certificate, then take the CA away before its renewal is due
    current = serial(server, "shop.bae.localhost")
    old_root = trusted(pebble)
    pebble.stop_ca()
    try:
        wait_for(lambda: "cannot be reached" in dev.ssh("certs", "shop").stdout, timeout=LIFETIME,
                 what="the failed renewal to show")
        listed = dev.ssh("certs", "shop").stdout
        assert "failed:" in listed and "failures in a row" in listed
        assert serial(server, "shop.bae.localhost") == current  # the old certificate keeps serving
        status, _, _ = https_get(server.https_port, "www.shop.example", "/", context=old_root)  # and verifies
        assert status == 200
    finally:
        pebble.start_ca()
    # the CA is back: the next retry (backoff of at most 4 s here) renews
    wait_for(lambda: "succeeded" in dev.ssh("certs", "shop").stdout, timeout=30, what="the retry to succeed")
    context = trusted(pebble)  # a restarted Pebble has a new root
    status, _, _ = https_get(server.https_port, "shop.bae.localhost", "/", context=context)
    assert status == 200


def test_preflight_failure_orders_nothing(server, dev, shop, pebble):
    pebble.servfail("broken.shop.example")
    orders = pebble.orders()
    assert dev.ssh("domains:add", "shop", "broken.shop.example").returncode == 0
    wait_for(lambda: "pre-flight" in dev.ssh("certs", "shop").stdout, timeout=20, what="the pre-flight failure")
    listed = dev.ssh("certs", "shop").stdout
    assert "broken.shop.example" in listed and "no A or AAAA record" in listed
    assert pebble.orders() == orders  # no order reached the CA: no rate limit spent
    assert serial(server, "shop.bae.localhost") is not None  # the other names keep their certificate
    assert dev.ssh("domains:remove", "shop", "broken.shop.example").returncode == 0


def test_auto_off_and_refusals(server, dev, shop, pebble):
    assert dev.ssh("certs:auto", "shop", "off").returncode == 0
    assert "Automatic certificates (ACME): off" in dev.ssh("certs", "shop").stdout
    bad = dev.ssh("certs:auto", "shop", "maybe")
    assert bad.returncode != 0 and "on" in bad.stderr and "Traceback" not in bad.stderr
    stranger = server.user("stranger-acme")
    assert stranger.ssh("certs:auto", "shop", "on").returncode != 0
