"""The composition root's assembly: the pieces every command and server share, built once per process.

``Platform`` holds the settings, the store, the repository backend, the log
store and (on first use) the runtime; the CLI and ``bae serve`` both start by
building one, and hand each component only the parts it needs.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import time
from pathlib import Path

from bae.config import Settings
from bae.logstore import LogStore
from bae.model import App, Deployment, hostname, slug
from bae.store import Store
from gitserver.repos import Repositories
from scheduler.runtime import Runtime

__all__ = ["Platform"]

log = logging.getLogger("bae")


class Platform:
    """Settings + state + repositories; the daemon adds its running parts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data = Path(settings.data_dir)
        for sub in ("repos", "cache", "run", "logs"):
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
        self.scheduler = None  # the reconcile loop, in `bae serve` only
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

    # -- lifecycle shared by commands ------------------------------------------

    def destroy_deployment(self, dep: Deployment) -> None:
        """Remove a deployment everywhere: units, routes, repo, cache, rows."""
        with self.repos.lock(dep.app, dep.name):
            self.store.destroy_deployment(dep)  # the scheduler stops wanting its units
            self.notify()
            self._remove_units(dep)
            self._remove_images(dep)
            self.repos.destroy(dep.app, dep.name)
            shutil.rmtree(self.cache_dir(dep), ignore_errors=True)
            self.logs.remove(dep.app, dep.name)

    def destroy_app(self, app: App) -> None:
        for dep in self.store.deployments(app):
            self.destroy_deployment(dep)
        self.store.destroy_app(app)
        self.repos.destroy(app.name)
        shutil.rmtree(self.data / "cache" / app.name, ignore_errors=True)

    @property
    def runtime(self) -> Runtime:
        """The scheduler's runtime (the Docker Engine), for commands that look at units."""
        if self._runtime is None:
            # imported on first use: commands that never look at units do not load the Docker SDK
            from scheduler.runtime_docker import DockerRuntime

            self._runtime = DockerRuntime(self.instance)
        return self._runtime

    def notify(self) -> bool:
        """Wake the scheduler of `bae serve` (in this process or another). False if none runs."""
        if self.scheduler is not None:
            self.scheduler.wake()
            return True
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"wake", str(self.wake_socket))
            return True
        except OSError:
            return False

    def _remove_units(self, dep: Deployment) -> None:
        try:
            self.runtime.remove_all(app=dep.app, deployment=dep.name)
        except Exception as exc:  # Docker down: the scheduler removes them later (they are orphans)
            log.warning("could not remove the units of %s/%s: %s", dep.app, dep.name, exc)

    def _remove_images(self, dep: Deployment) -> None:
        # imported on use: commands that never touch images do not load the Docker SDK
        from buildpacks.runner import remove_images

        for attempt in range(3):
            try:
                remove_images(self.image_repository(dep), force=True)
                return
            except Exception as exc:  # in use by a unit a reconcile pass started meanwhile, or Docker down
                if attempt == 2:
                    log.warning("could not remove the images of %s/%s: %s", dep.app, dep.name, exc)
                    return
                time.sleep(1)
                self._remove_units(dep)

    def build_config(self, dep: Deployment) -> dict[str, str]:
        """The config vars of ``dep``: the app's, overridden by the deployment's (a build's env dir, a release's snapshot)."""
        return {k: v for k, (v, _) in self.store.effective_config(dep).items()}

    def image_repository(self, dep: Deployment) -> str:
        """Docker repository of ``dep``'s release images (unique per installation)."""
        return f"bae/{self.instance}/{dep.app}/{dep.name}"

    def cache_dir(self, dep: Deployment) -> Path:
        return self.data / "cache" / dep.app / dep.name
