"""The local Docker Engine as the scheduler's runtime (``scheduler.runtime.Runtime``): units are containers.

Units are found by their labels (``bae.platform``, ``bae.role=unit``,
``bae.app``, ``bae.deployment``, ``bae.process``, ``bae.release``,
``bae.index``, ``bae.plan``, ``bae.generation``), never by ids kept
elsewhere. Each unit runs as user ``bae`` under tini with the plan's memory
(no swap beyond it), CPU and pids limits, no capabilities, no new privileges,
no Docker socket; a web unit's $PORT is published on 127.0.0.1 only.
This is the only module that touches the Docker SDK for units; the engine's
errors are translated here, once (``translate``).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import subprocess
import threading
from datetime import datetime
from typing import Callable, Iterator

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions
from docker.types import LogConfig, Mount
from docker.utils.socket import frames_iter

from bae.errors import BaeError, Gone, Unavailable
from bae.unit import CA_PATH, PORT, USER
from scheduler.firewall import MAC_PREFIX, Firewall, new_mac
from scheduler.runtime import Addresses, OneOff, UnitIdentity, UnitInfo, UnitSpec, Workload

__all__ = ["DockerRuntime", "translate", "ENGINE_ERRORS", "addon_hosts"]

log = logging.getLogger("bae.runtime")

# what the engine and the SDK under it raise: refused, gone, or not answering
ENGINE_ERRORS = (docker.errors.DockerException, docker.errors.StreamParseError, requests.exceptions.RequestException,
                 urllib3.exceptions.HTTPError, urllib3.exceptions.ProxySchemeUnsupported, OSError)
WORKER_SETTLE = 1.0  # a unit without a port counts as up once it has run this long


def translate(exc: BaseException, what: str, image_gone: BaeError | None = None) -> BaeError:
    """The engine's error ``exc`` while doing ``what`` as one of ours."""
    if isinstance(exc, BaeError):
        return exc
    if isinstance(exc, docker.errors.ImageNotFound) and image_gone is not None:
        return image_gone
    if isinstance(exc, docker.errors.NotFound):
        return Gone(f"{what} failed: it is gone ({exc.explanation or exc})")
    if isinstance(exc, docker.errors.APIError):
        return BaeError(f"{what} failed: {exc.explanation or exc}")
    return Unavailable(f"{what} failed: the Docker Engine did not answer ({exc.__class__.__name__})",
                       "Start it (make up starts dockerd).")


@contextlib.contextmanager
def _engine(what: str, image_gone: BaeError | None = None) -> Iterator[None]:
    try:
        yield
    except ENGINE_ERRORS as exc:
        raise translate(exc, what, image_gone) from None


def _quietly(what: str, call: Callable[[], object]) -> None:
    """An engine call whose failure is only logged: a unit that is gone already is what was wanted."""
    try:
        with _engine(what):
            call()
    except Gone:
        return
    except BaeError as exc:
        log.warning("%s", exc.message)


def _epoch(stamp: str | None) -> float | None:
    if not stamp or stamp.startswith("0001-"):  # Docker's zero time: never started or finished
        return None
    return datetime.fromisoformat(stamp).timestamp()  # RFC 3339, nanoseconds and Z included (3.11+)


def _stamp(raw: str) -> str:
    """Docker's RFC 3339 nanosecond stamp -> our ISO microseconds."""
    return datetime.fromisoformat(raw).isoformat(timespec="microseconds")  # Docker stamps are UTC ("Z")


