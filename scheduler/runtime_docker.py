"""The local Docker Engine as the scheduler's runtime: units are containers.

Units are found by their labels (``bae.platform``, ``bae.role=unit``,
``bae.app``, ``bae.deployment``, ``bae.process``, ``bae.release``,
``bae.index``, ``bae.plan``, ``bae.generation``), never by ids kept
elsewhere. Each unit runs as user ``bae`` under tini with the plan's memory
(no swap beyond it), CPU and pids limits, no capabilities, no new privileges,
no Docker socket; a web unit's $PORT is published on 127.0.0.1 only.
docker's errors are translated to BaeError here.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import datetime

import docker
import docker.errors
import requests.exceptions
from docker.types import LogConfig, Mount

from bae.errors import BaeError, Unavailable
from buildpacks.stack import CA_PATH

__all__ = ["UnitSpec", "UnitInfo", "DockerRuntime", "PORT"]

log = logging.getLogger("bae.runtime")

PORT = 5000  # each unit has its own network namespace, so every web unit listens on the same $PORT
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)  # the engine refused or is gone
WORKER_SETTLE = 1.0  # a unit without a port counts as up once it has run this long


@dataclass
class UnitIdentity:
    """What a unit's container labels say: written by start(), read back by list_units().

    The labels are the only record of which units exist (never container ids in SQLite)."""
    app: str
    deployment: str
    process: str
    index: int
    release: int
    plan: str
    generation: int
    web: bool

    @property
    def unit(self) -> str:
        return f"{self.process}.{self.index}"

    def labels(self) -> dict[str, str]:
        return {"bae.app": self.app, "bae.deployment": self.deployment, "bae.process": self.process,
                "bae.index": str(self.index), "bae.release": str(self.release), "bae.plan": self.plan,
                "bae.generation": str(self.generation), "bae.web": "1" if self.web else "0"}

    @staticmethod
    def from_labels(labels: dict[str, str]) -> dict:
        """The identity fields from a container's labels; KeyError or ValueError when it is not a unit."""
        return {"app": labels["bae.app"], "deployment": labels["bae.deployment"], "process": labels["bae.process"],
                "index": int(labels["bae.index"]), "release": int(labels["bae.release"]),
                "plan": labels.get("bae.plan", ""), "generation": int(labels.get("bae.generation", "0")),
                "web": labels.get("bae.web") == "1"}


@dataclass
class UnitSpec(UnitIdentity):
    image: str
    command: str
    env: dict
    memory: str
    cpu: float
    pids: int
    stop_grace: int
    ca_bundle: str = ""


@dataclass
class UnitInfo(UnitIdentity):
    id: str
    name: str
    running: bool
    status: str
    ip: str | None = None
    host_port: int | None = None
    started_at: float | None = None  # epoch seconds
    finished_at: float | None = None
    exit_code: int | None = None
    oom: bool = False


def _epoch(stamp: str | None) -> float | None:
    if not stamp or stamp.startswith("0001-"):  # Docker's zero time: never started or finished
        return None
    return datetime.fromisoformat(stamp).timestamp()  # RFC 3339, nanoseconds and Z included (3.11+)


