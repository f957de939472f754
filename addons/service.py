"""Add-on lifecycle: create, start, wait until ready, restart, rotate, destroy.

An add-on is a row in the store (kind, version, plan, password, config var) and
a directory ``data_dir/addons/APP/NAME`` (``data/`` the service's files,
``backups/`` its dumps) that outlives every container. Its container is found by
labels (``bae.role=addon``, ``bae.app``, ``bae.addon``, ``bae.generation``) and
runs on the app's own network (``bae-INSTANCE-app-APP``) at a fixed address; the
app's units and one-off units find it by its name in their /etc/hosts and reach it
through firewall openings made for each of them (scheduler.firewall; where bae cannot
edit the host's firewall they join this network instead). No port is published on
the host, and no other app's unit gets through. On the swarm runtime that network
is an attachable overlay: the container stays on the manager (pinned where its data
is) and the app's units join it and reach it from every node. Called by the addons:* commands and by
the healer (heal.py).
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from addons.engine import ServiceInfo, engine
from addons.images import build_image
from addons.kinds import KINDS, Kind
from bae.errors import BaeError
from bae.model import Addon

__all__ = ["Services", "network_name", "READY_TIMEOUT"]

log = logging.getLogger("bae.addons")

READY_TIMEOUT = 60.0  # seconds a service has to accept connections after its container starts


def network_name(instance: str, app: str) -> str:
    """The app's own network: its add-ons (and its units where they join it: swarm, no firewall)."""
    return f"bae-{instance}-app-{app}"


def _mb(size: str) -> int:
    units = {"k": 1 / 1024, "m": 1, "g": 1024}
    size = size.strip().lower().rstrip("b")
    if size and size[-1] in units:
        return int(float(size[:-1]) * units[size[-1]])
    return int(int(size) / 1024 / 1024)


