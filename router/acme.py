"""Certificates from an ACME CA (RFC 8555) with HTTP-01, through certbot's ``acme`` library.

``AcmeClient.issue(hostnames)`` registers (once per directory; the account key
is a root-only file, the account URL is stored), orders, answers each HTTP-01
challenge by writing the token file the router serves under
``/.well-known/acme-challenge/``, finalizes with a fresh ECDSA P-256 key and
returns the chain and key. ``preflight(hostnames)`` proves first, without the CA,
that each name reaches this router: it writes a random token and fetches it
through the public name (resolved like the CA would, optionally through
``tls.resolver``), so a wrong DNS record costs no order and no rate limit.

Every failure of the library, of requests or of DNS becomes an ``AcmeError``
here, once, with what the CA or the network said; a rate limit carries the
CA's Retry-After. Nothing waits longer than ``tls.acme_timeout``.
Who calls it: router/certloop.py.
"""

from __future__ import annotations

import datetime as dt
import http.client
import logging
import os
import secrets
import socket
from pathlib import Path

from bae.errors import BaeError
from router.tls import CHALLENGE_PATH

__all__ = ["AcmeClient", "AcmeError", "preflight"]

log = logging.getLogger("bae.router.acme")


class AcmeError(BaeError):
    """An order did not produce a certificate; ``retry_after`` is the CA's wish, if it said one."""

    def __init__(self, message: str, hint: str | None = None, retry_after: dt.datetime | None = None) -> None:
        super().__init__(message, hint)
        self.retry_after = retry_after


class Challenges:
    """The HTTP-01 answers (and pre-flight tokens): a small HTTP server on loopback inside `bae serve`
    that nginx proxies ``/.well-known/acme-challenge/`` to, before routing. Tokens live in memory
    (they matter only during an order), so nginx's workers need no access to the data directory."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        import http.server
        import threading

        tokens: dict[str, str] = {}
        self._tokens = tokens

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the library's name)
                token = self.path.split("?", 1)[0]
                value = tokens.get(token[len(CHALLENGE_PATH):]) if token.startswith(CHALLENGE_PATH) else None
                body = (value or "no such token\n").encode()
                self.send_response(200 if value is not None else 404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                return None

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self.address = f"{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="acme-http01", daemon=True)
        self._thread.start()

    def put(self, token: str, content: str) -> None:
        self._tokens[token] = content

    def drop(self, token: str) -> None:
        self._tokens.pop(token, None)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _resolve(host: str, resolver: str) -> list[str]:
    """The addresses the public would reach ``host`` at (A and AAAA)."""
    if not resolver:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise AcmeError(f"pre-flight: {host} does not resolve ({exc.strerror})",
                            f"Create a DNS record for {host} pointing at this platform; no certificate was ordered.") from None
        return sorted({info[4][0] for info in infos})
    import dns.exception
    import dns.resolver

    server, _, port = resolver.partition(":") if resolver.count(":") == 1 else (resolver, "", "")
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [server]
    res.port = int(port or 53)
    res.lifetime = 5.0
    found: list[str] = []
    for kind in ("A", "AAAA"):
        try:
            found += [r.to_text() for r in res.resolve(host, kind)]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            continue
        except dns.exception.DNSException as exc:
            raise AcmeError(f"pre-flight: resolving {host} through {resolver} failed: {exc}",
                            "Check tls.resolver; no certificate was ordered.") from None
    if not found:
        raise AcmeError(f"pre-flight: {host} has no A or AAAA record (asked {resolver})",
                        f"Create a DNS record for {host} pointing at this platform; no certificate was ordered.")
    return found


def preflight(hostnames, challenges: Challenges, port: int, resolver: str = "", timeout: float = 5.0) -> None:
    """Fetch a fresh token through each public name; AcmeError naming the first that fails."""
    token = "bae-preflight-" + secrets.token_urlsafe(16)
    value = secrets.token_urlsafe(24)
    challenges.put(token, value)
    try:
        for host in hostnames:
            for address in _resolve(host, resolver):
                url = f"http://{host}{'' if port == 80 else f':{port}'}{CHALLENGE_PATH}{token}"
                conn = http.client.HTTPConnection(address, port, timeout=timeout)
                try:
                    conn.request("GET", CHALLENGE_PATH + token, headers={"Host": host, "User-Agent": "bae-preflight"})
                    response = conn.getresponse()
                    body = response.read(4096).decode(errors="replace").strip()
                    status = response.status
                except OSError as exc:
                    raise AcmeError(f"pre-flight: {url} ({address}) cannot be reached: {exc}",
                                    f"Point {host}'s DNS at this platform and open port {port}; "
                                    "no certificate was ordered.") from None
                finally:
                    conn.close()
                if status != 200 or body != value:
                    raise AcmeError(f"pre-flight: {url} answered at {address} with HTTP {status}, not this router's token",
                                    f"{host} reaches another server; point its DNS at this platform. "
                                    "No certificate was ordered.")
    finally:
        challenges.drop(token)


class AcmeClient:
    """One ACME directory: account, orders, HTTP-01 answers."""

    def __init__(self, *, directory: str, email: str, ca_bundle: str, timeout: float, key_dir: Path,
                 challenges: Challenges, accounts) -> None:
        """``accounts``: where account URLs are kept (the store: acme_account/save_acme_account)."""
        self.directory = directory
        self.email = email
        self.verify: bool | str = ca_bundle or True
        self.timeout = timeout
        self.key_dir = Path(key_dir)
        self.challenges = challenges
        self.accounts = accounts
        self._client = None

    # -- the library's session --------------------------------------------------

    def _account_key(self):
        import hashlib

        import josepy
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        path = self.key_dir / f"acme-account-{hashlib.sha256(self.directory.encode()).hexdigest()[:12]}.key"
        if not path.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, pem)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(path.with_suffix(".tmp"), path)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        return josepy.JWKRSA(key=key)

    def client(self):
        if self._client is not None:
            return self._client
        from acme import client as acme_client
        from acme import errors as acme_errors
        from acme import messages

        with _translated(self.directory):
            net = acme_client.ClientNetwork(self._account_key(), verify_ssl=self.verify, user_agent="bae",
                                            timeout=int(min(self.timeout, 30)))
            directory = acme_client.ClientV2.get_directory(self.directory, net)
            client = acme_client.ClientV2(directory, net)
            known = self.accounts.acme_account(self.directory)
            registration = messages.NewRegistration.from_data(email=self.email or None, terms_of_service_agreed=True)
            try:
                account = client.new_account(registration)  # an existing key gets its account back
            except acme_errors.ConflictError as exc:
                account = messages.RegistrationResource(uri=exc.location, body=messages.Registration())
                net.account = account
            if not known or known["uri"] != account.uri:
                self.accounts.save_acme_account(self.directory, account.uri, self.email)
                log.info("acme: account %s at %s", account.uri, self.directory)
        self._client = client
        return client

    # -- one order --------------------------------------------------------------------

    def issue(self, hostnames) -> tuple[bytes, bytes]:
        """A certificate for ``hostnames``: (chain PEM, key PEM). AcmeError on any failure."""
        from acme import challenges, crypto_util, messages
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        csr_pem = crypto_util.make_csr(key_pem, list(hostnames))
        deadline = dt.datetime.now() + dt.timedelta(seconds=self.timeout)
        written: list[str] = []
        try:
            with _translated(self.directory):
                client = self.client()
                order = client.new_order(csr_pem)
                for authz in order.authorizations:
                    if authz.body.status == messages.STATUS_VALID:
                        continue
                    challenge = next((c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)), None)
                    if challenge is None:
                        raise AcmeError(f"the CA offers no HTTP-01 challenge for {authz.body.identifier.value}",
                                        "bae answers HTTP-01 only; use an uploaded certificate (certs:add) for it.")
                    response, validation = challenge.chall.response_and_validation(client.net.key)
                    token = challenge.chall.encode("token")
                    self.challenges.put(token, validation)
                    written.append(token)
                    client.answer_challenge(challenge, response)
                final = client.poll_and_finalize(order, deadline)
        except BaeError:
            self._client = None
            raise
        finally:
            for token in written:
                self.challenges.drop(token)
        return final.fullchain_pem.encode(), key_pem

    def renewal_hint(self, chain_pem: bytes) -> dt.datetime | None:
        """The CA's suggested renewal time (ARI), if its directory offers renewal information."""
        try:
            with _translated(self.directory):
                when, _ = self.client().renewal_time(chain_pem)
        except BaeError:
            return None
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        return when


