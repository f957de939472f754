"""The HTTP router: route table, nginx rendering and reloads, error pages, HTTPS.

``Router`` is what `bae serve` runs: it turns the scheduler's endpoints and the
deployments' hostnames into routes and keeps nginx in step. Its inputs are
narrow: where hostnames come from (``Hostnames``, the store), the router
settings, and its directories. With an ``Https`` part (router/https.py; `bae
serve` gives one when router.https_port is set) it serves HTTPS too and keeps
certificates obtained and renewed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Protocol

from bae import config
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

    def routes(self) -> list[Route]:
        return build_routes(self.hostnames.deployments(), self.hostnames.domains(), self.endpoints, self.base_domain)

    def start(self) -> None:
        if self.https:
            self.https.start(refresh=self.refresh)
        routes = self.routes()
        view = self.https.view(routes) if self.https else None
        self.nginx.start(routes, view)
        self._applied = (routes, view)
        if self.https:
            self.https.run()

    def refresh(self) -> None:
        """Apply the store's certificates now (one was obtained, renewed or removed)."""
        self.sync(self.endpoints)

    def sync(self, endpoints: dict[tuple[str, str], tuple[Endpoint, ...]]) -> None:
        """The scheduler's callback: the current up web units of every deployment."""
        with self._sync_lock:
            self.endpoints = endpoints
            routes = self.routes()
            view = self.https.view(routes) if self.https else None
            if (routes, view) != self._applied and self.nginx.apply(routes, view):
                self._applied = (routes, view)
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

    def stop(self) -> None:
        if self.https:
            self.https.stop()
        self.nginx.stop()