class DockerRuntime:
    """Starts, stops, lists and probes unit containers of one bae installation."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        try:
            self.client = docker.from_env(version="auto", timeout=120)
            self.api = self.client.api
        except ENGINE_ERRORS as exc:
            raise Unavailable(f"the Docker Engine does not answer ({exc.__class__.__name__})",
                              "Start it (make up starts dockerd).") from None
        self._inspected: dict[str, tuple] = {}
        self._network: str | None = None
        self._lock = threading.Lock()

    def _filters(self, **labels: str) -> dict:
        return {"label": [f"bae.platform={self.instance}", "bae.role=unit"] + [f"bae.{k}={v}" for k, v in labels.items()]}

    def list_units(self, **labels: str) -> list[UnitInfo]:
        """Every unit container (running or exited) of this installation, by label."""
        try:
            rows = self.api.containers(all=True, filters=self._filters(**labels))
        except ENGINE_ERRORS as exc:
            raise Unavailable(f"listing units failed: {exc}") from None
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
            for port in row.get("Ports") or []:
                if port.get("PrivatePort") == PORT and port.get("PublicPort"):
                    info.host_port = port["PublicPort"]
            self._add_state(info)
            units.append(info)
        return units

    def _add_state(self, info: UnitInfo) -> None:
        """Start time, exit code and OOM flag (from inspect, cached per container and state)."""
        key = (info.id, info.status)
        with self._lock:
            cached = self._inspected.get(key)
        if cached is None:
            try:
                state = self.api.inspect_container(info.id)["State"]
            except docker.errors.NotFound:
                return
            except ENGINE_ERRORS:
                return
            cached = (_epoch(state.get("StartedAt")), _epoch(state.get("FinishedAt")),
                      state.get("ExitCode"), bool(state.get("OOMKilled")))
            with self._lock:
                if len(self._inspected) > 5000:
                    self._inspected.clear()
                self._inspected[key] = cached
        info.started_at, info.finished_at, code, info.oom = cached
        if not info.running:
            info.exit_code = code

    def create(self, *, app: str, deployment: str, unit: str, release: int, image: str, command: str, env: dict,
               memory: str, cpu: float, pids: int, ca_bundle: str, labels: dict, host: dict | None = None,
               **container) -> str:
        """A container of a release image under the unit contract (not started; returns its id):
        user bae, the BAE_* and DYNO variables, the plan's limits without swap, no privileges or
        capabilities, the platform's CA bundle, the installation's isolated network."""
        env = {**env, "BAE_APP": app, "BAE_DEPLOYMENT": deployment, "BAE_UNIT": unit, "DYNO": unit,
               "BAE_RELEASE": f"v{release}"}
        mounts = [Mount(CA_PATH, ca_bundle, type="bind", read_only=True)] if ca_bundle else []
        try:
            host_config = self.api.create_host_config(
                mem_limit=memory, memswap_limit=memory, nano_cpus=int(cpu * 1e9), pids_limit=pids,
                security_opt=["no-new-privileges"], cap_drop=["ALL"], mounts=mounts, network_mode=self.network(app),
                **(host or {}))
            return self.api.create_container(
                image, command=[command], user="bae", environment=env, host_config=host_config,
                name=f"bae-{self.instance}-{app}-{deployment}-{unit}-v{release}-{secrets.token_hex(3)}",
                labels={"bae.platform": self.instance, **labels}, hostname=unit.replace(".", "-"), **container,
            )["Id"]
        except docker.errors.ImageNotFound:
            raise BaeError(f"the image {image} of v{release} is gone",
                           "Push again to rebuild it, or roll back to a release whose image exists.") from None
        except ENGINE_ERRORS as exc:
            raise BaeError(f"starting {unit} failed: {getattr(exc, 'explanation', None) or exc}") from None

    def start(self, spec: UnitSpec) -> str:
        """Create and start a unit of the formation; returns its container id."""
        cid = self.create(
            app=spec.app, deployment=spec.deployment, unit=spec.unit, release=spec.release, image=spec.image,
            command=spec.command, env={**spec.env, "PORT": str(PORT)} if spec.web else spec.env,
            memory=spec.memory, cpu=spec.cpu, pids=spec.pids, ca_bundle=spec.ca_bundle,
            labels={"bae.role": "unit", **spec.labels()},
            host={"port_bindings": {PORT: ("127.0.0.1", None)} if spec.web else None,
                  "log_config": LogConfig(type="json-file", config={"max-size": "10m", "max-file": "3"}),
                  "restart_policy": {"Name": "no"}},
            ports=[PORT] if spec.web else None, stop_timeout=spec.stop_grace,
        )
        try:
            self.api.start(cid)
        except Exception as exc:
            self.remove(cid)  # never leave a created-but-dead unit behind
            if isinstance(exc, ENGINE_ERRORS):
                raise BaeError(f"starting {spec.unit} failed: {getattr(exc, 'explanation', None) or exc}") from None
            raise
        return cid

    def network(self, app: str) -> str:
        """Where units live, with no traffic between them (the router reaches them from the host).

        When Docker's default bridge has inter-container traffic off (`make up` starts dockerd
        with --icc=false), that is the bridge; otherwise the installation gets its own bridge with
        it off. A user-defined network costs each container start a little (Docker's embedded DNS).
        """
        with self._lock:
            if self._network is not None:
                return self._network
            name = f"bae-{self.instance}"
            try:
                bridge = self.api.inspect_network("bridge")
                if (bridge.get("Options") or {}).get("com.docker.network.bridge.enable_icc") == "false":
                    self._network = "bridge"
                    return self._network
                if not any(n.get("Name") == name for n in self.api.networks(names=[name])):
                    self.api.create_network(
                        name, driver="bridge", labels={"bae.platform": self.instance},
                        options={"com.docker.network.bridge.enable_icc": "false"})
            except docker.errors.APIError as exc:
                if "already exists" not in str(exc):
                    raise BaeError(f"creating the unit network failed: {exc.explanation or exc}") from None
            self._network = name
        return name

    def stop(self, unit_id: str, grace: int) -> None:
        """SIGTERM, up to ``grace`` seconds, SIGKILL (the container stays until ``remove``)."""
        try:
            self.api.stop(unit_id, timeout=grace)
        except docker.errors.NotFound:
            return
        except ENGINE_ERRORS as exc:
            log.warning("stopping %s failed: %s", unit_id[:12], exc)

    def remove(self, unit_id: str) -> None:
        try:
            self.api.remove_container(unit_id, force=True)
        except docker.errors.NotFound:
            pass
        except ENGINE_ERRORS as exc:
            log.warning("removing %s failed: %s", unit_id[:12], exc)

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

    def watch(self, on_event, stop: threading.Event) -> None:
        """Call ``on_event(action, labels)`` for container events of our units until ``stop`` is set."""
        while not stop.is_set():
            try:
                stream = self.api.events(decode=True, filters={"type": "container", "label": [
                    f"bae.platform={self.instance}", "bae.role=unit"]})
                for event in stream:
                    if stop.is_set():
                        stream.close()
                        return
                    on_event(event.get("Action", ""), (event.get("Actor") or {}).get("Attributes") or {})
            except Exception as exc:  # dockerd restarted: reconnect
                log.info("docker events stream ended (%s); reconnecting", exc.__class__.__name__)
                stop.wait(1)

    def logs(self, unit_id: str, tail: int = 20) -> str:
        try:
            return self.api.logs(unit_id, tail=tail).decode("utf-8", "replace")
        except ENGINE_ERRORS:
            return ""

    def remove_all_oneoffs(self) -> int:
        """One-off units (run, release phase) whose platform stopped while they ran."""
        rows = self.api.containers(all=True, filters={"label": [f"bae.platform={self.instance}", "bae.role=oneoff"]})
        for row in rows:
            self.remove(row["Id"])
        return len(rows)

    def remove_all(self, **labels: str) -> int:
        units = self.list_units(**labels)
        for info in units:
            self.remove(info.id)
        return len(units)
