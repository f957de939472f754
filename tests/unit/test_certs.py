"""Uploaded certificates: every bad input is refused with its reason; wildcards, chains, choice."""

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tlsutil import make_ca, make_leaf  # noqa: E402

from bae.errors import Invalid  # noqa: E402
from bae.model import Certificate  # noqa: E402
from router.certs import CertFiles, TicketKeys, check_upload, choose, covers, from_pem, parse_bundle  # noqa: E402

HOSTS = ["shop.bae.localhost", "www.shop.example"]


@pytest.fixture(scope="module")
def ca():
    return make_ca()


def refused(cert_pem, key_pem, hosts=HOSTS) -> str:
    with pytest.raises(Invalid) as err:
        check_upload(parse_bundle(cert_pem, key_pem), hosts)
    return err.value.message


def test_a_good_certificate_with_its_chain_in_any_order(ca):
    inter = make_ca("bae intermediate", issuer=ca)
    leaf = make_leaf(inter, ["www.shop.example"])
    bundle = parse_bundle(inter.cert_pem + leaf.cert_pem, leaf.key_pem)
    assert bundle.chain[0].serial_number == leaf.cert.serial_number and len(bundle.chain) == 2
    assert check_upload(bundle, HOSTS) == ["www.shop.example"]
    # one stream holding everything, as over SSH
    assert len(parse_bundle(leaf.key_pem + leaf.cert_pem + inter.cert_pem).chain) == 2


def test_wildcards(ca):
    leaf = make_leaf(ca, ["*.bae.localhost"])
    assert check_upload(parse_bundle(leaf.cert_pem, leaf.key_pem), HOSTS) == ["shop.bae.localhost"]
    assert covers(["*.bae.localhost"], "shop.bae.localhost")
    assert not covers(["*.bae.localhost"], "api.shop.bae.localhost")  # one label only
    assert not covers(["*.bae.localhost"], "bae.localhost")
    assert covers(["*.api.example"], "*.api.example") and not covers(["*.example"], "*.api.example")


def test_rsa_keys_of_2048_bits_pass(ca):
    leaf = make_leaf(ca, ["www.shop.example"], rsa_bits=2048)
    assert check_upload(parse_bundle(leaf.cert_pem, leaf.key_pem), HOSTS)


def test_every_bad_input_is_refused_with_the_reason(ca):
    good = make_leaf(ca, ["www.shop.example"])
    other = make_leaf(ca, ["www.shop.example"])
    assert "does not belong to the certificate" in refused(good.cert_pem, other.key_pem)
    assert "expired on" in refused(*_pems(make_leaf(ca, ["www.shop.example"], start=-100, days=10)))
    assert "not valid before" in refused(*_pems(make_leaf(ca, ["www.shop.example"], start=5)))
    msg = refused(*_pems(make_leaf(ca, ["www.elsewhere.example"])))
    assert "www.elsewhere.example" in msg and "matches none of" in msg
    assert "no DNS hostnames" in refused(*_pems(make_leaf(ca, [])))
    assert "no certificate found" in refused(b"", good.key_pem)
    assert "no private key found" in refused(good.cert_pem, b"")
    assert "no certificate found" in refused(b"hello", b"world")
    assert "damaged" in refused(good.cert_pem.replace(b"MI", b"XX", 1), good.key_pem)
    assert "2 private keys" in refused(good.cert_pem, good.key_pem + other.key_pem)
    stranger = make_ca("someone else")
    assert "chain is broken" in refused(good.cert_pem + stranger.cert_pem, good.key_pem)
    assert "2048" in refused(*_pems(make_leaf(ca, ["www.shop.example"], rsa_bits=1024)))
    encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
    assert "encrypted" in refused(good.cert_pem, encrypted)


def _pems(issued):
    return issued.cert_pem, issued.key_pem


def test_choose_prefers_uploaded_then_acme_then_the_platform():
    now = datetime.now(timezone.utc)

    def cert(name, source, dep, names, days=30):
        return Certificate(name, dep, source, tuple(names), "x", "1", name * 8, (now - timedelta(days=1)).isoformat(),
                           (now + timedelta(days=days)).isoformat())

    platform = cert("p", "uploaded", None, ["*.bae.localhost"], 300)
    acme = cert("a", "acme", 1, ["shop.bae.localhost"], 90)
    mine = cert("u", "uploaded", 1, ["shop.bae.localhost"], 10)
    assert choose("shop.bae.localhost", [acme, platform, mine], now) is mine
    assert choose("shop.bae.localhost", [acme, platform], now) is acme
    assert choose("shop.bae.localhost", [platform], now) is platform
    assert choose("www.shop.example", [platform], now) is None
    expired = cert("e", "uploaded", 1, ["shop.bae.localhost"], -0.5)
    assert choose("shop.bae.localhost", [expired, acme], now) is acme


def test_files_are_root_only(tmp_path, ca):
    files = CertFiles(tmp_path / "tls")
    leaf = make_leaf(ca, ["www.shop.example"])
    bundle = parse_bundle(leaf.cert_pem, leaf.key_pem)
    files.write("0123456789abcdef", bundle)
    pem, key = files.paths("0123456789abcdef")
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
    assert key.stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE KEY" in key.read_bytes() and b"PRIVATE" not in pem.read_bytes()
    info = from_pem(bundle, name="0123456789abcdef", deployment_id=1, source="uploaded")
    assert info.hostnames == ("www.shop.example",) and info.serial == format(leaf.cert.serial_number, "x")
    assert files.prune({"0123456789abcdef"}) == 0 and files.prune(set()) == 1 and not pem.exists()


def test_ticket_keys_rotate_and_keep_one_old(tmp_path):
    keys = TicketKeys(tmp_path, lifetime=100)
    assert keys.rotate(1000.0) and len(keys.paths()) == 1
    first = keys.paths()[0]
    assert Path(first).stat().st_size == 80 and Path(first).stat().st_mode & 0o777 == 0o600
    assert not keys.rotate(Path(first).stat().st_mtime + 10)
    assert keys.rotate(Path(first).stat().st_mtime + 200) and keys.paths()[1] == first
    keys.rotate(Path(keys.paths()[0]).stat().st_mtime + 400)
    assert len(keys.paths()) == 2 and first not in keys.paths()
