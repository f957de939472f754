"""The image registry the swarm runtime runs on the manager, so that other nodes can pull.

Debian's ``docker-registry`` (distribution 2.8), listening on the manager's address on the
nodes' network (the Swarm advertise address) with TLS from the platform's own CA:
``registry_dir/ca.crt``. A node trusts it with that CA at ``/etc/docker/certs.d/ADDRESS:PORT/ca.crt``
(docker reads that directory on each pull: no daemon restart, no insecure-registries); the
manager gets the file written here, other nodes by the commands ``nodes:join-token``
prints. Images are stored under ``registry_dir/storage``.

Only the platform may use it: htpasswd authentication (bcrypt) with one user, ``bae``, whose
random password is made once and kept in ``registry_dir/password`` (root only, never printed or
logged). bae's engine client logs in with it; Swarm hands it to the nodes with each task of a
service created with it (the swarm runtime), so nodes need no login of their own. Anyone else
on the nodes' network gets 401: no pulls (an app's image is its code), pushes or deletes.

Like the router's nginx it outlives ``bae serve`` (units re-placed by Swarm while the platform is
down still pull their image): ``start`` adopts the registry that runs with this directory's
configuration (its pid file, checked against the process's command line), starts one only when
none runs, and ``watch`` starts it again when it died. ``registry:stop`` stops it.

Old release images leave it too (``delete_images`` + ``collect_garbage``, run by the
swarm runtime's prune after a deploy): their manifests are deleted through the API,
then ``registry garbage-collect`` removes the blobs no manifest references any more,
while the registry is briefly stopped and no push runs (the caller holds its push lock).
"""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import threading
import time
from pathlib import Path

from bae.errors import BaeError, Unavailable
from bae.pids import find_running

__all__ = ["Registry", "CERTS_D", "USER", "render_config"]

log = logging.getLogger("bae.registry")

CERTS_D = Path("/etc/docker/certs.d")  # where a Docker Engine looks for a registry's CA
USER = "bae"  # the registry's one user: the platform
# bcrypt's cost guards guessable passwords; this one is 256 random bits, and the registry checks it on every
# request of every pull (at the default cost 12 that is a quarter second of CPU per request), so the least cost
BCRYPT_ROUNDS = 4
WATCH_INTERVAL = 2.0  # seconds between two looks at the registry process (``watch``)
MANIFEST_TYPES = ", ".join([
    "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json"])


def render_config(directory: Path, address: str) -> str:
    """The registry's config.yml: TLS, htpasswd authentication, storage (with deletes, for the prune)."""
    return (
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {directory / 'storage'}\n  delete:\n    enabled: true\n"
        f"auth:\n  htpasswd:\n    realm: bae-registry\n    path: {directory / 'htpasswd'}\n"
        f"http:\n  addr: {address}\n  tls:\n    certificate: {directory / 'registry.crt'}\n"
        f"    key: {directory / 'registry.key'}\n"
        "  headers:\n    X-Content-Type-Options: [nosniff]\n"
        "health:\n  storagedriver:\n    enabled: false\n")


def htpasswd_line(password: str) -> str:
    """The htpasswd entry of the platform's user (distribution accepts bcrypt only)."""
    import bcrypt

    return f"{USER}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()}\n"


def htpasswd_matches(text: str, password: str) -> bool:
    """Does the htpasswd file ``text`` hold exactly the platform's user with ``password``?"""
    import bcrypt

    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1 or not lines[0].startswith(USER + ":"):
        return False
    try:
        return bcrypt.checkpw(password.encode(), lines[0].split(":", 1)[1].encode())
    except ValueError:  # not a bcrypt hash
        return False


def _ca_and_cert(directory: Path, address: str) -> bool:
    """The platform's CA (kept across restarts) and a server certificate for ``address``.
    True when the certificate was made anew (a running registry must be restarted to use it)."""
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
                return False
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
    return True


