"""HTTPS for the router: what it serves and the certificate loop behind it, as one part.

``Https`` is handed to the Router by `bae serve` when ``router.https_port`` is set.
The Router asks it, on every pass, for the ``TlsView`` to render (router/tls.py
decides), tells it the routes so it can wake the certificate loop when hostnames
or certs:auto changed, and gives it a ``refresh`` callback that applies the
store's certificates to nginx at once (after an order). Its inputs are narrow:
the store (certificates, TLS state, deployments, domains), the [router] and
[tls] settings, the base domain and the TLS directory.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol

from bae.model import Certificate, Deployment, TlsState, deployment_key, hostname
from router import tls as tls_conf
from router.certs import CertFiles, TicketKeys

__all__ = ["Https", "CertStore"]


class CertStore(Protocol):
    """What HTTPS reads and writes (``bae.store.Store``)."""

    def deployments(self) -> list[Deployment]: ...

    def domains(self) -> dict[int, list[str]]: ...

    def certificates(self) -> list[Certificate]: ...

    def tls_states(self) -> dict[int, TlsState]: ...


class Https:
    def __init__(self, store: CertStore, router_settings, tls_settings, *, base_domain: str, tls_dir: Path) -> None:
        """``router_settings``: bae.config.Router (host, https_port); ``tls_settings``: bae.config.TLS."""
        self.store = store
        self.router_settings = router_settings
        self.settings = tls_settings
        self.base_domain = base_domain
        self.files = CertFiles(tls_dir)
        self.tickets = TicketKeys(tls_dir)
        host, port = router_settings.host, router_settings.https_port
        self.listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.challenges = None  # router.acme.Challenges: the HTTP-01 answers, once started
        self.loop = None  # router.certloop.CertLoop, once started
        self._seen: tuple | None = None

    def start(self, refresh: Callable[[], object]) -> None:
        """Before nginx starts: ticket keys, stray files gone, HTTP-01 answers; the loop runs from now."""
        from router.acme import Challenges
        from router.certloop import CertLoop

        self.tickets.rotate(time.time())
        self.files.prune({c.name for c in self.store.certificates()})
        self.challenges = Challenges()
        self.loop = CertLoop(self.store, self.router_settings, self.settings, self.files, self.tickets,
                             self.challenges, refresh=refresh, hostnames=self.hostnames)

    def run(self) -> None:
        if self.loop is not None:
            self.loop.start()

    def hostnames(self) -> dict[int, tuple[str, ...]]:
        """Deployment id -> its hostnames (the platform's and custom ones)."""
        domains = self.store.domains()
        return {d.id: (hostname(d.app, d.name, self.base_domain), *domains.get(d.id, []))
                for d in self.store.deployments()}

    def view(self, routes) -> tls_conf.TlsView:
        """What HTTPS serves for ``routes`` now."""
        dep_ids = {deployment_key(d.app, d.name): d.id for d in self.store.deployments()}
        return tls_conf.view(routes, dep_ids, self.store.certificates(), self.store.tls_states(),
                             datetime.now(timezone.utc), listen=self.listen, port=self.router_settings.https_port,
                             cert_dir=self.files.root, ticket_keys=self.tickets.paths(),
                             challenge_upstream=self.challenges.address if self.challenges else "",
                             hsts_max_age=self.settings.hsts_max_age)

    def notice(self, routes) -> None:
        """After a pass: wake the certificate loop when hostnames or certs:auto changed."""
        seen = (tuple(r.hostnames for r in routes), tuple(sorted((k, v.auto) for k, v in self.store.tls_states().items())))
        if seen != self._seen:
            self._seen = seen
            if self.loop is not None:
                self.loop.wake()

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.stop()
        if self.challenges is not None:
            self.challenges.close()
