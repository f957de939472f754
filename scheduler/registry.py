"""The image registry the swarm runtime runs on the manager, so that other nodes can pull.

Debian's ``docker-registry`` (distribution 2.8) started by ``bae serve`` as a child
process, listening on the manager's address on the nodes' network (the Swarm
advertise address) with TLS from the platform's own CA: ``data_dir/registry/ca.crt``.
A node trusts it with that CA at ``/etc/docker/certs.d/ADDRESS:PORT/ca.crt`` (docker
reads that directory on each pull: no daemon restart, no insecure-registries); the
manager gets the file written here, other nodes by the commands ``nodes:join-token``
prints. Images are stored under ``data_dir/registry/storage``.

Old release images leave it too (``delete_images`` + ``collect_garbage``, run by the
swarm runtime's prune after a deploy): their manifests are deleted through the API,
then ``registry garbage-collect`` removes the blobs no manifest references any more,
while the registry is briefly stopped and no push runs (the caller holds its push lock).
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

from bae.errors import BaeError, Unavailable

__all__ = ["Registry", "CERTS_D"]

log = logging.getLogger("bae.registry")

CERTS_D = Path("/etc/docker/certs.d")  # where a Docker Engine looks for a registry's CA
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"])


def _ca_and_cert(directory: Path, address: str) -> None:
    """The platform's CA (kept across restarts) and a server certificate for ``address``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    pem = serialization.Encoding.PEM
    key_format = dict(encoding=pem, format=serialization.PrivateFormat.PKCS8,
                      encryption_algorithm=serialization.NoEncryption())
    ca_crt, ca_key = directory / "ca.crt", directory / "ca.key"
    if ca_crt.exists() and ca_key.exists():
        ca = x509.load_pem_x509_certificate(ca_crt.read_bytes())
        key = serialization.load_pem_private_key(ca_key.read_bytes(), None)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bae platform CA")])
        ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
              .not_valid_after(now + datetime.timedelta(days=3650))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(key, hashes.SHA256()))
        _write(ca_key, key.private_bytes(**key_format))
        _write(ca_crt, ca.public_bytes(pem))
    cert_path = directory / "registry.crt"
    if cert_path.exists():
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
        try:
            names = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            if (ipaddress.ip_address(address) in names.get_values_for_type(x509.IPAddress)
                    and current.not_valid_after_utc > now + datetime.timedelta(days=30)):
                return
        except (x509.ExtensionNotFound, ValueError):
            pass
    server_key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]))
            .issuer_name(ca.subject).public_key(server_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), critical=False)
            .sign(key, hashes.SHA256()))
    _write(directory / "registry.key", server_key.private_bytes(**key_format))
    _write(cert_path, cert.public_bytes(pem))


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600 if path.suffix == ".key" else 0o644)
    tmp.replace(path)