def _write(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``path`` whole or not at all; keys and secrets readable by root only, from the first byte."""
    mode = mode if mode is not None else 0o600 if path.suffix == ".key" else 0o644
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as out:
        out.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


class Registry:
    """This installation's docker-registry on ``address:port``: adopt or start, watch, stop; its CA,
    credentials, storage and the manager's trust."""

    def __init__(self, directory: Path, address: str, port: int, binary: str = "docker-registry") -> None:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise BaeError(f"the registry address {address!r} is not an IP address",
                           "Set swarm.advertise_addr to the manager's address on the nodes' network.") from None
        self.directory = Path(directory)
        self.address, self.port, self.binary = address, port, binary
        self.config = self.directory / "config.yml"
        self.pid_file = self.directory / "registry.pid"
        self.pid: int | None = None  # the process this one started or adopted (None: not managed here)
        self._child: subprocess.Popen | None = None  # when this process started it (to reap it)
        self._wanted = False  # started or adopted here and not stopped on purpose: the watch keeps it running
        self._lock = threading.RLock()  # start, stop, garbage collection and the watch one at a time

    @property
    def name(self) -> str:
        """How images are named on every node: ADDRESS:PORT/repository@sha256:..."""
        return f"{self.address}:{self.port}"

    def _first_start_needed(self, what: str) -> BaeError:
        return Unavailable(f"the image registry has no {what} yet (in {self.directory})",
                           "Start bae serve once: it makes the registry's CA and credentials. Then try again.")

    @property
    def ca_pem(self) -> bytes:
        try:
            return (self.directory / "ca.crt").read_bytes()
        except FileNotFoundError:
            raise self._first_start_needed("CA") from None
        except OSError as exc:
            raise BaeError(f"reading the image registry's CA failed: {exc.strerror}") from None

    def credentials(self) -> dict[str, str]:
        """The platform's login (``username``, ``password``): for bae's engine client only, never shown."""
        try:
            password = (self.directory / "password").read_text().strip()
        except FileNotFoundError:
            raise self._first_start_needed("credentials") from None
        except OSError as exc:
            raise BaeError(f"reading the image registry's password failed: {exc.strerror}") from None
        return {"username": USER, "password": password}

    def trust_command(self) -> str:
        """The shell command that makes a node's Docker Engine trust this registry."""
        path = CERTS_D / self.name
        return f"mkdir -p {path} && cat > {path}/ca.crt <<'EOF'\n{self.ca_pem.decode().strip()}\nEOF"

    # -- which process is ours -----------------------------------------------------------

    def _ours(self, pid: int) -> bool:
        """Is ``pid`` a docker-registry serving this directory's configuration? (A pid file may outlive
        its process and the pid be reused; the command line names the configuration file.)"""
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return len(argv) >= 3 and argv[1:3] == [b"serve", str(self.config).encode()] \
            and os.path.basename(argv[0]).startswith(os.path.basename(self.binary).encode())

    def running(self) -> list[int]:
        """Every running registry of this directory (see bae.pids.find_running)."""
        return find_running(self.pid_file, self._ours)

    def alive(self) -> bool:
        """Does the registry this process started or adopted still run?"""
        if self.pid is None:
            return False
        if self._child is not None:
            return self._child.poll() is None  # reaps it once it ended
        return self._ours(self.pid)

    # -- life cycle ------------------------------------------------------------------------

    def _prepare(self) -> bool:
        """Directory, CA and certificate, password and htpasswd. True when something a running registry
        read at its start changed (a new certificate or htpasswd): it must be restarted."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        changed = _ca_and_cert(self.directory, self.address)
        secret = self.directory / "password"
        if not secret.exists():
            _write(secret, secrets.token_urlsafe(32).encode() + b"\n", 0o600)
        os.chmod(secret, 0o600)
        password = self.credentials()["password"]
        htpasswd = self.directory / "htpasswd"
        try:
            current = htpasswd.read_text()
        except FileNotFoundError:
            current = ""
        if not htpasswd_matches(current, password):
            _write(htpasswd, htpasswd_line(password).encode(), 0o600)
            changed = True
        return changed

    def start(self, timeout: float = 20.0) -> None:
        """Adopt the registry that runs with this configuration, or start one (stopping one that runs
        with another configuration: a new address, port, certificate or password)."""
        binary = shutil.which(self.binary)
        if not binary:
            raise Unavailable(f"{self.binary} is not installed (the swarm runtime's image registry)",
                              "apt-get install docker-registry (make up does this).")
        with self._lock:
            self._wanted = True
            changed = self._prepare()
            text = render_config(self.directory, self.name)
            self._trust_here()
            pids = self.running()
            same = self.config.exists() and self.config.read_text() == text
            if pids and same and not changed and self._answers():
                self.pid, self._child = pids[0], None
                for extra in pids[1:]:
                    log.warning("image registry: a second registry (pid %d) of this installation runs; stopping it",
                                extra)
                    _terminate(extra)
                _write(self.pid_file, f"{self.pid}\n".encode(), 0o644)
                log.info("image registry: adopted the running registry (pid %d) on %s", self.pid, self.name)
                return
            for pid in pids:
                log.info("image registry: restarting the registry (pid %d): its configuration changed", pid)
                _terminate(pid)
            _write(self.config, text.encode(), 0o600)
            self._spawn(binary, timeout)

    def _spawn(self, binary: str, timeout: float) -> None:
        with open(self.directory / "registry.log", "ab") as log_file:  # not a pipe: it outlives bae serve
            self._child = subprocess.Popen([binary, "serve", str(self.config)], stdout=log_file,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True)  # signals to bae serve's group do not reach it
        self.pid = self._child.pid
        _write(self.pid_file, f"{self.pid}\n".encode(), 0o644)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._child.poll() is not None or time.monotonic() > deadline:
                tail = (self.directory / "registry.log").read_text(errors="replace").strip().splitlines()[-5:]
                self._stop_all()
                raise Unavailable(f"the image registry did not start on {self.name}: " + " / ".join(tail),
                                  "Check swarm.advertise_addr and swarm.registry_port (is the port free?).")
            time.sleep(0.1)
        log.info("image registry: listening on %s (pid %d, CA %s)", self.name, self.pid, self.directory / "ca.crt")

    def watch(self, stop: threading.Event, interval: float = WATCH_INTERVAL) -> None:
        """Until ``stop``: start the registry again when the process this one started or adopted died
        (or a start after garbage collection failed), every ``interval`` seconds until it runs."""
        failing, dead = False, None
        while not stop.wait(interval):
            with self._lock:
                if not self._wanted or self.alive():
                    continue
                dead = self.pid or dead
                try:
                    self.start()
                except (BaeError, OSError) as exc:
                    if not failing:
                        log.warning("image registry (pid %s) is not running and did not start again: %s",
                                    dead or "?", getattr(exc, "message", None) or exc)
                    failing = True
                    continue
                failing = False
                log.warning("image registry (pid %s) had died; started it again (pid %d)", dead or "?", self.pid)
                dead = None

    def stop(self) -> bool:
        """Stop this installation's registry, whether this process started it, adopted it or neither
        (``registry:stop``); the watch leaves it stopped. False if none was running."""
        with self._lock:
            self._wanted = False
            return self._stop_all()

    def _stop_all(self) -> bool:
        with self._lock:
            pids = self.running()
            if self._child is not None and self._child.poll() is None and self._child.pid not in pids:
                pids.append(self._child.pid)
            for pid in pids:
                if self._child is not None and pid == self._child.pid:
                    self._child.terminate()
                    try:
                        self._child.wait(10)
                    except subprocess.TimeoutExpired:
                        self._child.kill()
                        self._child.wait()
                else:
                    _terminate(pid)
            self.pid, self._child = None, None
            self.pid_file.unlink(missing_ok=True)
            return bool(pids)

    def _trust_here(self) -> None:
        """The manager's engine pushes (and may pull) over TLS too: it gets the CA in certs.d."""
        path = CERTS_D / self.name
        path.mkdir(parents=True, exist_ok=True)
        _write(path / "ca.crt", self.ca_pem)

    # -- the HTTP API ------------------------------------------------------------------------

    def _context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=str(self.directory / "ca.crt"))
        except FileNotFoundError:
            raise self._first_start_needed("CA") from None

    def _authorization(self) -> str:
        creds = self.credentials()
        return "Basic " + base64.b64encode(f"{creds['username']}:{creds['password']}".encode()).decode()

    def _answers(self) -> bool:
        """Does the registry answer, and take the platform's password?"""
        try:
            status, _, _ = self._call("GET", "/v2/", timeout=1)
        except Unavailable:
            return False
        return status == 200

    def _call(self, method: str, path: str, headers: dict | None = None,
              timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPSConnection(self.address, self.port, context=self._context(), timeout=timeout)
        try:
            conn.request(method, path, headers={"Authorization": self._authorization(), **(headers or {})})
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
        Returns the tool's summary ("" when this process neither started nor adopted the registry)."""
        with self._lock:  # the watch must not start it again meanwhile
            if self.pid is None:
                return ""
            self._stop_all()
            try:
                done = subprocess.run([shutil.which(self.binary) or self.binary, "garbage-collect", str(self.config)],
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


def _terminate(pid: int, timeout: float = 10.0) -> None:
    """Stop a registry that is not this process's child: SIGTERM, then SIGKILL; wait until it is gone."""
    for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if not Path(f"/proc/{pid}/cmdline").read_bytes():  # exited; a zombie until its parent reaps it
                    return
            except OSError:
                return
            time.sleep(0.05)
