"""The certificate loop in `bae serve`: obtains and renews automatic certificates, unattended.

Level-based like the scheduler: each pass reads the deployments, their
hostnames, certificates and TLS state from the store, asks router/renewal.py's
pure ``plan`` what is due, and carries the orders out one by one: pre-flight
check, ACME order (router/acme.py), files written, row recorded (replacing the
superseded certificate in the same transaction), graceful nginx reload, and a
TLS handshake per hostname that must see the new serial. A failure is stored
on the deployment (error, failures in a row, no new order before the backoff
ends) so `certs` shows it and a restart neither forgets nor hammers the CA; the
old certificate keeps serving. The loop sleeps until the next renewal or
backoff end (at most ``tls.check_interval``) unless the router wakes it
because hostnames or certs:auto changed. It also rotates the session ticket keys.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from cryptography import x509

from bae.errors import BaeError
from bae.model import TlsState
from router import renewal
from router.acme import AcmeClient, Challenges, preflight
from router.certs import CertFiles, TicketKeys, from_pem, leaf_serial, parse_bundle

__all__ = ["CertLoop", "served_serial"]

log = logging.getLogger("bae.router.certs")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def served_serial(host: str, port: int, sni: str, timeout: float = 5.0) -> str:
    """The serial (hex) of the certificate the router presents for ``sni``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we compare serials; trust is the client's business
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=sni) as tls:
            return leaf_serial(x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)))


class CertLoop:
    def __init__(self, store, router_settings, tls_settings, files: CertFiles, tickets: TicketKeys,
                 challenges: Challenges, *, refresh: Callable[[], object],
                 hostnames: Callable[[], dict[int, tuple[str, ...]]]) -> None:
        """``router_settings``/``tls_settings``: bae.config.Router and TLS; ``refresh``: apply the store's
        certificates to nginx now; ``hostnames``: deployment id -> its names."""
        self.store = store
        self.tls = tls_settings
        host = router_settings.host
        self.router_address = ("127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host,
                               router_settings.https_port)
        self.files = files
        self.tickets = tickets
        self.challenges = challenges
        self.refresh = refresh
        self.hostnames = hostnames
        self._acme: AcmeClient | None = None
        self._hints: dict[str, tuple[datetime | None, float]] = {}  # cert name -> (ARI time, ask again at)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="certs", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(self.tls.acme_timeout + 30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                wait = self.pass_once()
            except Exception:  # a bug must not end the loop: log it, try again later
                log.exception("certs: pass failed")
                wait = 30.0
            self._wake.wait(max(0.2, wait))

    @property
    def acme(self) -> AcmeClient:
        if self._acme is None:
            self._acme = AcmeClient(directory=self.tls.acme_directory, email=self.tls.acme_email,
                                    ca_bundle=self.tls.acme_ca_bundle, timeout=self.tls.acme_timeout,
                                    key_dir=self.files.root, challenges=self.challenges, accounts=self.store)
        return self._acme

    def _hint(self, cert, auto: bool) -> datetime | None:
        """The CA's renewal suggestion for ``cert`` (ARI), asked at most as often as the CA says."""
        if not auto or cert.source != "acme":
            return None
        hint, again = self._hints.get(cert.name, (None, 0.0))
        if time.time() >= again:
            hint = self.acme.renewal_hint(self.files.paths(cert.name)[0].read_bytes())
            self._hints[cert.name] = (hint, time.time() + 6 * 3600)
        return hint

    def pass_once(self) -> float:
        """One look at every deployment; returns the seconds until the next is due."""
        if self.tickets.rotate(time.time()):
            self.refresh()
        now = _now()
        hostnames = self.hostnames()
        states = self.store.tls_states()
        certs = self.store.certificates()
        wanted = []
        for dep in self.store.deployments():
            state = states.get(dep.id) or TlsState(dep.id)
            own = tuple(c for c in certs if c.deployment_id == dep.id)
            hints = [h for h in (self._hint(c, state.auto) for c in own) if h is not None]
            wanted.append(renewal.Wanted(dep.id, dep.slug, hostnames.get(dep.id, ()), state, own,
                                         min(hints) if hints else None))
        decided = renewal.plan(wanted, [c for c in certs if c.deployment_id is None], now)
        for order in decided.orders:
            if self._stop.is_set():
                break
            self.carry_out(order, states.get(order.deployment_id) or TlsState(order.deployment_id))
        wait = self.tls.check_interval
        if decided.orders:
            wait = 0.0  # look again at once: the plan after the orders
        elif decided.next_check is not None:
            wait = min(wait, (decided.next_check - _now()).total_seconds())
        return wait

    def carry_out(self, order: renewal.Order, state: TlsState) -> bool:
        """Obtain, record, serve and verify one certificate; store the failure if any step fails."""
        names = ", ".join(order.hostnames)
        self.store.update_tls_state(order.deployment_id, last_attempt=_now().isoformat())
        log.info("certs: ordering a certificate for %s (%s): %s", order.slug, order.reason, names)
        try:
            preflight(order.hostnames, self.challenges, self.tls.challenge_port, self.tls.resolver)
            chain_pem, key_pem = self.acme.issue(order.hostnames)
            bundle = parse_bundle(chain_pem, key_pem)
            name = self.files.new_name()
            self.files.write(name, bundle)
            cert = self.store.add_certificate(from_pem(bundle, name=name, deployment_id=order.deployment_id,
                                                       source="acme"), replace=order.replaces)
        except Exception as exc:  # BaeError: said why; anything else is a bug, but still backs off
            if isinstance(exc, BaeError):
                reason = exc.message
            else:
                log.exception("certs: %s: unexpected error while ordering", order.slug)
                reason = f"unexpected error ({type(exc).__name__}); the operator's log has the details"
            failures = state.failures + 1
            until = renewal.next_attempt(_now(), failures, self.tls.retry_min, self.tls.retry_max,
                                         getattr(exc, "retry_after", None))
            self.store.update_tls_state(order.deployment_id, failures=failures, not_before=until.isoformat(),
                                        last_error=reason)
            log.warning("certs: %s: %s (failure %d in a row; next attempt %s)", order.slug, reason, failures,
                        until.isoformat(timespec="seconds"))
            return False
        self.refresh()
        problem = self.verify(order.hostnames, cert.serial)
        for old in order.replaces:
            self.files.remove(old)
        self.store.update_tls_state(order.deployment_id, failures=0, not_before=None, last_error=problem,
                                    last_success=_now().isoformat())
        if problem:
            log.error("certs: %s: %s", order.slug, problem)
        else:
            log.info("certs: %s now serves serial %s (valid until %s) for %s", order.slug, cert.serial,
                     cert.not_after, names)
        return problem is None

    def verify(self, hostnames, serial: str, timeout: float = 10.0, streak: int = 3) -> str | None:
        """None once ``streak`` TLS handshakes in a row for every hostname see ``serial``; else what was seen.

        In a row: just after a reload an old worker of a busy machine may still take a connection."""
        deadline = time.monotonic() + timeout
        for host in hostnames:
            good = 0
            while good < streak:
                try:
                    seen = served_serial(*self.router_address, host)
                except (OSError, ssl.SSLError) as exc:
                    seen = f"no handshake ({exc})"
                good = good + 1 if seen == serial else 0
                if good < streak and time.monotonic() > deadline:
                    return f"after the reload the router still serves {seen} for {host}, not the new serial {serial}"
                if seen != serial:
                    time.sleep(0.1)
        return None
