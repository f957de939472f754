"""The composition root's assembly: the pieces every command and server share, built once per process.

``Platform`` holds the settings, the store, the repository backend, the log
store and (on first use) the runtime; the CLI and ``bae serve`` both start by
building one, and hand each component only the parts it needs.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from bae.config import Settings
from bae.logstore import LogStore
from bae.model import Deployment, hostname, slug
from bae.store import Store
from gitserver.repos import Repositories
from scheduler.runtime import Runtime

__all__ = ["Platform"]


class Platform:
    """Settings, state, repositories, logs and the runtime of one installation."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data = Path(settings.data_dir)
        for sub in ("repos", "cache", "run", "logs", "locks"):
            (self.data / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.data / sub, 0o700)  # code, caches, logs and sockets are root's alone
        os.chmod(self.data, 0o711)  # nginx's workers (www-data) need to pass through to router/
        self.store = Store(self.data / "bae.db")
        for name in ("bae.db", "bae.db-wal", "bae.db-shm"):
            if (self.data / name).exists():
                os.chmod(self.data / name, 0o600)  # config var values live here
        self.repos = Repositories(self.data / "repos")
        self.instance = self._instance_id()
        self.logs = LogStore(self.data / "logs" / "apps", settings.logs.retention_lines, self.data / "logs" / "router")
        self.addons_healer = None  # the add-on watcher, in `bae serve` only
        self._addons = None
        self._runtime: Runtime | None = None

    def _instance_id(self) -> str:
        """A random id naming this installation on the Docker Engine (container labels)."""
        path = self.data / "instance-id"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            value = secrets.token_hex(6)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(value + "\n")
            try:
                os.link(tmp, path)  # first writer wins
            except FileExistsError:
                pass
            tmp.unlink()
            return path.read_text().strip()

    @property
    def wake_socket(self) -> Path:
        """The datagram socket `bae serve`'s scheduler listens on (``notify``)."""
        return self.data / "run" / "scheduler.sock"

    @property
    def public_host(self) -> str:
        return self.settings.ssh.public_host or socket.gethostname()

    def git_url(self, app: str, deployment: str) -> str:
        port = self.settings.ssh.port
        hostport = self.public_host if port == 22 else f"{self.public_host}:{port}"
        return f"ssh://bae@{hostport}/{slug(app, deployment)}.git"

    def hostname(self, app: str, deployment: str) -> str:
        return hostname(app, deployment, self.settings.base_domain)

    def web_url(self, app: str, deployment: str) -> str:
        port = self.settings.router.http_port
        host = self.hostname(app, deployment)
        return f"http://{host}/" if port == 80 else f"http://{host}:{port}/"

    @property
    def addons(self):
        """The add-on services (addons.Services) of this installation, built on the stack's base image."""
        if self._addons is None:
            from addons import Services
            from buildpacks.stack import ensure_base

            build = self.settings.build
            self._addons = Services(self, base_image=lambda suite, out: ensure_base(build, out, suite))
        return self._addons

    @property
    def runtime(self) -> Runtime:
        """The scheduler's runtime (the Docker Engine), for commands that look at units."""
        if self._runtime is None:
            # imported on first use: commands that never look at units do not load the Docker SDK
            from scheduler.runtime_docker import DockerRuntime
            from scheduler.runtime_swarm import SwarmRuntime

            # each backend says whether the settings select it (config.load refused any other name)
            backend = next(r for r in (SwarmRuntime, DockerRuntime) if r.applies(self.settings))
            self._runtime = backend.create(self.instance, self.settings, self.store, addresses=self.addon_addresses)
        return self._runtime

    def addon_addresses(self, app: str) -> dict[str, str]:
        """Name -> fixed address of ``app``'s add-ons, from their records (addons.Services.addresses):
        what the runtimes put in units' /etc/hosts and open the way to."""
        return self.addons.addresses(app)

    def notify(self) -> bool:
        """Wake the scheduler of `bae serve` (in this process or another). False if none runs."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"wake", str(self.wake_socket))
            return True
        except OSError:
            return False

    def build_config(self, dep: Deployment) -> dict[str, str]:
        """The config vars of ``dep``: the app's, overridden by the deployment's (a build's env dir, a release's snapshot)."""
        return {k: v for k, (v, _) in self.store.effective_config(dep).items()}

    def image_repository(self, dep: Deployment) -> str:
        """Docker repository of ``dep``'s release images (unique per installation)."""
        return f"bae/{self.instance}/{dep.app}/{dep.name}"

    def cache_dir(self, dep: Deployment) -> Path:
        return self.data / "cache" / dep.app / dep.name