class _Attached:
    """A one-off container's attach socket (``scheduler.runtime.Attached``)."""

    def __init__(self, api, cid: str, sock: socket.socket, tty: bool) -> None:
        self.api, self.cid, self.sock, self.tty = api, cid, sock, tty

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close_input(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def output(self) -> Iterator[tuple[int, bytes]]:
        try:
            if self.tty:
                while data := self.sock.recv(65536):
                    yield 1, data
                return
            yield from frames_iter(self.sock, tty=False)
        except OSError:
            return

    def resize(self, width: int, height: int) -> None:
        try:
            with _engine("resizing the terminal"):
                self.api.resize(self.cid, height=height, width=width)
        except BaeError:
            pass  # it ended meanwhile

    def kill(self) -> None:
        try:
            with _engine("stopping the one-off unit"):
                self.api.kill(self.cid)
        except BaeError:
            pass  # it ended by itself meanwhile

    def wait(self) -> int:
        with _engine("the one-off unit"):
            return int(self.api.wait(self.cid, timeout=30).get("StatusCode", 1))

    def oom(self) -> bool:
        try:
            with _engine("the one-off unit"):
                return bool(self.api.inspect_container(self.cid)["State"].get("OOMKilled"))
        except BaeError:
            return False


def _bridge_device(network: dict) -> str:
    """The host's interface of a bridge network (as the engine lists or inspects it)."""
    return (network.get("Options") or {}).get("com.docker.network.bridge.name") or f"br-{network['Id'][:12]}"


class DockerRuntime:
    """Starts, stops, lists and probes unit containers of one bae installation."""

    name = "docker"

    @staticmethod
    def applies(settings) -> bool:
        return settings.scheduler.runtime == "docker"

    @classmethod
    def create(cls, instance: str, settings, store, addresses: Addresses | None = None) -> "DockerRuntime":
        return cls(instance, addresses)

    def serve(self, settings) -> None:
        """Nothing to start besides the engine itself."""

    def shutdown(self) -> None:
        pass

    def __init__(self, instance: str, addresses: Addresses | None = None) -> None:
        self.instance = instance
        self._addresses = addresses
        try:
            self.api = docker.from_env(version="auto", timeout=120).api
        except ENGINE_ERRORS as exc:
            raise Unavailable(f"the Docker Engine does not answer ({exc.__class__.__name__})",
                              "Start it (make up starts dockerd).") from None
        self._inspected: dict[str, tuple[str, tuple]] = {}  # container id -> (state, inspected fields)
        self._network: str | None = None
        self._firewall: Firewall | None = None  # decided with the unit network
        self._macs: dict[str, str] = {}  # created, not yet started units with a MAC of bae's -> it
        self._announced: dict[str, str] = {}  # started units with a MAC of bae's -> their IP
        self._lock = threading.Lock()

    def _filters(self, **labels: str) -> dict:
        return {"label": [f"bae.platform={self.instance}", "bae.role=unit"] + [f"bae.{k}={v}" for k, v in labels.items()]}

    def list_units(self, **labels: str) -> list[UnitInfo]:
        """Every unit container (running or exited) of this installation, by label."""
        with _engine("listing units"):
            rows = self.api.containers(all=True, filters=self._filters(**labels))
        units = []
        for row in rows:
            labels_ = row.get("Labels") or {}
            try:
                info = UnitInfo(
                    id=row["Id"], name=(row.get("Names") or ["?"])[0].lstrip("/"), **UnitIdentity.from_labels(labels_),
                    # "created": between create and start; not a crash
                    running=row.get("State") in ("running", "created", "restarting"), status=row.get("State", "?"),
                )
            except (KeyError, ValueError):
                continue  # not one of ours after all
            networks = (row.get("NetworkSettings") or {}).get("Networks") or {}
            for net in networks.values():
                if net.get("IPAddress"):
                    info.ip = net["IPAddress"]
                    break
            if info.ip:
                info.address = f"{info.ip}:{PORT}"
            for port in row.get("Ports") or []:
                if port.get("PrivatePort") == PORT and port.get("PublicPort"):
                    info.host_port = port["PublicPort"]
            self._add_state(info)
            units.append(info)
        self.sweep(every=30.0)
        return units

    def _add_state(self, info: UnitInfo) -> None:
        """Start time, exit code and OOM flag (from inspect, cached per container while its state
        stays the same: a container restarted by hand has a new start time)."""
        with self._lock:
            status, cached = self._inspected.get(info.id, (None, None))
        if status != info.status:
            try:
                with _engine("inspecting a unit"):
                    state = self.api.inspect_container(info.id)["State"]
            except BaeError:  # gone since it was listed, or the engine went away: the next pass sees
                return
            cached = (_epoch(state.get("StartedAt")), _epoch(state.get("FinishedAt")),
                      state.get("ExitCode"), bool(state.get("OOMKilled")))
            with self._lock:
                if len(self._inspected) > 5000:
                    self._inspected.clear()
                self._inspected[info.id] = (info.status, cached)
        info.started_at, info.finished_at, code, info.oom = cached
        if not info.running:
            info.exit_code = code

    def _create(self, *, app: str, deployment: str, unit: str, release: int, workload: Workload, env: dict,
                labels: dict, host: dict | None = None, **container) -> str:
        """A container of a release image under the unit contract (not started; returns its id):
        user bae, ``env`` (the workload's, with the caller's additions) and the BAE_* and DYNO variables,
        the plan's limits without swap, no privileges or capabilities, the platform's CA bundle, the
        installation's isolated network."""
        w = workload
        env = {**env, "BAE_APP": app, "BAE_DEPLOYMENT": deployment, "BAE_UNIT": unit, "DYNO": unit,
               "BAE_RELEASE": f"v{release}"}
        mounts = [Mount(CA_PATH, w.ca_bundle, type="bind", read_only=True)] if w.ca_bundle else []
        image_gone = BaeError(f"the image {w.image} of v{release} is gone",
                              "Push again to rebuild it, or roll back to a release whose image exists.")
        network, bridge, firewall = self._placement(app)
        hosts = self.addon_hosts(app) if bridge else {}
        mac = new_mac() if firewall and hosts else None
        name = f"bae-{self.instance}-{app}-{deployment}-{unit}-v{release}-{secrets.token_hex(3)}"
        with _engine(f"starting {unit}", image_gone):
            host_config = self.api.create_host_config(
                mem_limit=w.memory, memswap_limit=w.memory, nano_cpus=int(w.cpu * 1e9), pids_limit=w.pids,
                security_opt=["no-new-privileges"], cap_drop=["ALL"], mounts=mounts, network_mode=network,
                extra_hosts=hosts or None, **(host or {}))
            cid = self.api.create_container(
                w.image, command=[w.command], user=USER, environment=env, host_config=host_config, name=name,
                labels={"bae.platform": self.instance, **labels}, hostname=unit.replace(".", "-"),
                mac_address=mac, **container,
            )["Id"]
        if mac:
            try:  # before the unit starts, so its first instruction reaches its add-ons
                firewall.open(name, mac, [(ip, bridge) for ip in hosts.values()])
            except BaseException:
                self.remove(cid)
                raise
            with self._lock:
                self._macs[cid] = mac
        return cid

    def start(self, spec: UnitSpec) -> str:
        """Create and start a unit of the formation; returns its container id."""
        env = spec.workload.env
        cid = self._create(
            app=spec.app, deployment=spec.deployment, unit=spec.unit, release=spec.release, workload=spec.workload,
            env={**env, "PORT": str(PORT)} if spec.web else env, labels={"bae.role": "unit", **spec.labels()},
            host={"port_bindings": {PORT: ("127.0.0.1", None)} if spec.web else None,
                  "log_config": LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
                  "restart_policy": {"Name": "no"}},
            ports=[PORT] if spec.web else None, stop_timeout=spec.stop_grace,
        )
        try:
            with _engine(f"starting {spec.unit}"):
                self.api.start(cid)
                self._announce(cid)
        except BaseException:
            self.remove(cid)  # never leave a created-but-dead unit behind
            raise
        return cid

    def _announce(self, cid: str) -> None:
        """A started unit with a MAC of bae's (see ``_create``): its address in the host's neighbour
        table, so the router and the health check reach it at once."""
        with self._lock:
            mac = self._macs.pop(cid, None)
        if mac is None or self._firewall is None:
            return
        net = (self.api.inspect_container(cid).get("NetworkSettings") or {}).get("Networks") or {}
        for found in net.values():
            if found.get("IPAddress") and (found.get("MacAddress") or "").lower() == mac:
                self._firewall.announce(found["IPAddress"], mac)
                with self._lock:
                    self._announced[cid] = found["IPAddress"]

    def _forget(self, cid: str) -> None:
        """A unit ``_announce`` announced stopped: its IP is free for the next container, whose MAC
        differs, so the host forgets the unit's (at once; ``sweep`` catches what this misses)."""
        with self._lock:
            ip = self._announced.pop(cid, None)
        if ip and self._firewall is not None:
            self._firewall.forget(ip)

    def addon_hosts(self, app: str) -> dict[str, str]:
        """Name -> fixed address of the app's add-ons, for the unit's /etc/hosts and its openings: from
        the add-ons' records when the platform gave them (``addresses``), else from their containers'
        labels (which miss an add-on while its container is re-created)."""
        if self._addresses is not None:
            return self._addresses(app)
        return addon_hosts(self.api, self.instance, app)

    def network(self, app: str) -> str:
        """The network ``app``'s units and one-off units join (see ``_placement``)."""
        return self._placement(app)[0]

    def _placement(self, app: str) -> tuple[str, str | None, Firewall | None]:
        """Where ``app``'s units live: (network, the bridge of the app's add-on network or None, the
        firewall that opens the way to the add-ons or None).

        Units live on the installation's unit network, with no traffic between them (the router
        reaches them from the host): Docker's default bridge when it has inter-container traffic off
        (`make up` starts dockerd with --icc=false); otherwise a bridge of the installation's own
        with it off (a user-defined network: each container start pays for Docker's embedded DNS).

        An app with add-ons has a network of its own for them (labelled ``bae.role=app-network``,
        made by addons.service). Its units stay on the unit network and reach the add-ons through
        per-unit firewall rules (scheduler.firewall): starting a container on a user-defined
        network costs Docker's embedded DNS (10 concurrent starts took 1.33x as long as on the default
        bridge here; with a firewall rule each, 1.06x: README, Benchmarks). Where bae cannot
        edit the host's firewall (a remote engine, no root), they join the app's network instead,
        where they reach its add-ons and each other, and other apps' units cannot.
        """
        try:
            own = self.api.networks(filters={"label": [f"bae.platform={self.instance}", "bae.role=app-network",
                                                       f"bae.app={app}"]})
        except ENGINE_ERRORS as exc:
            raise Unavailable(f"looking up the network of {app} failed: {exc}") from None
        units = self._unit_network()
        if not own:
            return units, None, None
        bridge = _bridge_device(own[0])
        if self._firewall is None:
            return own[0]["Name"], bridge, None
        return units, bridge, self._firewall

    def _unit_network(self) -> str:
        """The installation's unit network (made if missing); also decides whether bae may edit
        the host's firewall (``self._firewall``)."""
        with self._lock:
            if self._network is not None:
                return self._network
            name = f"bae-{self.instance}"
            try:
                with _engine("creating the unit network"):
                    bridge = self.api.inspect_network("bridge")
                    if (bridge.get("Options") or {}).get("com.docker.network.bridge.enable_icc") == "false":
                        name, found = "bridge", bridge
                    else:
                        if not any(n.get("Name") == name for n in self.api.networks(names=[name])):
                            self.api.create_network(
                                name, driver="bridge", labels={"bae.platform": self.instance},
                                options={"com.docker.network.bridge.enable_icc": "false"})
                        found = self.api.inspect_network(name)
            except BaeError as exc:
                if "already exists" not in exc.message:  # another process created it meanwhile
                    raise
                with _engine("looking up the unit network"):
                    found = self.api.inspect_network(name)
            device = _bridge_device(found)
            self._firewall = Firewall.detect(self.instance, self.api, device)
            self._network = name
        return name

    def stop(self, unit_id: str, grace: int) -> str:
        """SIGTERM, up to ``grace`` seconds, SIGKILL (the container stays until ``remove``); always this unit."""
        _quietly(f"stopping {unit_id[:12]}", lambda: self.api.stop(unit_id, timeout=grace))
        self._forget(unit_id)
        return unit_id

    def remove(self, unit_id: str) -> None:
        _quietly(f"removing {unit_id[:12]}", lambda: self.api.remove_container(unit_id, force=True))
        self._forget(unit_id)
        self.sweep(every=1.0)

    def sweep(self, every: float = 0.0) -> int:
        """Delete firewall openings of units that are gone and put back those running units lack
        (scheduler.firewall); at most once per ``every`` seconds. Also run by ``list_units`` (each
        reconcile pass) every 30 s."""
        if self._network is None:  # a `bae serve` that just started decides the firewall here too
            try:
                self._unit_network()
            except BaeError:
                return 0
        if self._firewall is None:
            return 0
        rows: list = []

        def names() -> tuple[set[str], set[str]]:
            with _engine("listing containers"):
                rows[:] = self.api.containers(all=True)
            macs = {(net.get("MacAddress") or "").lower() for row in rows
                    for net in ((row.get("NetworkSettings") or {}).get("Networks") or {}).values()}
            return {n.lstrip("/") for row in rows for n in row.get("Names") or []}, macs
        try:
            removed = self._firewall.sweep(names, every)
            if rows:  # the sweep ran (not skipped for ``every``)
                self._repair(rows)
            return removed
        except (BaeError, OSError, subprocess.SubprocessError) as exc:
            log.warning("sweeping firewall rules failed: %s", getattr(exc, "message", exc))
            return 0

    def _repair(self, rows: list[dict]) -> None:
        """The openings this installation's running units (and one-off units) with a MAC of bae's
        should have, from their apps' add-ons' records now, to ``Firewall.repair``."""
        wanted, targets = [], {}
        for row in rows:
            labels = row.get("Labels") or {}
            role = labels.get("bae.role")
            if labels.get("bae.platform") != self.instance or role not in ("unit", "oneoff") \
                    or row.get("State") != "running" or not row.get("Names"):
                continue
            nets = ((row.get("NetworkSettings") or {}).get("Networks") or {}).values()
            mine = [n["MacAddress"].lower() for n in nets if (n.get("MacAddress") or "").lower().startswith(MAC_PREFIX)]
            if not mine:
                continue
            app = labels.get("bae.app", "")
            if app not in targets:
                _network, bridge, _firewall = self._placement(app)
                targets[app] = [(ip, bridge) for ip in self.addon_hosts(app).values()] if bridge else []
            wanted.append((row["Names"][0].lstrip("/"), mine[0], targets[app]))
        self._firewall.repair(wanted)

    def remove_exited(self, unit_id: str) -> bool:
        running_again = False

        def call() -> None:
            nonlocal running_again
            try:
                self.api.remove_container(unit_id)  # not forced: the engine refuses a running container
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                running_again = True
        _quietly(f"removing {unit_id[:12]}", call)
        if not running_again:
            self._forget(unit_id)
        return not running_again

    @classmethod
    def is_up(cls, info: UnitInfo, age: float) -> bool:
        """A running web unit is up once it accepts connections on $PORT; any other once it ran a second."""
        return cls.probe(info) if info.web else age >= WORKER_SETTLE

    @staticmethod
    def probe(info: UnitInfo, timeout: float = 0.25) -> bool:
        """Does the unit accept TCP connections on $PORT (at its own address, not docker's proxy)?"""
        if not info.ip:
            return False
        try:
            with socket.create_connection((info.ip, PORT), timeout=timeout):
                return True
        except OSError:
            return False

    def watch(self, on_event: Callable[[str, str], None], stop: threading.Event) -> None:
        """Call ``on_event(action, container id)`` for container events of our units until ``stop`` is set."""
        while not stop.is_set():
            try:
                with _engine("following the engine's events"):
                    stream = self.api.events(decode=True, filters={"type": "container", "label": [
                        f"bae.platform={self.instance}", "bae.role=unit"]})
                    for event in stream:
                        if stop.is_set():
                            stream.close()
                            return
                        action, cid = event.get("Action", ""), event.get("id") or (event.get("Actor") or {}).get("ID", "")
                        if action in ("die", "destroy"):
                            self._forget(cid)  # a crash frees its IP too
                        on_event(action, cid)
            except BaeError as exc:  # dockerd restarted: reconnect
                log.info("docker events stream ended (%s); reconnecting", exc.message)
                stop.wait(1)

    def prune_nodes(self, repository: str, keep: set[str]) -> None:
        """Images on other machines: none (the deploy removes the old ones from this engine)."""

    def timeline(self, **labels: str) -> list[str]:
        """Units moved between machines: none on one machine (see SwarmRuntime.timeline)."""
        return []

    def logs(self, unit_id: str, tail: int = 20) -> str:
        try:
            with _engine("reading a unit's output"):
                return self.api.logs(unit_id, tail=tail).decode("utf-8", "replace")
        except BaeError:
            return ""

    def follow_logs(self, unit_id: str, since: float | None = None) -> Iterator[list[tuple[str, str]]]:
        kwargs: dict = {"stream": True, "follow": True, "timestamps": True}
        if since:
            kwargs["since"] = since
        with _engine(f"following the output of {unit_id[:12]}"):
            pending = b""
            for chunk in self.api.logs(unit_id, **kwargs):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                batch = []
                for raw in lines:
                    text = raw.decode("utf-8", "replace").rstrip("\r")
                    stamp, _, message = text.partition(" ")
                    try:
                        batch.append((_stamp(stamp), message))
                    except ValueError:
                        continue
                if batch:
                    yield batch

    @contextlib.contextmanager
    def attach(self, job: OneOff, unit: str, stdin: bool) -> Iterator[_Attached]:
        env = job.workload.env
        cid = self._create(
            app=job.app, deployment=job.deployment, unit=unit, release=job.release, workload=job.workload,
            env={"TERM": "xterm", **env} if job.tty else env, tty=job.tty, stdin_open=stdin,
            labels={"bae.role": "oneoff", "bae.app": job.app, "bae.deployment": job.deployment,
                    "bae.release": str(job.release)},
        )
        try:
            with _engine("the one-off unit"):
                sock = self.api.attach_socket(cid, params={"stdin": 1 if stdin else 0, "stdout": 1, "stderr": 1,
                                                           "stream": 1})
                self.api.start(cid)
            with self._lock:
                self._macs.pop(cid, None)  # the host does not talk to a one-off unit
            yield _Attached(self.api, cid, getattr(sock, "_sock", sock), job.tty)  # the raw socket under SocketIO
        finally:
            self.remove(cid)

    def remove_all_oneoffs(self) -> int:
        """One-off units (run, release phase) whose platform stopped while they ran."""
        with _engine("looking for one-off units"):
            rows = self.api.containers(all=True, filters={"label": [f"bae.platform={self.instance}", "bae.role=oneoff"]})
        for row in rows:
            self.remove(row["Id"])
        return len(rows)

    def remove_all(self, **labels: str) -> int:
        units = self.list_units(**labels)
        for info in units:
            self.remove(info.id)
        self.sweep()
        return len(units)


def addon_hosts(api, instance: str, app: str) -> dict[str, str]:
    """Name -> fixed address of ``app``'s add-on containers on this engine, from their labels
    (``bae.addon``, ``bae.ip``); empty when the engine does not answer. Both runtimes use it."""
    try:
        rows = api.containers(all=True, filters={"label": [
            f"bae.platform={instance}", "bae.role=addon", f"bae.app={app}"]})
    except ENGINE_ERRORS:
        return {}
    return {r["Labels"]["bae.addon"]: r["Labels"]["bae.ip"] for r in rows
            if (r.get("Labels") or {}).get("bae.ip") and r["Labels"].get("bae.addon")}
