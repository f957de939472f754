"""The HTTP router: route table, nginx rendering and reloads, error pages.

``Router`` is what `bae serve` runs: it turns the scheduler's endpoints and the
deployments' hostnames into routes and keeps nginx in step.
"""

from __future__ import annotations

import logging

from router.nginx import Nginx
from router.table import Route, build_routes, check_hostname

__all__ = ["Router", "Route", "build_routes", "check_hostname"]

log = logging.getLogger("bae.router")


class Router:
    def __init__(self, platform) -> None:
        self.platform = platform
        s = platform.settings.router
        self.nginx = Nginx(s.nginx, platform.data / "router", platform.data / "logs" / "router", s.host, s.http_port, s)
        self.endpoints: dict = {}

    def routes(self) -> list[Route]:
        store = self.platform.store
        return build_routes(store.deployments(), store.domains(), self.endpoints, self.platform.settings.base_domain)

    def start(self) -> None:
        self.nginx.start(self.routes())

    def sync(self, endpoints: dict) -> None:
        """The scheduler's callback: the current up web units of every deployment."""
        self.endpoints = endpoints
        self.nginx.apply(self.routes())

    def stop(self) -> None:
        self.nginx.stop()
