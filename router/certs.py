"""TLS certificates: parse and check PEM bundles, keep them on disk, pick which one serves a hostname.

Who calls it: ``certs:add`` (``check_upload``), the ACME renewal (``from_pem``,
``CertFiles.write``) and the router (``choose``). Parsing uses the
``cryptography`` package; foreign errors become ``Invalid`` here, once.

Files: ``data_dir/tls`` is root's alone (0700); each certificate is
``NAME.pem`` (leaf first, then its chain) and ``NAME.key`` (0600). nginx's
master process (root) reads them when it loads a configuration; its workers
never need to. Keys are never printed and never logged.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from bae.errors import Invalid
from bae.model import Certificate

__all__ = ["Bundle", "parse_bundle", "check_upload", "covers", "from_pem", "CertFiles", "choose", "leaf_serial",
           "MAX_PEM", "TicketKeys"]

MAX_PEM = 256 * 1024
_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.S)
_PEM_HINT = "Give the certificate chain (leaf first) and its private key, both PEM (-----BEGIN ...-----)."


@dataclass(frozen=True)
class Bundle:
    """A parsed certificate chain (leaf first, in signing order) and its private key (PEM, unencrypted)."""

    chain: tuple[x509.Certificate, ...]
    key_pem: bytes

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName))


def _issuer(cert: x509.Certificate) -> str:
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        attrs = cert.issuer.get_attributes_for_oid(oid)
        if attrs:
            return str(attrs[0].value)
    return cert.issuer.rfc4514_string() or "(no issuer name)"


def _subject(cert: x509.Certificate) -> str:
    names = _names(cert)
    if names:
        return names[0]
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else cert.subject.rfc4514_string() or "(no subject)"


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def parse_bundle(cert_pem: bytes, key_pem: bytes | None = None) -> Bundle:
    """The chain and key in ``cert_pem`` (+ ``key_pem``), or Invalid saying what is wrong.

    The blocks may come in one stream (as over SSH). The leaf is the certificate the key
    belongs to; the others must each sign the one before (intermediates, leaf to root)."""
    data = cert_pem + b"\n" + (key_pem or b"")
    if len(data) > 2 * MAX_PEM:
        raise Invalid("the certificate files are too large to be PEM certificates and a key", _PEM_HINT)
    certs, keys = [], []
    for match in _BLOCK.finditer(data):
        kind, block = match.group(1), match.group(0)
        if kind == b"CERTIFICATE":
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                raise Invalid("a CERTIFICATE block is damaged and cannot be read", _PEM_HINT) from None
        elif kind.endswith(b"PRIVATE KEY"):
            if kind == b"ENCRYPTED PRIVATE KEY" or b"ENCRYPTED" in block[:200]:
                raise Invalid("the private key is encrypted with a passphrase",
                              "Decrypt it first: openssl pkey -in key.pem -out plain-key.pem")
            try:
                keys.append(serialization.load_pem_private_key(block, password=None))
            except (ValueError, TypeError, UnsupportedAlgorithm):
                raise Invalid("the private key block is damaged or of an unknown kind", _PEM_HINT) from None
    if not certs:
        raise Invalid("no certificate found (no -----BEGIN CERTIFICATE----- block)", _PEM_HINT)
    if not keys:
        raise Invalid("no private key found (no -----BEGIN PRIVATE KEY----- block)", _PEM_HINT)
    if len(keys) > 1:
        raise Invalid(f"{len(keys)} private keys found; give exactly one", _PEM_HINT)
    key = keys[0]
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise Invalid("the private key is neither RSA nor ECDSA; browsers accept only those",
                      "Create an RSA (2048 bits or more) or ECDSA P-256 key.")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
        raise Invalid(f"the RSA key has {key.key_size} bits; 2048 is the least clients accept",
                      "Create a new key of 2048 bits or more and have the certificate reissued.")
    wanted = _spki(key.public_key())
    leaves = [c for c in certs if _spki(c.public_key()) == wanted]
    if not leaves:
        raise Invalid(f"the private key does not belong to the certificate for {_subject(certs[0])}",
                      "Give the key that was used for this certificate's signing request.")
    leaf = leaves[0]
    rest = [c for c in certs if c is not leaf]
    chain = [leaf]
    while rest:  # put the intermediates in signing order; anything left over does not belong
        issuer = next((c for c in rest if _signed_by(chain[-1], c)), None)
        if issuer is None:
            stray = rest[0]
            raise Invalid(f"the chain is broken: {_subject(stray)} (issued by {_issuer(stray)}) does not sign "
                          f"{_subject(chain[-1])} (issued by {_issuer(chain[-1])})",
                          "Give the leaf and the intermediates its CA sent, and nothing else.")
        chain.append(issuer)
        rest.remove(issuer)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Bundle(tuple(chain), key_pem)


def covers(patterns, host: str) -> bool:
    """Whether a certificate for ``patterns`` (names, ``*.x`` wildcards of one label) is valid for ``host``.

    ``host`` may itself be a wildcard route (``*.api.example``); then only the same wildcard covers it."""
    host = host.lower()
    for pattern in patterns:
        if pattern == host:
            return True
        if pattern.startswith("*.") and not host.startswith("*.") and "." in host and host.split(".", 1)[1] == pattern[2:]:
            return True
    return False


def check_upload(bundle: Bundle, hostnames: list[str], now: datetime | None = None) -> list[str]:
    """Refuse an uploaded ``bundle`` that is expired, not yet valid, or for none of ``hostnames``.

    Returns the hostnames it covers (at least one)."""
    now = now or datetime.now(timezone.utc)
    leaf = bundle.leaf
    names = _names(leaf)
    if leaf.not_valid_after_utc <= now:
        raise Invalid(f"the certificate for {_subject(leaf)} expired on {_day(leaf.not_valid_after_utc)}",
                      "Renew it with its CA (or use certs:auto on) and upload the new one.")
    if leaf.not_valid_before_utc > now:
        raise Invalid(f"the certificate for {_subject(leaf)} is not valid before {_day(leaf.not_valid_before_utc)}",
                      "Upload it once it is valid, or check this machine's and the CA's clocks.")
    for cert in bundle.chain[1:]:
        if cert.not_valid_after_utc <= now:
            raise Invalid(f"the intermediate certificate {_subject(cert)} in the chain expired on "
                          f"{_day(cert.not_valid_after_utc)}", "Get the current chain from the CA.")
    if not names:
        raise Invalid(f"the certificate for {_subject(leaf)} names no DNS hostnames (no subject alternative names)",
                      "Clients ignore the common name; have it reissued with the hostnames as SANs.")
    covered = [h for h in hostnames if covers(names, h)]
    if not covered:
        raise Invalid(f"the certificate is for {', '.join(names[:6])}, which matches none of "
                      f"{', '.join(hostnames[:6])}",
                      "Upload a certificate for one of these hostnames, or add the hostname first (domains:add).")
    return covered


def leaf_serial(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def from_pem(bundle: Bundle, *, name: str, deployment_id: int | None, source: str) -> Certificate:
    """What the store records about ``bundle``."""
    leaf = bundle.leaf
    return Certificate(
        name=name, deployment_id=deployment_id, source=source, hostnames=_names(leaf), issuer=_issuer(leaf),
        serial=leaf_serial(leaf), fingerprint=hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).hexdigest(),
        not_before=leaf.not_valid_before_utc.isoformat(), not_after=leaf.not_valid_after_utc.isoformat(),
    )


class CertFiles:
    """The certificates' files under ``root`` (data_dir/tls): root-only, keys 0600."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def paths(self, name: str) -> tuple[Path, Path]:
        return self.root / f"{name}.pem", self.root / f"{name}.key"

    @staticmethod
    def new_name() -> str:
        return secrets.token_hex(8)

    def write(self, name: str, bundle: Bundle) -> None:
        """Write both files (fsynced) before the store refers to them: stage first, switch last."""
        pem, key = self.paths(name)
        for path, data, mode in ((key, bundle.key_pem, 0o600), (pem, bundle.chain_pem, 0o644)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            try:
                os.fchmod(fd, mode)
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

    def remove(self, name: str) -> None:
        for path in self.paths(name):
            path.unlink(missing_ok=True)

    def prune(self, keep: set[str]) -> int:
        """Remove files of certificates the store no longer knows (a crash between write and record)."""
        removed = 0
        for path in self.root.glob("*.pem"):
            if path.stem not in keep and len(path.stem) == 16:
                self.remove(path.stem)
                removed += 1
        return removed


def choose(host: str, candidates: list[Certificate], now: datetime) -> Certificate | None:
    """The certificate to serve for ``host``: valid now and covering it; uploaded before ACME before the
    platform's own, then the one that lasts longest."""
    usable = [c for c in candidates if datetime.fromisoformat(c.not_before) <= now < datetime.fromisoformat(c.not_after)
              and covers(c.hostnames, host)]
    if not usable:
        return None
    rank = {"uploaded": 0, "acme": 1}
    return min(usable, key=lambda c: (c.deployment_id is None, rank.get(c.source, 2), _neg(c.not_after)))


def _neg(stamp: str) -> float:
    return -datetime.fromisoformat(stamp).timestamp()


class TicketKeys:
    """Session ticket keys (80 random bytes each) nginx shares across reloads and workers, so a
    client's ticket stays valid through a certificate renewal; rotated daily, the previous key
    still decrypts. Files ``ticket-STAMP.key`` in the TLS directory, newest first."""

    def __init__(self, root: Path, lifetime: float = 86400.0) -> None:
        self.root = Path(root)
        self.lifetime = lifetime

    def paths(self) -> tuple[str, ...]:
        return tuple(str(p) for p in sorted(self.root.glob("ticket-*.key"), reverse=True))

    def rotate(self, now: float) -> bool:
        """Make a new key if the newest is older than the lifetime; keep two. True if it changed."""
        keys = self.paths()
        if keys and now - Path(keys[0]).stat().st_mtime < self.lifetime:
            return False
        path = self.root / f"ticket-{int(now * 1000):016d}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(80))
            os.fsync(fd)
        finally:
            os.close(fd)
        for old in self.paths()[2:]:
            Path(old).unlink(missing_ok=True)
        return True
