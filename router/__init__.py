"""The HTTP router: route table, nginx rendering and reloads, error pages.

``Router`` is what `bae serve` runs: it turns the scheduler's endpoints and the
deployments' hostnames into routes and keeps nginx in step.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from router.nginx import Nginx
from router.table import Route, build_routes, check_hostname

__all__ = ["Router", "Route", "build_routes", "check_hostname"]

log = logging.getLogger("bae.router")


class Router:
    def __init__(self, platform) -> None:
        self.platform = platform
        self.logs = platform.logs.router_root
        self.nginx = Nginx(platform.data / "router", self.logs, platform.settings.router)
        self.endpoints: dict = {}
        self.max_log_bytes = int(platform.settings.logs.router_max_mb * 1024 * 1024)
        self._checked = 0.0
        self._applied: list[Route] | None = None  # what nginx serves; every pass compares, few reload

    def routes(self) -> list[Route]:
        store = self.platform.store
        return build_routes(store.deployments(), store.domains(), self.endpoints, self.platform.settings.base_domain)

    def start(self) -> None:
        self.nginx.start(self.routes())

    def sync(self, endpoints: dict) -> None:
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
        """Access logs over logs.router_max_mb move to NAME.log.1 (one kept); nginx reopens (USR1)."""
        rotated = 0
        for path in self.logs.glob("*.log"):
            try:
                if path.stat().st_size > self.max_log_bytes:
                    os.replace(path, path.with_name(path.name + ".1"))
                    rotated += 1
            except OSError:
                continue
        if rotated and self.nginx.proc and self.nginx.proc.poll() is None:
            self.nginx.proc.send_signal(signal.SIGUSR1)
            log.info("router: rotated %d access log(s)", rotated)
        return rotated

    def stop(self) -> None:
        self.nginx.stop()