class Services:
    """Add-on containers of one installation (``platform.instance``)."""

    def __init__(self, platform, base_image: Callable[[str, Callable[[str], None]], str]) -> None:
        """``platform``: settings, store, data dir, instance id and logs; ``base_image(suite, out)``: the
        tag of a Debian release's base image, made if missing (the service images are built on it)."""
        self.platform = platform
        self.base_image = base_image
        self.settings = platform.settings
        self.instance = platform.instance
        self.root = Path(platform.data) / "addons"
        # on the swarm runtime an add-on stays a container on the manager (where its data directory is),
        # and its app's network is an attachable overlay that the app's services on every node join
        self.on_swarm = self.settings.scheduler.runtime == "swarm"

    # -- names and places ------------------------------------------------------------------

    def dir(self, app: str, name: str) -> Path:
        return self.root / app / name

    def kind(self, addon: Addon) -> Kind:
        return KINDS[addon.kind]

    def url(self, addon: Addon) -> str:
        return self.kind(addon).url(addon.name, addon.password)

    def masked_url(self, addon: Addon) -> str:
        return self.url(addon).replace(addon.password, "*" * 8)

    def labels(self, addon: Addon) -> dict[str, str]:
        return {"bae.platform": self.instance, "bae.role": "addon", "bae.app": addon.app, "bae.addon": addon.name,
                "bae.kind": addon.kind, "bae.version": addon.version, "bae.generation": str(addon.generation)}

    def filters(self, app: str | None = None, name: str | None = None) -> list[str]:
        found = [f"bae.platform={self.instance}", "bae.role=addon"]
        if app:
            found.append(f"bae.app={app}")
        if name:
            found.append(f"bae.addon={name}")
        return found

    @staticmethod
    def new_password() -> str:
        return secrets.token_urlsafe(24)

    # -- containers ------------------------------------------------------------------------

    def containers(self, app: str | None = None, name: str | None = None) -> list[ServiceInfo]:
        return engine().list_services(self.filters(app, name))

    def current(self, addon: Addon) -> ServiceInfo | None:
        """The add-on's container of its current generation (running or not), if any."""
        for info in self.containers(addon.app, addon.name):
            if info.labels.get("bae.generation") == str(addon.generation):
                return info
        return None

    def image(self, addon: Addon, out: Callable[[str], None] = lambda _: None) -> str:
        return build_image(self.settings.build, self.kind(addon), addon.version, self.base_image, out)

    def image_for(self, kind: Kind, version: str, out: Callable[[str], None] = lambda _: None) -> str:
        return build_image(self.settings.build, kind, version, self.base_image, out)

    def start(self, addon: Addon, out: Callable[[str], None] = lambda _: None) -> str:
        """Create and start the add-on's container on its data (made if missing); its id. Meanwhile the
        add-on counts as starting, not down (``being_started``)."""
        marker = self._starting(addon)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        try:
            return self._start(addon, out)
        finally:
            marker.unlink(missing_ok=True)

    def _starting(self, addon: Addon) -> Path:
        return self.root / addon.app / f".{addon.name}.starting"

    def being_started(self, addon: Addon) -> bool:
        """Is a command or the healer starting the add-on's container right now? (Its start has begun, and
        the process doing it still holds the add-on's lock: a start cut short by a dying process is not.)"""
        if not self._starting(addon).exists():
            return False
        try:
            f = open(self.root / addon.app / f".{addon.name}.lock", "rb")
        except OSError:
            return False
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    def _start(self, addon: Addon, out: Callable[[str], None]) -> str:
        plan = self.settings.plans[addon.plan]
        image = self.image(addon, out)
        folder = self.dir(addon.app, addon.name)
        if self.kind(addon).template:
            self._take_spare(image, folder / "data")
        (folder / "data").mkdir(parents=True, exist_ok=True)
        (folder / "backups").mkdir(parents=True, exist_ok=True)
        (folder / "ready").unlink(missing_ok=True)  # bae-service writes it again once the password is set
        network = network_name(self.instance, addon.app)
        subnet = engine().ensure_network(network, {"bae.platform": self.instance, "bae.role": "app-network",
                                                   "bae.app": addon.app}, overlay=self.on_swarm)
        ip = self._address(addon, subnet)
        env = {"BAE_PASSWORD": addon.password, "BAE_MEMORY_MB": str(_mb(plan.memory)),
               "BAE_MAX_CONNECTIONS": str(max(20, min(500, plan.pids // 2)))}
        name = f"bae-{self.instance}-{addon.app}-addon-{addon.name}-{secrets.token_hex(3)}"
        labels = {**self.labels(addon), **({"bae.ip": ip} if ip else {})}
        return engine().create_service(
            name=name, image=image, env=env, labels=labels, data=str(folder), memory=plan.memory,
            cpu=plan.cpu, pids=max(plan.pids, 256), network=network, alias=addon.name, hostname=addon.name, ip=ip)

    # -- spare data directories ------------------------------------------------------------
    # A new PostgreSQL or MariaDB add-on starts from a copy of its image's template cluster. Copying
    # it (30-50 MB, ~1300 files) took 0.5-1.6 s of the create on a busy host, so one copy per image is
    # made ahead, in the background, and a new add-on's data directory is that copy, renamed. The
    # copy holds no secret (the template's roles have no password; bae-service sets the add-on's on
    # its first start) and is used once: the next create gets a new one, or copies inline.

    def _spares(self, image: str) -> Path:
        return self.root / ".spare" / image.replace("/", "_").replace(":", "_")

    def _take_spare(self, image: str, data: Path) -> bool:
        """Move a ready copy of ``image``'s template to ``data`` if ``data`` is new (addons:create makes
        the next one once the new add-on is up: not while it starts, which it would slow down)."""
        if data.exists() and any(data.iterdir()):
            return False
        spare = self._spares(image) / "data"
        taken = False
        try:
            data.parent.mkdir(parents=True, exist_ok=True)
            if data.exists():
                data.rmdir()
            os.rename(spare, data)
            taken = True
        except OSError:
            pass
        return taken

    def refill_spare(self, addon: Addon, wait: bool = False) -> None:
        """Make a copy of the template of ``addon``'s image in the background (unless one is there or
        being made; nothing for kinds without a template)."""
        if not self.kind(addon).template:
            return
        image = self.image(addon)
        thread = threading.Thread(target=self._refill, args=(image,), name="addon-spare", daemon=True)
        thread.start()
        if wait:
            thread.join()

    def _refill(self, image: str) -> None:
        folder = self._spares(image)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.parent.iterdir():  # spares of images that are not current any more
                if old != folder and time.time() - old.stat().st_mtime > 3600:
                    shutil.rmtree(old, ignore_errors=True)
            with open(folder / ".lock", "a") as lockfile:
                try:
                    fcntl.flock(lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # another process makes it
                if (folder / "data").exists():
                    return
                staging = folder / "staging"
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir()
                code, _out, err = engine().run_throwaway(
                    image=image, cmd=["cp", "-a", "--sparse=always", "/var/lib/bae-template/data/.", "/out/"],
                    mounts=[(str(staging), "/out", False)], memory="256m", cpu=1.0, timeout=300,
                    labels={"bae.platform": self.instance, "bae.role": "addon-spare"})
                if code != 0:
                    log.warning("copying the template of %s failed: %s", image, err.strip()[-300:])
                    shutil.rmtree(staging, ignore_errors=True)
                    return
                os.rename(staging, folder / "data")
        except (OSError, BaeError) as exc:
            log.warning("no spare data directory for %s: %s", image, exc)

    def _address(self, addon: Addon, subnet: str) -> str | None:
        """The add-on's fixed address on its app's network, kept in its directory: the top of the
        subnet, below the broadcast address, downwards (Docker hands out addresses from the bottom).
        Units find it in /etc/hosts (labels ``bae.addon`` + ``bae.ip``), not through Docker's DNS."""
        import ipaddress

        folder = self.dir(addon.app, addon.name)
        saved = folder / "address"
        try:
            net = ipaddress.ip_network(subnet)
        except ValueError:
            return None
        if saved.exists() and ipaddress.ip_address(saved.read_text().strip()) in net:
            return saved.read_text().strip()
        taken = set()
        for sibling in (self.root / addon.app).glob("*/address"):
            taken.add(sibling.read_text().strip())
        candidate = net.broadcast_address - 1
        while str(candidate) in taken:
            candidate -= 1
        saved.write_text(f"{candidate}\n")
        return str(candidate)

    def addresses(self, app: str) -> dict[str, str]:
        """Name -> fixed address of each of ``app``'s add-ons, from their records (the store's rows and
        the address kept in each one's directory since its first start), for the units' /etc/hosts and
        firewall openings. Not from the add-on containers: a unit created while the healer re-creates
        one (after a crash, a dockerd restart) would get no entry and no opening for its whole life.
        Empty for an unknown app."""
        try:
            addons = self.platform.store.addons(self.platform.store.app(app))
        except BaeError:
            return {}
        found = {}
        for addon in addons:
            try:
                found[addon.name] = (self.dir(app, addon.name) / "address").read_text().strip()
            except OSError:
                continue  # not started yet: its creation rolls the app's units once it is up
        return found

    def wait_ready(self, addon: Addon, timeout: float = READY_TIMEOUT) -> ServiceInfo:
        """Wait until the add-on accepts connections with its password; BaeError with its last output
        if it stops. The port (and the marker file) are polled often, the container's state twice a second."""
        deadline = time.monotonic() + timeout
        kind = self.kind(addon)
        marker = self.dir(addon.app, addon.name) / "ready"
        info, checked = None, 0.0
        while True:
            now = time.monotonic()
            if info is None or now - checked >= 0.5:
                info, checked = self.current(addon), now
                if info is None:
                    raise BaeError(f"the container of add-on {addon.name} vanished while starting")
                if not info.running:
                    raise self.failed(addon, info)
            marked = kind.ready != "marker" or marker.exists()
            if marked and engine().port_open(info.ip, kind.port, greeting=kind.ready == "greeting"):
                return info
            if now > deadline:
                raise BaeError(f"{addon.name} did not accept connections within {timeout:.0f} s",
                               "Its last output:\n" + engine().logs(info.id, 15).rstrip())
            time.sleep(0.02)

    def failed(self, addon: Addon, info: ServiceInfo) -> BaeError:
        tail = engine().logs(info.id, 15).rstrip() or "(no output)"
        why = "it ran out of memory" if info.oom else f"exit {info.exit_code}"
        return BaeError(f"add-on {addon.name} stopped while starting ({why}); its last output:\n{tail}",
                        f"A bigger plan may help (--plan); `addons:info {addon.app} {addon.name}` shows its state.")

    def remove_containers(self, addon: Addon, keep: str | None = None) -> None:
        for info in self.containers(addon.app, addon.name):
            if info.id != keep:
                engine().stop(info.id, 30)
                engine().remove(info.id)

    def replace(self, addon: Addon, out: Callable[[str], None] = lambda _: None) -> ServiceInfo:
        """Stop the add-on's container(s) and start its current generation on the same data."""
        for info in self.containers(addon.app, addon.name):
            engine().stop(info.id, 30)  # never two servers on one data directory
            engine().remove(info.id)
        self.start(addon, out)
        return self.wait_ready(addon)

    def exec(self, addon: Addon, cmd: list[str], user: str = "root", env: dict | None = None) -> tuple[int, str, str]:
        info = self.current(addon)
        if info is None or not info.running:
            raise BaeError(f"add-on {addon.name} is not running",
                           f"Try `addons:restart {addon.app} {addon.name}`; the platform also restarts it.")
        return engine().exec(info.id, cmd, user=user, env=env)

    def data_size(self, addon: Addon) -> int:
        total = 0
        for root, _dirs, files in os.walk(self.dir(addon.app, addon.name) / "data"):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_size
                except OSError:
                    pass
        return total

    def destroy(self, addon: Addon) -> None:
        """Remove the container(s) and the data (backups stay, under the add-on's name)."""
        for info in self.containers(addon.app, addon.name):
            engine().remove(info.id)
        shutil.rmtree(self.dir(addon.app, addon.name) / "data", ignore_errors=True)
        shutil.rmtree(self.dir(addon.app, addon.name) / "staged", ignore_errors=True)

    def remove_app(self, app: str) -> None:
        """Everything of ``app``'s add-ons: containers, network, data and backups."""
        engine().remove_labelled(self.filters(app))
        engine().remove_network(network_name(self.instance, app))
        shutil.rmtree(self.root / app, ignore_errors=True)

    def drop_network_if_unused(self, app: str) -> None:
        if not self.platform.store.addons(self.platform.store.app(app)):
            engine().remove_network(network_name(self.instance, app))