class Registry:
    """One docker-registry process on ``address:port``, its CA, storage and the manager's trust."""

    def __init__(self, directory: Path, address: str, port: int, binary: str = "docker-registry") -> None:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise BaeError(f"the registry address {address!r} is not an IP address",
                           "Set swarm.advertise_addr to the manager's address on the nodes' network.") from None
        self.directory = Path(directory)
        self.address, self.port, self.binary = address, port, binary
        self.proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        """How images are named on every node: ADDRESS:PORT/repository@sha256:..."""
        return f"{self.address}:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return (self.directory / "ca.crt").read_bytes()

    def trust_command(self) -> str:
        """The shell command that makes a node's Docker Engine trust this registry."""
        path = CERTS_D / self.name
        return f"mkdir -p {path} && cat > {path}/ca.crt <<'EOF'\n{self.ca_pem.decode().strip()}\nEOF"

    def start(self, timeout: float = 20.0) -> None:
        binary = shutil.which(self.binary)
        if not binary:
            raise Unavailable(f"{self.binary} is not installed (the swarm runtime's image registry)",
                              "apt-get install docker-registry (make up does this).")
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        _ca_and_cert(self.directory, self.address)
        config = self.directory / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.directory / 'storage'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.name}\n  tls:\n    certificate: {self.directory / 'registry.crt'}\n"
            f"    key: {self.directory / 'registry.key'}\n"
            "  headers:\n    X-Content-Type-Options: [nosniff]\n"
            "health:\n  storagedriver:\n    enabled: false\n")
        self._trust_here()
        log_file = open(self.directory / "registry.log", "ab")
        self.proc = subprocess.Popen([binary, "serve", str(config)], stdout=log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log_file.close()
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.directory / "registry.log").read_text(errors="replace").strip().splitlines()[-5:]
                self.stop()
                raise Unavailable(f"the image registry did not start on {self.name}: " + " / ".join(tail),
                                  "Check swarm.advertise_addr and swarm.registry_port (is the port free?).")
            time.sleep(0.1)
        log.info("image registry listening on %s (CA %s)", self.name, self.directory / "ca.crt")

    def _trust_here(self) -> None:
        """The manager's engine pushes (and may pull) over TLS too: it gets the CA in certs.d."""
        path = CERTS_D / self.name
        path.mkdir(parents=True, exist_ok=True)
        _write(path / "ca.crt", self.ca_pem)

    def _answers(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.directory / "ca.crt"))
        try:
            with socket.create_connection((self.address, self.port), timeout=1) as raw:
                with context.wrap_socket(raw, server_hostname=self.address) as tls:
                    tls.sendall(f"GET /v2/ HTTP/1.1\r\nHost: {self.name}\r\nConnection: close\r\n\r\n".encode())
                    return tls.recv(64).startswith(b"HTTP/1.1 200")
        except (OSError, ssl.SSLError):
            return False

    def _call(self, method: str, path: str, headers: dict | None = None) -> tuple[int, dict[str, str], bytes]:
        context = ssl.create_default_context(cafile=str(self.directory / "ca.crt"))
        conn = http.client.HTTPSConnection(self.address, self.port, context=context, timeout=30)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            raise Unavailable(f"the image registry on {self.name} does not answer ({exc.__class__.__name__})") from None
        finally:
            conn.close()

    def delete_images(self, repository: str, keep_tags: set[str], keep_digests: set[str]) -> int:
        """Delete the manifests of ``repository``'s tags other than ``keep_tags``, unless a kept tag or
        ``keep_digests`` (what services still reference) names the same manifest. Returns how many went."""
        status, _, body = self._call("GET", f"/v2/{repository}/tags/list")
        if status == 404:
            return 0
        if status != 200:
            raise BaeError(f"listing {repository} in the image registry failed (HTTP {status})")
        digests = {}
        for tag in json.loads(body).get("tags") or []:
            status, headers, _ = self._call("HEAD", f"/v2/{repository}/manifests/{tag}", {"Accept": MANIFEST_TYPES})
            if status == 200 and headers.get("docker-content-digest"):
                digests[tag] = headers["docker-content-digest"]
        kept = {d for t, d in digests.items() if t in keep_tags} | keep_digests
        deleted = 0
        for digest in sorted({d for t, d in digests.items() if t not in keep_tags} - kept):
            status, _, body = self._call("DELETE", f"/v2/{repository}/manifests/{digest}")
            if status in (202, 404):
                deleted += status == 202
            else:
                log.warning("deleting %s@%s from the image registry: HTTP %d %s", repository, digest, status, body[:200])
        return deleted

    def collect_garbage(self, timeout: float = 300) -> str:
        """``registry garbage-collect``: the blobs no manifest references go. The registry is stopped
        meanwhile (a node pulling then retries) and started again; the caller holds the push lock.
        Returns the tool's summary ("" when this process did not start the registry)."""
        if self.proc is None:
            return ""
        config = self.directory / "config.yml"
        self.stop()
        try:
            done = subprocess.run([shutil.which(self.binary) or self.binary, "garbage-collect", str(config)],
                                  capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BaeError(f"the image registry's garbage collection failed: {exc}") from None
        finally:
            self.start()
        lines = [line for line in (done.stdout + done.stderr).splitlines() if "eligible for deletion" in line]
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise BaeError("the image registry's garbage collection failed: " + " / ".join(tail))
        return lines[-1].strip() if lines else "nothing to delete"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
