"""The HTTP router: route table, nginx rendering and reloads, error pages, HTTPS.

``Router`` is what `bae serve` runs: it turns the scheduler's endpoints and the
deployments' hostnames into routes and keeps nginx in step. Its inputs are
narrow: where hostnames come from (``Hostnames``, the store), the router
settings, and its directories. With an ``Https`` part (router/https.py; `bae
serve` gives one when router.https_port is set) it serves HTTPS too and keeps
certificates obtained and renewed.

The route table nginx serves is only ever replaced by a complete one: after a
restart of `bae serve` the adopted nginx keeps its configuration (the same
units, which outlive the control plane too) and a newly started nginx waits for
the scheduler's first observation of the units, so nobody gets a 503 for an app
whose units are up while the table refills.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Protocol

from bae import config
from bae.errors import BaeError
from bae.model import Deployment, Endpoint, Route
from router.https import Https
from router.nginx import Nginx
from router.table import build_routes, check_hostname

__all__ = ["Router", "Hostnames", "build_routes", "check_hostname"]

log = logging.getLogger("bae.router")


class Hostnames(Protocol):
    """Where the deployments and their custom domains come from (``bae.store.Store``)."""

    def deployments(self) -> list[Deployment]: ...

    def domains(self) -> dict[int, list[str]]: ...


class Router:
    def __init__(self, hostnames: Hostnames, settings: config.Router, *, base_domain: str, prefix: Path,
                 access_logs: Path, max_log_mb: float, https: Https | None = None) -> None:
        self.hostnames = hostnames
        self.base_domain = base_domain
        self.logs = access_logs
        self.nginx = Nginx(prefix, access_logs, settings)
        self.endpoints: dict[tuple[str, str], tuple[Endpoint, ...]] = {}
        self.max_log_bytes = int(max_log_mb * 1024 * 1024)
        self._checked = 0.0
        self._applied: tuple | None = None  # what nginx serves (routes, TLS view); every pass compares, few reload
        self.https = https
        self._sync_lock = threading.Lock()  # the scheduler's passes and certificate refreshes
        self._ready = False  # routes may be applied: the scheduler reported the units (or serve stopped waiting)
        self._synced = threading.Event()  # nginx serves the scheduler's first report

    def routes(self) -> list[Route]:
        return build_routes(self.hostnames.deployments(), self.hostnames.domains(), self.endpoints, self.base_domain)

    def start(self) -> None:
        """Adopt this installation's running nginx, or make sure its ports are free for a new one.

        A new nginx starts with the first complete route table (``sync``, or ``wait_synced``
        giving up); an adopted one keeps serving its own until then."""
        if not self.nginx.adopt():
            self.nginx.check_port()
        if self.https:
            self.https.start(refresh=self.refresh)

    def wait_synced(self, timeout: float) -> bool:
        """Wait for the scheduler's first report (if it does not come, serve what is known); then
        certificates are obtained and renewed (ACME's challenges are answered by nginx)."""
        synced = self._synced.wait(timeout)
        if not synced:
            log.warning("router: no report of the units after %.0f s; routing without them for now", timeout)
            self._ready = True
            self.sync(self.endpoints, first=False)
        if self.https:
            self.https.run()
        return synced

    def refresh(self) -> None:
        """Apply the store's certificates now (one was obtained, renewed or removed)."""
        self.sync(self.endpoints, first=False)

    def sync(self, endpoints: dict[tuple[str, str], tuple[Endpoint, ...]], first: bool = True) -> None:
        """The scheduler's callback: the current up web units of every deployment (``first``: a
        report of the scheduler; until the first, nginx keeps what it serves)."""
        with self._sync_lock:
            self.endpoints = endpoints
            self._ready = self._ready or first
            if not self._ready:
                return
            routes = self.routes()
            view = self.https.view(routes) if self.https else None
            if not self.nginx.alive():
                if self._applied is not None:
                    log.warning("router: nginx is gone; starting it again")
                try:
                    self.nginx.start(routes, view)
                except BaeError as exc:  # tried again on the next pass
                    log.error("router: %s", exc.message)
                    return
                self._applied = (routes, view)
            elif (routes, view) != self._applied and self.nginx.apply(routes, view):
                self._applied = (routes, view)
            if first:
                self._synced.set()  # nginx serves the complete table now
        if self.https:
            self.https.notice(routes)
        if time.monotonic() - self._checked > 30:
            self._checked = time.monotonic()
            self.rotate_logs()

    def drain(self) -> None:
        """Before a unit stops: requests already routed to it under an older configuration finish."""
        self.nginx.wait_drained(timeout=10.0)

    def rotate_logs(self) -> int:
        """Access logs over logs.router_max_mb move to NAME.log.1 (one kept); nginx reopens them."""
        rotated = 0
        for path in self.logs.glob("*.log"):
            try:
                if path.stat().st_size > self.max_log_bytes:
                    os.replace(path, path.with_name(path.name + ".1"))
                    rotated += 1
            except OSError:
                continue
        if rotated and self.nginx.reopen_logs():
            log.info("router: rotated %d access log(s)", rotated)
        return rotated

    def close(self) -> None:
        """`bae serve` stops: certificate work ends; nginx goes on serving (the next `bae serve` adopts it)."""
        if self.https:
            self.https.stop()

    def stop(self) -> bool:
        """Stop nginx (`router:stop`); `bae serve` itself leaves it running when it stops."""
        self.close()
        return self.nginx.stop()