class _translated:
    """Turn the acme library's, requests' and josepy's errors into AcmeError, once, here."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, BaeError):
            return False
        import requests
        from acme import errors as acme_errors
        from acme import messages

        where = self.directory
        if isinstance(exc, messages.Error):
            code = exc.code or "error"
            detail = exc.detail or exc.description or str(exc)
            if code == "rateLimited":
                # the library keeps no Retry-After; public CAs' limits run per hour or longer
                raise AcmeError(f"the CA's rate limit was hit: {detail}",
                                "bae retries in an hour at the earliest; the current certificate keeps serving.",
                                retry_after=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)) from None
            raise AcmeError(f"the CA refused the order ({code}): {detail}") from None
        if isinstance(exc, acme_errors.ValidationError):
            problems = []
            for authz in exc.failed_authzrs:
                for chall in authz.body.challenges:
                    if chall.error is not None:
                        problems.append(f"{authz.body.identifier.value}: {chall.error.detail or chall.error.code}")
            raise AcmeError(f"the CA could not validate {'; '.join(problems) or 'the hostnames'}",
                            "Check that the hostname's DNS points at this platform and port 80 reaches it.") from None
        if isinstance(exc, acme_errors.TimeoutError):
            raise AcmeError("the CA did not finish the order in time (tls.acme_timeout)",
                            "bae retries later with backoff.") from None
        if isinstance(exc, requests.exceptions.SSLError):
            raise AcmeError(f"the ACME directory {where} presented a certificate this host does not trust",
                            "Set tls.acme_ca_bundle for a private CA, or check the URL.") from None
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            raise AcmeError(f"the ACME CA at {where} cannot be reached ({type(exc).__name__})",
                            "bae retries with backoff; the current certificate keeps serving.") from None
        if isinstance(exc, (requests.exceptions.RequestException, acme_errors.Error, ValueError)):
            raise AcmeError(f"the ACME CA at {where} answered unexpectedly: {str(exc)[:300]}") from None
        return False
