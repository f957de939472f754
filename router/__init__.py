"""The HTTP router: route table, nginx rendering and reloads, error pages.

``Router`` is what `bae serve` runs: it turns the scheduler's endpoints and the
deployments' hostnames into routes and keeps nginx in step. Its inputs are
narrow: where hostnames come from (``Hostnames``, the store), the router
settings, and its directories.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Protocol

from bae import config
from bae.model import Deployment, Endpoint, Route
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
                 access_logs: Path, max_log_mb: float) -> None:
        self.hostnames = hostnames
        self.base_domain = base_domain
        self.logs = access_logs
        self.nginx = Nginx(prefix, access_logs, settings)
        self.endpoints: dict[tuple[str, str], tuple[Endpoint, ...]] = {}
        self.max_log_bytes = int(max_log_mb * 1024 * 1024)
        self._checked = 0.0
        self._applied: list[Route] | None = None  # what nginx serves; every pass compares, few reload

    def routes(self) -> list[Route]:
        return build_routes(self.hostnames.deployments(), self.hostnames.domains(), self.endpoints, self.base_domain)

    def start(self) -> None:
        self.nginx.start(self.routes())

    def sync(self, endpoints: dict[tuple[str, str], tuple[Endpoint, ...]]) -> None:
        """The scheduler's callback: the current up web units of every deployment."""
        self.endpoints = endpoints
        routes = self.routes()
        if routes != self._applied and self.nginx.apply(routes):
            self._applied = routes
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
        self.nginx.stop()
