"""Test certificates (a CA, intermediates, leaves of any validity) and TLS clients that connect to
127.0.0.1 with the SNI of an app's hostname; and a real Pebble ACME server on loopback."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from helpers import free_port, listening


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Issued:
    cert: x509.Certificate
    key: object

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return _pem_key(self.key)


def make_ca(name: str = "bae test root", issuer: Issued | None = None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer.cert.subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def make_leaf(ca: Issued, names: list[str], *, days: float = 90, start: float = -1, rsa_bits: int = 0) -> Issued:
    key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits) if rsa_bits else ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "no-san")]))
               .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now + timedelta(days=start)).not_valid_after(now + timedelta(days=start + days)))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


class SNIConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1:PORT presenting ``sni`` (and verifying the certificate for it)."""

    def __init__(self, port: int, sni: str, context: ssl.SSLContext, timeout: float = 10.0) -> None:
        super().__init__("127.0.0.1", port, context=context, timeout=timeout)
        self.sni = sni

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.sni)


def client_context(cafile: str | Path | None = None, cadata: bytes | None = None, alpn=("http/1.1",)) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None,
                                         cadata=cadata.decode() if cadata else None)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def https_get(port: int, host: str, path: str = "/", *, context: ssl.SSLContext, headers=None):
    """(status, headers, body bytes) of GET https://HOST:PORT/PATH, connecting to 127.0.0.1."""
    conn = SNIConnection(port, host, context)
    try:
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def served(port: int, sni: str) -> x509.Certificate | None:
    """The certificate the router presents for ``sni`` (no verification); None if it refuses."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=sni) as tls:
                return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    except (ssl.SSLError, ConnectionError):
        return None


class Pebble:
    """The Debian-packaged Pebble ACME server on loopback, with pebble-challtestsrv as its DNS
    (every name resolves to 127.0.0.1) and HTTP-01 validation sent to ``http_port`` (the router).

    ``validity``: certificate lifetime in seconds. Its own HTTPS certificate comes from a CA made
    here (``ca_bundle``); its issuing root is fetched from the management interface (``root_pem``)."""

    def __init__(self, tmp: Path, http_port: int, validity: int = 3600) -> None:
        self.tmp = Path(tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port, self.management, self.dns_port = free_port(), free_port(), free_port()
        self.dns_management = free_port()
        self.http_port = http_port
        self.validity = validity
        ca = make_ca("pebble listener test CA")
        # the listener's certificate: valid for the address the client dials
        now = datetime.now(timezone.utc)
        ip_leaf_key = ec.generate_private_key(ec.SECP256R1())
        import ipaddress

        ip_leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble")]))
                   .issuer_name(ca.cert.subject).public_key(ip_leaf_key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
                   .not_valid_after(now + timedelta(days=30))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(ca.key, hashes.SHA256()))
        self.ca_bundle = self.tmp / "listener-ca.pem"
        self.ca_bundle.write_bytes(ca.cert_pem)
        (self.tmp / "cert.pem").write_bytes(_pem(ip_leaf))
        (self.tmp / "key.pem").write_bytes(_pem_key(ip_leaf_key))
        self.config = self.tmp / "pebble.json"
        self.config.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}", "managementListenAddress": f"127.0.0.1:{self.management}",
            "certificate": str(self.tmp / "cert.pem"), "privateKey": str(self.tmp / "key.pem"),
            "httpPort": http_port, "tlsPort": free_port(), "ocspResponderURL": "",
            "externalAccountBindingRequired": False, "certificateValidityPeriod": validity}}))
        self.procs: list[subprocess.Popen] = []
        self.pebble: subprocess.Popen | None = None

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    @property
    def resolver(self) -> str:
        return f"127.0.0.1:{self.dns_port}"

    def start(self) -> "Pebble":
        log = open(self.tmp / "challtestsrv.log", "ab")
        self.procs.append(subprocess.Popen(
            ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "",
             "-tlsalpn01", "", "-management", f"127.0.0.1:{self.dns_management}", "-defaultIPv4", "127.0.0.1",
             "-defaultIPv6", ""], stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        self.start_ca()
        return self

    def start_ca(self) -> None:
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0", PEBBLE_AUTHZREUSE="0")
        log = open(self.tmp / "pebble.log", "ab")
        self.pebble = subprocess.Popen(["pebble", "-config", str(self.config), "-dnsserver", self.resolver],
                                       env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(self.pebble)
        deadline = time.monotonic() + 20
        while True:
            if all(listening(port) for port in (self.port, self.management, self.dns_management)):
                break
            assert self.pebble.poll() is None, (self.tmp / "pebble.log").read_text()
            assert time.monotonic() < deadline, "pebble did not start"
            time.sleep(0.05)

    def servfail(self, host: str) -> None:
        """Make the mock DNS answer SERVFAIL for ``host`` (a broken DNS record)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.dns_management, timeout=10)
        try:
            conn.request("POST", "/set-servfail", body=json.dumps({"host": host.rstrip(".") + "."}))
            assert conn.getresponse().status == 200
        finally:
            conn.close()

    def orders(self) -> int:
        """How many new-order requests Pebble has received so far (from its log)."""
        return (self.tmp / "pebble.log").read_text(errors="replace").count("POST /order-plz")

    def stop_ca(self) -> None:
        """The CA goes away (an outage); challtestsrv stays."""
        if self.pebble and self.pebble.poll() is None:
            self.pebble.send_signal(signal.SIGTERM)
            self.pebble.wait(10)

    def root_pem(self) -> bytes:
        """Pebble's issuing root, from its management interface (it changes at every start)."""
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        conn = http.client.HTTPSConnection("127.0.0.1", self.management, context=context, timeout=10)
        try:
            conn.request("GET", "/roots/0")
            return conn.getresponse().read()
        finally:
            conn.close()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
