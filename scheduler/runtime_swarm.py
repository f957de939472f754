"""Docker Swarm as the scheduler's runtime: units run on the nodes of a cluster.

Selected by ``[scheduler] runtime = "swarm"`` (``SwarmRuntime.applies``); the host's
Docker Engine must be a Swarm manager. Each (deployment, process type) runs as a
replicated Swarm service per release, plan and restart generation, labelled like a
unit container (``bae.platform``, ``bae.role=unit``, ``bae.app`` ... ``bae.generation``);
its tasks are the units, the task slot the unit's index (``web.3`` is slot 3). The
reconcile loop still decides which units exist: a deploy, resize or restart starts a
new service whose tasks must accept connections before the router switches and the
old service's units stop (new tasks before old ones stop, never a Swarm rolling
update, which stops old tasks without waiting for the router); scaling changes the
replicas, and on scale-in Swarm picks the task that stops, whose slot is no longer
listed from that moment (out of the router at once; nginx retries idempotent
requests). Swarm keeps every task running somewhere: its restart policy restarts a
crashed unit at once, and when a node dies its tasks are re-created on another node
after the dispatcher heartbeat notices (``swarm.heartbeat``).

The unit contract as a service: user ``bae``, the image's tini as PID 1, the BAE_*
variables (``BAE_UNIT``/``DYNO`` and the hostname from the task slot, by Swarm's
templates), the plan's memory/CPU limits and reservations and pids limit, all
capabilities dropped, the platform's CA bundle as a Swarm config at CA_PATH,
``restart_policy`` any (so units keep running even while ``bae serve`` is down),
and the web port published in host mode on the node each task runs on (``ADDRESS:PORT``
of that node is where the router sends requests). Units run on worker nodes only:
a host-mode port on the manager would listen on all of the platform host's
interfaces. Images reach the nodes through the platform's registry
(``scheduler.registry``), referenced by digest; it takes only the platform's login, which
the engine client holds (``_login``) and sends with every service it creates, so that Swarm
keeps it in the service and hands it to the node of each task (``--with-registry-auth``):
a task Swarm re-places while ``bae serve`` is down still pulls.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterator

import docker
import docker.errors
from docker.types import (ConfigReference, ContainerSpec, EndpointSpec, Placement, Resources, RestartPolicy,
                          ServiceMode, TaskTemplate)

from bae.console import clock
from bae.errors import BaeError, Unavailable
from bae.unit import CA_PATH, ENTRYPOINT, PORT, USER
from scheduler.placement import pick_node
from scheduler.plans import memory_bytes
from scheduler.runtime import Addresses, OneOff, UnitIdentity, UnitInfo, UnitSpec, Workload
from scheduler.runtime_docker import ENGINE_ERRORS, addon_hosts, translate

__all__ = ["SwarmRuntime", "NodeInfo", "Lost"]

log = logging.getLogger("bae.runtime")

WORKER_SETTLE = 1.0
GATHER = 0.05  # seconds a start waits for the other starts of its pass: one service change for all
# How long a crash stays the unit's state once Swarm's restart of its slot runs, unless the loop is done
# with it sooner (remove_exited): long enough for any pass to count it, short enough that another
# process (`ps` elsewhere, a benchmark) or a restarted `bae serve` does not see an old crash for ever
CRASH_SHOWN = 30.0
# The unit's entrypoint with util-linux's setpriv (in every stack) between tini and the launcher: the
# manager's Engine (20.10, API 1.41) stores no NoNewPrivileges in a service spec (Engine API 1.44 added it),
# so the platform sets the flag itself; it is inherited by every process of the unit and cannot be unset.
UNIT_ENTRYPOINT = [*ENTRYPOINT[:3], "/usr/bin/setpriv", "--no-new-privs", "--", *ENTRYPOINT[3:]]
# The router's own view of the nodes: every REACH_EVERY seconds the runtime connects to (up to 3 of) the
# published ports of each node's running web units; a node none of whose units could be connected to
# (timed out or unreachable: a refusal means its host answers) REACH_MISSES rounds in a row is
# "unreachable" until one answers again. Its units are in transit at once, out of the router, seconds
# before the dispatcher heartbeat declares the node down (then Swarm re-places them).
REACH_EVERY = 0.5
REACH_TIMEOUT = 0.5
REACH_MISSES = 2
ALIVE = {"new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"}
EXITED = {"complete", "failed", "rejected", "shutdown"}


@dataclass
class NodeInfo:
    """One machine of the cluster, as `nodes` shows it."""
    id: str
    hostname: str
    role: str
    state: str  # ready, down, unknown
    availability: str  # active, pause, drain
    address: str
    labels: dict
    memory: int  # bytes
    cpus: float
    leader: bool = False
    os: str = ""  # node.platform.os / node.platform.arch, for placement constraints
    arch: str = ""


@dataclass
class Lost:
    """A unit whose task ended with its node: the failover timeline's raw material."""
    app: str
    deployment: str
    unit: str
    node: str
    lost_at: float  # epoch: when the manager gave the task up
    running_on: str | None
    running_at: float | None

    def text(self) -> str:
        where = f", running on {self.running_on} at {clock(self.running_at)}" if self.running_on else ", not running yet"
        return f"{self.unit} lost with node {self.node} at {clock(self.lost_at)}{where}"


@dataclass
class _Seen:
    task: str
    node: str
    node_id: str
    running: bool
    lost: tuple[str, float] | None  # (node, when) while its replacement is not running yet


class _Attached:
    """A one-off unit's task: its output (task logs) until it ends, and its exit code (``Attached``)."""

    def __init__(self, runtime: "SwarmRuntime", service: str) -> None:
        self.runtime, self.service = runtime, service
        self.task: dict | None = None
        self.failure: BaeError | None = None  # it never ran: no node took it within the boot timeout

    def send(self, data: bytes) -> None:
        pass  # Swarm tasks take no input (see SwarmRuntime.attach)

    def close_input(self) -> None:
        pass

    def resize(self, width: int, height: int) -> None:
        pass

    def _state(self) -> dict | None:
        tasks = self.runtime._tasks([{"ID": self.service}]).get(self.service) or []
        self.task = tasks[-1] if tasks else None
        return self.task

    def _ended(self) -> bool:
        task = self._state()
        return bool(task) and task["Status"]["State"] in ("complete", "failed", "rejected", "shutdown", "orphaned")

    def output(self) -> Iterator[tuple[int, bytes]]:
        """Task logs as they come (both streams as stdout: Swarm's task logs mix them), until the task ended."""
        import queue

        limit = self.runtime.boot_timeout
        deadline = time.monotonic() + limit
        while not (self._state() and self.task["Status"]["State"] in ("running", *EXITED)):
            if time.monotonic() > deadline:  # pending (no node fits: its plan, the nodes' availability)
                self.failure = _not_started(self.task, limit)
                self.runtime.remove(self.service)
                return
            time.sleep(0.2)  # waiting for a node, pulling the image on its node
        chunks: queue.Queue = queue.Queue()

        def pump() -> None:
            try:
                for chunk in self.runtime._task_logs(f"{self.service}/{self.task['ID']}", follow=1):
                    chunks.put(chunk)
            except Exception:  # the task or its node went away
                pass
            chunks.put(None)

        threading.Thread(target=pump, daemon=True).start()
        quiet_since = None
        while True:
            try:
                chunk = chunks.get(timeout=0.2)
            except queue.Empty:
                if self._ended():  # the log stream of an ended task may stay open: stop once it is quiet
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > 0.5:
                        return
                continue
            if chunk is None:
                return
            quiet_since = None
            yield 1, chunk

    def kill(self) -> None:
        self.runtime.remove(self.service)

    def wait(self) -> int:
        if self.failure is not None:
            raise self.failure
        deadline = time.monotonic() + 30
        while not self._ended():
            if time.monotonic() > deadline:
                raise BaeError("the one-off unit did not report its end")
            time.sleep(0.2)
        status = self.task["Status"]
        if status["State"] == "rejected":
            raise BaeError(f"the one-off unit could not start: {status.get('Err', '?')}")
        return int((status.get("ContainerStatus") or {}).get("ExitCode", 0 if status["State"] == "complete" else 1))

    def oom(self) -> bool:
        return False  # a task's status does not say (its exit code does: 137)


def _not_started(task: dict | None, limit: float) -> BaeError:
    """What a one-off unit that no node ran within ``limit`` seconds says: Swarm's own words on its task."""
    status = (task or {}).get("Status") or {}
    words = "; ".join(dict.fromkeys(w for w in (status.get("Err"), status.get("Message")) if w)) or "no task yet"
    return BaeError(f"the one-off unit did not start within {limit:.0f} s (scheduler.boot_timeout): its task is "
                    f"{status.get('State', 'not made')} ({words})",
                    "No worker node can run it now: see `nodes` (state, availability, free memory and CPU); "
                    "a quarter of the plan's memory must be free on a ready, active worker node.")


class SwarmRuntime:
    """Units as the tasks of one Swarm service per process type, on the cluster the host's engine manages."""

    name = "swarm"

    @staticmethod
    def applies(settings) -> bool:
        return settings.scheduler.runtime == "swarm"

    @classmethod
    def create(cls, instance: str, settings, store, addresses: Addresses | None = None) -> "SwarmRuntime":
        """The runtime of this installation: its registry (not started: `bae serve` starts it) and
        the process types' placement constraints from the store."""
        from scheduler.registry import Registry

        runtime = cls(instance, placement=store.placement)
        runtime._addresses = addresses
        runtime.boot_timeout = settings.scheduler.boot_timeout  # how long a one-off unit may wait for a node
        swarm = settings.swarm
        directory = swarm.registry_dir or str(settings.data / "registry")
        runtime.registry = Registry(directory, swarm.advertise_addr or runtime.address, swarm.registry_port)
        return runtime

    def serve(self, settings) -> None:
        """What `bae serve` starts for this runtime: the registry (adopted if it runs) and its watch, the
        login to it, the heartbeat it is told, and the probe of the nodes' units the router needs to reach."""
        self.set_heartbeat(settings.swarm.heartbeat)
        self.registry.start()
        self._login()
        threading.Thread(target=self.registry.watch, args=(self._stopped,), name="registry-watch",
                         daemon=True).start()
        threading.Thread(target=self._reachability, name="swarm-reach", daemon=True).start()

    def shutdown(self) -> None:
        """The probe and the registry's watch stop; the registry keeps running, as the units do (a task
        Swarm re-places still pulls its image): the next `bae serve` adopts it."""
        self._stopped.set()

    def __init__(self, instance: str, registry=None,
                 placement: Callable[[str, str, str], list[str]] | None = None) -> None:
        self.instance = instance
        self.registry = registry
        self.placement = placement or (lambda app, deployment, process: [])
        self._addresses: Addresses | None = None  # add-ons' addresses from their records (create)
        self.boot_timeout: float = 60.0
        try:
            self.client = docker.from_env(version="auto", timeout=120)
            self.api = self.client.api
            state = self.api.info()["Swarm"]
        except ENGINE_ERRORS as exc:
            raise Unavailable(f"the Docker Engine does not answer ({exc.__class__.__name__})",
                              "Start it (make up starts dockerd).") from None
        if state.get("LocalNodeState") != "active" or not state.get("ControlAvailable"):
            raise Unavailable("this Docker Engine is not a Swarm manager (scheduler.runtime is \"swarm\")",
                              "Run `docker swarm init --advertise-addr ADDRESS` on this host, or set "
                              "scheduler.runtime = \"docker\".")
        self.address = state.get("NodeAddr", "")
        self._lock = threading.Lock()
        self._images: dict[str, str] = {}  # local image id -> registry reference by digest
        self._pushing = threading.Lock()  # one push at a time: units of a release start together
        self._nodes: tuple[float, dict[str, NodeInfo]] = (0.0, {})
        self._ca_config: tuple[str, str] | None = None
        self._logged_in = ""  # the password the engine client holds the registry's login with (``_login``)
        self.report: Callable[[str, str, str], None] | None = None  # (app, deployment, text): the failover timeline
        # one change of a service's replicas at a time, and no unit list while Swarm's choice of the task a
        # scale-in stops is not known yet (the loop would miss both units: the one it asked to stop, and
        # the one that stops)
        self._scaling = threading.RLock()
        self._wanted: dict[tuple, set[int]] = {}  # (app, deployment, process, release, plan, generation) -> indexes
        self._starting: set[tuple[str, int]] = set()  # (service id, slot) start() has not returned yet
        self._acked: set[str] = set()  # ids of exited tasks the loop is done with (remove_exited)
        self._last: dict[tuple[str, int], _Seen] = {}  # (service id, slot) -> its task when last listed
        self._targets: dict[str, set[tuple[str, int]]] = {}  # node id -> its running web units' addresses
        self._unreachable: set[str] = set()  # ready nodes whose units the router cannot connect to
        self._stopped = threading.Event()
        self._on_event: Callable[[str, str], None] | None = None  # wakes the loop (set by watch)

    # -- the cluster --------------------------------------------------------------

    def set_heartbeat(self, seconds: float) -> None:
        """The dispatcher heartbeat: a node missing about three of them is declared down."""
        try:
            spec = self.api.inspect_swarm()
            dispatcher = spec["Spec"].get("Dispatcher") or {}
            wanted = int(seconds * 1e9)
            if dispatcher.get("HeartbeatPeriod") != wanted:
                self.api.update_swarm(version=spec["Version"]["Index"],
                                      swarm_spec=self.api.create_swarm_spec(dispatcher_heartbeat_period=wanted))
                log.info("swarm dispatcher heartbeat set to %.1f s", seconds)
        except ENGINE_ERRORS as exc:
            raise BaeError(f"setting the swarm heartbeat failed: {exc}") from None

    def nodes(self, fresh: bool = False) -> dict[str, NodeInfo]:
        """Nodes by id (cached for a second: every pass lists them)."""
        with self._lock:
            at, cached = self._nodes
        if not fresh and time.monotonic() - at < 1.0:
            return cached
        try:
            rows = self.api.nodes()
        except ENGINE_ERRORS as exc:
            raise Unavailable(f"listing the swarm's nodes failed: {exc}") from None
        nodes = {}
        for row in rows:
            spec, desc, status = row.get("Spec", {}), row.get("Description", {}), row.get("Status", {})
            res = desc.get("Resources", {})
            nodes[row["ID"]] = NodeInfo(
                id=row["ID"], hostname=desc.get("Hostname", "?"), role=spec.get("Role", "?"),
                state=status.get("State", "?"), availability=spec.get("Availability", "?"),
                address=(row.get("ManagerStatus") or {}).get("Addr", "").rsplit(":", 1)[0]
                if spec.get("Role") == "manager" and status.get("Addr") in ("", "0.0.0.0") else status.get("Addr", ""),
                labels=spec.get("Labels") or {}, memory=res.get("MemoryBytes", 0), cpus=res.get("NanoCPUs", 0) / 1e9,
                leader=bool((row.get("ManagerStatus") or {}).get("Leader")),
                os=(desc.get("Platform") or {}).get("OS", ""), arch=(desc.get("Platform") or {}).get("Architecture", ""))
        with self._lock:
            # a node Swarm declared down (or that left) is Swarm's again: it comes back unmarked
            self._unreachable &= {i for i, n in nodes.items() if n.state == "ready"}
            for node_id in self._unreachable:
                nodes[node_id].state = "unreachable"
            self._nodes = (time.monotonic(), nodes)
        return nodes

    def _reachability(self) -> None:
        """Mark ready nodes whose units the router cannot connect to (see REACH_EVERY), and wake the loop."""
        from concurrent.futures import ThreadPoolExecutor

        misses: dict[str, int] = {}  # node id -> probe rounds in a row without an answer
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="swarm-reach") as pool:
            while not self._stopped.wait(REACH_EVERY):
                changed = self._reach_round(pool, misses)
                for node, what in changed:
                    with self._lock:
                        self._nodes = (0.0, self._nodes[1])  # the next pass lists the nodes afresh
                        name = self._nodes[1].get(node)
                    log.warning("node %s %s", name.hostname if name else node[:12], what)
                if changed and self._on_event:
                    self._on_event("die", "")

    def _reach_round(self, pool, misses: dict[str, int]) -> list[tuple[str, str]]:
        """One probe of every node Swarm sees as up; the nodes that became (un)reachable, and how."""
        with self._lock:  # a node Swarm declared down is Swarm's business
            known = self._nodes[1]
            targets = {node: sorted(addrs)[:3] for node, addrs in self._targets.items()
                       if addrs and node in known and known[node].state in ("ready", "unreachable")}
        for node in set(misses) - set(targets):
            del misses[node]
        answers = {node: [pool.submit(_answers, addr) for addr in addrs] for node, addrs in targets.items()}
        changed = []
        for node, futures in answers.items():
            answered = any(f.result() for f in futures)
            misses[node] = 0 if answered else misses.get(node, 0) + 1
            with self._lock:
                was = node in self._unreachable
                if answered:
                    self._unreachable.discard(node)
                elif misses[node] >= REACH_MISSES:
                    self._unreachable.add(node)
                now = node in self._unreachable
            if was != now:
                changed.append((node, "does not answer: its units are out of the router until it does or Swarm "
                                      "declares it down" if now else "answers again"))
        return changed

    def node(self, name: str) -> NodeInfo:
        """A node by exact hostname, exact id or unique id prefix, or a BaeError naming the matches (an
        ambiguous prefix) or the known nodes (an empty or unknown name): see placement.pick_node."""
        return pick_node(self.nodes(fresh=True).values(), name)

    def update_node(self, name: str, availability: str | None = None, labels: dict[str, str | None] | None = None) -> NodeInfo:
        """Change a node's availability (active, drain, pause) or labels (None removes one)."""
        node = self.node(name)
        try:
            row = self.api.inspect_node(node.id)
            spec = dict(row["Spec"])
            if availability:
                spec["Availability"] = availability
            if labels:
                merged = dict(spec.get("Labels") or {})
                for key, value in labels.items():
                    if value is None:
                        merged.pop(key, None)
                    else:
                        merged[key] = value
                spec["Labels"] = merged
            self.api.update_node(node.id, row["Version"]["Index"], spec)
        except ENGINE_ERRORS as exc:
            raise BaeError(f"updating node {name} failed: {getattr(exc, 'explanation', None) or exc}") from None
        return self.node(node.id)

    def join_command(self) -> str:
        try:
            tokens = self.api.inspect_swarm()["JoinTokens"]
        except ENGINE_ERRORS as exc:
            raise BaeError(f"reading the swarm's join token failed: {exc}") from None
        return f"docker swarm join --token {tokens['Worker']} {self.address}:2377"

    # -- images -------------------------------------------------------------------

    def _login(self) -> dict | None:
        """The platform's registry login, given once to the engine client (docker-py's ``login``, checked
        by the engine against the registry): ``create_service`` then sends it (X-Registry-Auth) with every
        service whose image is in the registry, Swarm keeps it in the service's spec (a scale keeps it) and
        hands it to the node of each task. Returns it for pushes; None without a platform registry."""
        if self.registry is None:
            return None
        creds = self.registry.credentials()
        with self._lock:
            if self._logged_in == creds["password"]:
                return creds
        try:
            self.api.login(creds["username"], creds["password"], registry=self.registry.name, reauth=True)
        except docker.errors.APIError as exc:
            raise Unavailable(f"logging in to the platform's image registry on {self.registry.name} failed: "
                              f"{exc.explanation or exc.status_code}",
                              "Check that the registry runs (bae serve starts it; see its log).") from None
        except ENGINE_ERRORS as exc:
            raise Unavailable(f"the Docker Engine does not answer ({exc.__class__.__name__})") from None
        with self._lock:
            self._logged_in = creds["password"]
        return creds

    def image_ref(self, image: str) -> str:
        """``image`` (a local tag or id) pushed to the platform's registry: REGISTRY/REPO@sha256:..."""
        if self.registry is None:
            return image  # the operator's nodes pull it themselves (a registry they all reach)
        try:
            local = self.api.inspect_image(image)
        except docker.errors.ImageNotFound:
            raise BaeError(f"the image {image} is gone",
                           "Push again to rebuild it, or roll back to a release whose image exists.") from None
        except ENGINE_ERRORS as exc:
            raise BaeError(f"looking up the image {image} failed: {exc}") from None
        with self._lock:
            ref = self._images.get(local["Id"])
        if ref:
            return ref
        # The units of a release start at once and each needs the reference: pushing the same image
        # (and removing its push tag) from several threads made the registry answer 500. One pushes;
        # the others wait and take its reference.
        with self._pushing:
            with self._lock:
                ref = self._images.get(local["Id"])
            return ref or self._push(image, local["Id"])

    def _push(self, image: str, image_id: str) -> str:
        """Push the local image ``image_id`` (named ``image``) to the platform's registry; its reference by digest."""
        repo = image.rsplit(":", 1)[0] if "/" in image and ":" in image.rsplit("/", 1)[-1] else image
        if repo.startswith("sha256"):
            repo = "bae/" + self.instance + "/image"
        target = f"{self.registry.name}/{repo}"
        tag = _push_tag(image_id)
        digest = None
        started = time.monotonic()
        auth = self._login()
        try:
            self.api.tag(image_id, target, tag)
            for chunk in self.api.push(target, tag, stream=True, decode=True, auth_config=auth):
                if "error" in chunk:
                    raise BaeError(f"pushing {image} to the platform's registry failed: {chunk['error']}",
                                   "Check that the registry runs (see `bae serve`'s log).")
                digest = (chunk.get("aux") or {}).get("Digest") or digest
        except ENGINE_ERRORS as exc:
            raise BaeError(f"pushing {image} to the platform's registry failed: {exc}") from None
        finally:
            try:
                self.api.remove_image(f"{target}:{tag}", noprune=True)
            except ENGINE_ERRORS:
                pass
        if not digest:
            raise BaeError(f"the registry gave no digest for {image}")
        ref = f"{target}@{digest}"
        log.info("image %s pushed as %s in %.1f s", image, ref, time.monotonic() - started)
        with self._lock:
            self._images[image_id] = ref
        return ref

    def prune_nodes(self, repository: str, keep: set[str]) -> None:
        """Remove a deployment's release images from the worker nodes, as ``remove_images`` does on the
        manager: every image pulled from ``repository`` in the platform's registry except those of the
        ``keep`` tags (the releases kept for rollback) and those a container on the node still uses
        (retried for a minute: the old units stop after a deploy). A global job on the workers talks to
        each node's engine through its socket; it runs in the background and is removed once done.
        Then the platform's registry drops the other images of ``repository`` too (``_prune_registry``)."""
        if self.registry is None:
            return
        ids, image, found = set(), None, None
        for tag in sorted(keep):
            try:
                local = self.api.inspect_image(tag)["Id"]
            except ENGINE_ERRORS:
                continue
            ids.add(local)
            found = found or tag
            with self._lock:
                image = image or self._images.get(local)  # one that is in the registry already
        try:
            image = image or (self.image_ref(found) if found else None)
        except BaeError as exc:
            log.warning("pruning images on the nodes: %s", exc.message)
            return
        if image is None:
            return
        service = self._prune_job(image, repository, ids)

        def reap() -> None:
            if service:
                self._reap(service, repository)
            self._prune_registry(repository, ids)  # after the job: its nodes may have pulled its image

        threading.Thread(target=reap, name="prune-nodes", daemon=True).start()

    def _prune_job(self, image: str, repository: str, ids: set[str]) -> str | None:
        name = f"bae-{self.instance}-prune-{secrets.token_hex(3)}"
        container = ContainerSpec(image, command=["/usr/bin/python3", "-I", "-S", "-c", PRUNE_SCRIPT,
                                                  f"{self.registry.name}/{repository}@", ",".join(sorted(ids)), "60"],
                                  user="0", mounts=["/var/run/docker.sock:/var/run/docker.sock:rw"], cap_drop=["ALL"],
                                  labels={"bae.platform": self.instance, "bae.role": "prune"})
        template = TaskTemplate(container, restart_policy=RestartPolicy(condition="none"),
                                resources=Resources(mem_limit=64 * 2**20, cpu_limit=int(0.25e9)),
                                placement=Placement(constraints=["node.role==worker"]))
        try:
            self._login()  # its nodes pull the release image with the platform's login
            return self.api.create_service(template, name=name, mode=ServiceMode("global-job"),
                                           labels={"bae.platform": self.instance, "bae.role": "prune"})["ID"]
        except (BaeError, *ENGINE_ERRORS) as exc:
            log.warning("pruning images on the nodes failed: %s", getattr(exc, "message", None)
                        or getattr(exc, "explanation", None) or exc)
            return None

    def _reap(self, service: str, repository: str) -> None:
        """Wait for the prune job's end (at most 3 minutes), log what it did, remove it."""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                tasks = self.api.tasks(filters={"service": service})
            except ENGINE_ERRORS:
                break
            if tasks and all(t["Status"]["State"] in (*EXITED, "orphaned") for t in tasks):
                break
            time.sleep(1)
        try:
            text = b"".join(self.api.service_logs(service, stdout=True, stderr=True)).decode("utf-8", "replace")
        except ENGINE_ERRORS:
            text = ""
        for line in text.splitlines()[-10:]:
            log.info("pruning %s on the nodes: %s", repository, line)
        self.remove(service)

    def _prune_registry(self, repository: str, ids: set[str]) -> None:
        """Delete ``repository``'s images other than those of ``ids`` (the kept releases' local images)
        from the platform's registry, never one a service of this installation still names, then let
        ``registry garbage-collect`` remove the blobs left unreferenced, holding the push lock (no push
        runs meanwhile)."""
        if not ids:
            return  # no kept image found here: nothing tells which registry images are old
        try:
            services = self.api.services(filters={"label": f"bae.platform={self.instance}"})
        except ENGINE_ERRORS as exc:
            log.warning("pruning the image registry: listing services failed: %s", exc)
            return
        named = {s["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@", 1)[1] for s in services
                 if "@" in s["Spec"]["TaskTemplate"]["ContainerSpec"].get("Image", "")}
        try:
            with self._pushing:
                deleted = self.registry.delete_images(repository, {_push_tag(i) for i in ids}, named)
                summary = self.registry.collect_garbage() if deleted else ""
        except BaeError as exc:
            log.warning("pruning the image registry: %s", exc.message)
            return
        prefix = f"{self.registry.name}/{repository}@"
        with self._lock:  # a deleted image is pushed again if it is ever needed
            self._images = {k: v for k, v in self._images.items() if k in ids or not v.startswith(prefix)}
        if deleted:
            log.info("image registry: %d old image(s) of %s deleted; garbage collection: %s", deleted, repository,
                     summary or "not run (the registry was started by another process)")

    def _ca(self, path: str) -> list[ConfigReference]:
        """The platform's CA bundle as a Swarm config (nodes get it from the manager)."""
        if not path:
            return []
        try:
            data = open(path, "rb").read()
        except OSError as exc:
            raise BaeError(f"reading the CA bundle {path} failed: {exc.strerror}",
                           "Set build.ca_bundle to a readable file, or to \"\" for the stack's own.") from None
        name = f"bae-{self.instance}-ca-{hashlib.sha256(data).hexdigest()[:12]}"
        with self._lock:
            config_id = self._ca_config if self._ca_config and self._ca_config[0] == name else None
        if config_id is None:
            try:
                found = self.api.configs(filters={"name": name})
                found = [c for c in found if c["Spec"]["Name"] == name]
                cid = found[0]["ID"] if found else self.api.create_config(
                    name, data, labels={"bae.platform": self.instance})["ID"]
            except docker.errors.APIError as exc:
                if "already exists" not in str(exc):
                    raise BaeError(f"storing the CA bundle in the swarm failed: {exc.explanation or exc}") from None
                cid = [c for c in self.api.configs(filters={"name": name}) if c["Spec"]["Name"] == name][0]["ID"]
            with self._lock:
                self._ca_config = (name, cid)
            config_id = (name, cid)
        return [ConfigReference(config_id[1], config_id[0], filename=CA_PATH, uid="0", gid="0", mode=0o444)]

    # -- units --------------------------------------------------------------------

    def _filters(self, **labels: str) -> dict:
        return {"label": [f"bae.platform={self.instance}", "bae.role=unit"] + [f"bae.{k}={v}" for k, v in labels.items()]}

    def _services(self, **labels: str) -> list[dict]:
        try:
            return self.api.services(filters=self._filters(**labels))
        except ENGINE_ERRORS as exc:
            raise Unavailable(f"listing units failed: {exc}") from None

    def _tasks(self, services: list[dict]) -> dict[str, list[dict]]:
        if not services:
            return {}
        ids = {s["ID"] for s in services}
        try:
            try:
                rows = self.api.tasks(filters={"service": sorted(ids)})
            except docker.errors.NotFound:  # one was removed since the services were listed: take all tasks
                rows = [t for t in self.api.tasks() if t.get("ServiceID") in ids]
        except ENGINE_ERRORS as exc:
            raise Unavailable(f"listing unit tasks failed: {exc}") from None
        by_service: dict[str, list[dict]] = {}
        for row in rows:
            by_service.setdefault(row["ServiceID"], []).append(row)
        for tasks in by_service.values():
            tasks.sort(key=lambda t: t.get("CreatedAt", ""))
        return by_service

    def list_units(self, **labels: str) -> list[UnitInfo]:
        """Every unit of this installation: one per task slot of each process type's service, its
        current task (see _current). A slot whose newest task is no longer desired (Swarm stops it on
        scale-in, or the service is being removed) is not listed: out of the router at once."""
        with self._scaling:
            services = self._services(**labels)
            tasks = self._tasks(services)
        nodes = self.nodes()
        units = []
        targets: dict[str, set[tuple[str, int]]] = {}
        with self._lock:
            starting, acked = set(self._starting), set(self._acked)
        for service in services:
            try:
                identity = UnitIdentity.from_labels(service["Spec"].get("Labels") or {})
            except (KeyError, ValueError):
                continue
            slots = _slots(tasks.get(service["ID"], []), acked)
            # nodes:drain pauses a node first: a service with a unit there counts as outdated, so the
            # loop starts a new service for the type elsewhere and stops this one's units once those are
            # up (a plain Swarm drain would stop them first; one task of a service cannot be moved alone)
            retired = any(_on_paused(rows, nodes) for rows in slots.values())
            for slot, rows in sorted(slots.items()):
                if (service["ID"], slot) in starting or not rows:
                    continue  # start() has not returned yet: the loop still counts it as its placeholder
                task, crashed = self._current(rows, nodes)
                unit = {**identity, "index": slot}
                if task and not crashed and (address := _published(task, nodes)):
                    targets.setdefault(task.get("NodeID", ""), set()).add(address)
                self._observe(service, unit, task, nodes)
                info = self._info(service, unit, task, crashed, nodes)
                if retired and info.running:
                    info.generation = -1
                units.append(info)
        if not labels:  # the whole installation's units: what the reachability probe connects to
            with self._lock:
                self._targets = targets
        return units

    def _current(self, tasks: list[dict], nodes: dict[str, NodeInfo]) -> tuple[dict | None, bool]:
        """The task that stands for a unit (a slot) now, and whether the unit crashed.

        A task that exited by itself (non-zero or zero, on a node that is up) is a crash the
        loop must see, even if Swarm already restarted the slot (until the loop removed the
        crashed unit: ``remove_exited``); a task lost with its node (down, or drained) is not:
        the newest task, the one Swarm re-placed, stands for the unit.
        """
        if not tasks:
            return None, False
        newest = tasks[-1]
        if _exited(newest, nodes):
            return newest, True
        if len(tasks) > 1 and _crash_restarted(tasks[-2], newest, nodes) and not _settled(newest):
            return tasks[-2], True  # Swarm already restarted it: still a crash the loop must see
        return tasks[-1], False

    def _info(self, service: dict, identity: dict, task: dict | None, crashed: bool,
              nodes: dict[str, NodeInfo]) -> UnitInfo:
        status = (task or {}).get("Status", {})
        state = status.get("State", "new")
        node = nodes.get((task or {}).get("NodeID", ""))
        task_id = (task or {}).get("ID", "")
        if not crashed and state in ALIVE and node is not None and node.state != "ready":
            # its node is down (or not heard from): Swarm re-places the task (at once, restart delay 0).
            # Until the new task exists the unit is in transit: running as far as the loop is concerned
            # (no crash, no second replacement racing Swarm's, no backoff), but a new unit without a
            # task, so it is neither routed nor up until its new task accepts connections
            task_id, state, node = f"@{identity['index']}", "moving", None
        # the id names the task too: a unit re-placed on another node is a new unit to the loop (not up
        # until it accepts connections there), while scaling acts on the service
        info = UnitInfo(id=f"{service['ID']}/{task_id}", name=service["Spec"]["Name"], **identity,
                        running=not crashed and state in (*ALIVE, "moving"), status=state)
        info.node = node.hostname if node else ""
        container = status.get("ContainerStatus") or {}
        if not info.running:
            info.exit_code = container.get("ExitCode")
            info.finished_at = _epoch(status.get("Timestamp"))
        if state == "running":
            info.started_at = _epoch(status.get("Timestamp"))
            if node:
                info.ip = node.address
            info.host_port = _web_port(status)
            if info.ip and info.host_port:
                info.address = f"{info.ip}:{info.host_port}"
        return info

    def _shape_service(self, spec: UnitSpec) -> dict | None:
        """The service that runs ``spec``'s release, plan and generation of its process type (not one
        retired by nodes:drain), or None."""
        services = self._services(app=spec.app, deployment=spec.deployment, process=spec.process,
                                  release=str(spec.release), plan=spec.plan, generation=str(spec.generation))
        if not services:
            return None
        tasks, nodes = self._tasks(services), self.nodes()
        with self._lock:
            acked = set(self._acked)
        usable = [s for s in services if not any(_on_paused(rows, nodes) for rows in
                                                 _slots(tasks.get(s["ID"], []), acked).values())]
        return max(usable, key=lambda s: s.get("CreatedAt", ""), default=None)

    def _live_slots(self, service_id: str) -> dict[int, str]:
        """Slot -> its newest task's id, for the slots the service still wants."""
        with self._lock:
            acked = set(self._acked)
        return {slot: rows[-1]["ID"] if rows else ""
                for slot, rows in _slots(self._tasks([{"ID": service_id}]).get(service_id, []), acked).items()}

    def _settle(self, service_id: str, replicas: int, timeout: float = 5.0) -> None:
        """Wait (holding the scaling lock) until the orchestrator made the tasks of ``replicas`` slots, so
        that the next change counts the slots that exist, not those about to (Swarm fills the lowest
        free slots: a slot made for one start may be the index another asked for)."""
        deadline = time.monotonic() + timeout
        while len(self._live_slots(service_id)) < replicas and time.monotonic() < deadline:
            time.sleep(0.05)

    def _scale(self, service_id: str, replicas: int) -> None:
        """The service's spec as stored, with only its replicas changed (as `docker service scale` does):
        the task template stays byte for byte, so no task is replaced (docker-py's update_service would
        send the spec with the engine's defaults filled in)."""
        row = self.api.inspect_service(service_id)
        spec = row["Spec"]
        spec["Mode"] = {"Replicated": {"Replicas": replicas}}
        response = self.api._post_json(self.api._url("/services/{0}/update", service_id), data=spec,
                                       params={"version": row["Version"]["Index"]})
        self.api._raise_for_status(response)

    def start(self, spec: UnitSpec) -> str:
        """Unit ``spec.index`` of its process type: task slot N of the type's service for this release,
        plan and generation. The first unit creates the service, the next ones raise its replicas (Swarm
        fills the lowest free slot, as the loop picks the lowest free index); starts that come together
        become one change. Returns the unit's id (service/task)."""
        work = spec.workload
        key = (spec.app, spec.deployment, spec.process, spec.release, spec.plan, spec.generation)
        with self._lock:
            self._wanted.setdefault(key, set()).add(spec.index)
        self.image_ref(work.image)  # pushed before the lock: units of other types start meanwhile
        time.sleep(GATHER)  # the loop hands over a pass's starts together: let them all ask before one acts
        with self._scaling:
            with self._lock:
                wanted = self._wanted.pop(key, set())
            try:
                service = self._shape_service(spec)
                if service is None:
                    new = wanted | {spec.index}
                    service_id = self._create_units(spec, len(new))
                    self._settle(service_id, len(new))
                else:
                    service_id = service["ID"]
                    live = set(self._live_slots(service_id))
                    new = wanted - live
                    with self._lock:  # indexes asked for whose slots are not made yet: a slot made for one
                        # start can be another's index (Swarm fills the lowest free slots), so count them all
                        waiting = {i for sid, i in self._starting if sid == service_id}
                    target = len(live | waiting | new)
                    if target > service["Spec"]["Mode"]["Replicated"]["Replicas"]:
                        self._scale(service_id, target)
                        self._settle(service_id, target)
            except BaseException as exc:
                with self._lock:  # the other starts this one took over start their own units
                    self._wanted.setdefault(key, set()).update(wanted - {spec.index})
                if isinstance(exc, docker.errors.APIError):
                    raise BaeError(f"starting {spec.unit} failed: {exc.explanation or exc}") from None
                if isinstance(exc, ENGINE_ERRORS):
                    raise Unavailable(f"starting {spec.unit} failed: {exc}") from None
                raise
            with self._lock:
                self._starting.update((service_id, i) for i in new | {spec.index})
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # the orchestrator makes the task at once; the unit's id names it
                task = self._live_slots(service_id).get(spec.index)
                if task:
                    return f"{service_id}/{task}"
                time.sleep(0.1)
            raise BaeError(f"Swarm made no task for {spec.unit} within 15 s")
        finally:
            with self._lock:
                self._starting.discard((service_id, spec.index))

    def _create_units(self, spec: UnitSpec, replicas: int) -> str:
        """The process type's service for ``spec``'s release, plan and generation: each task a unit, its
        slot the unit's index (BAE_UNIT, DYNO and the hostname say it through Swarm's templates)."""
        unit = f"{spec.process}.{{{{.Task.Slot}}}}"
        env = {**spec.workload.env, "BAE_APP": spec.app, "BAE_DEPLOYMENT": spec.deployment, "BAE_UNIT": unit,
               "DYNO": unit, "BAE_RELEASE": f"v{spec.release}"}
        if spec.web:
            env["PORT"] = str(PORT)
        labels = {"bae.platform": self.instance, "bae.role": "unit", **spec.labels(), "bae.index": "0"}
        name = _name(f"bae-{self.instance}-{spec.app}-{spec.deployment}-{spec.process}-v{spec.release}-"
                     f"{secrets.token_hex(3)}")
        return self._create(name, spec.app, spec.workload, env, labels, unit, spec.stop_grace, ports=spec.web,
                            constraints=self.placement(spec.app, spec.deployment, spec.process),
                            restart=RestartPolicy(condition="any", delay=0, max_attempts=0), replicas=replicas,
                            hostname=f"{spec.process}-{{{{.Task.Slot}}}}")

    def _create(self, name: str, app: str, work: Workload, env: dict, labels: dict, unit: str, grace: int, *,
                ports: bool, constraints: list[str], restart: RestartPolicy, replicas: int = 1,
                hostname: str = "") -> str:
        """A service under the unit contract: the plan's limits (and a quarter of them reserved, so that
        Swarm does not pack a node beyond its memory), user bae, no capabilities, the CA bundle; on the
        app's overlay network with its add-ons in /etc/hosts if it has add-ons."""
        image = self.image_ref(work.image)
        self._login()  # sent with the service: Swarm hands it to the node of each task, now and on re-placement
        network = self.app_network(app)
        memory = memory_bytes(work.memory)
        resources = Resources(cpu_limit=int(work.cpu * 1e9), mem_limit=memory,
                              cpu_reservation=int(work.cpu * 1e9 / 4), mem_reservation=memory // 4)
        resources["Limits"]["Pids"] = work.pids
        container = ContainerSpec(image, command=UNIT_ENTRYPOINT, args=[work.command], env=env, user=USER,
                                  labels=labels, hostname=hostname or unit.replace(".", "-"),
                                  stop_grace_period=int(grace * 1e9), configs=self._ca(work.ca_bundle),
                                  cap_drop=["ALL"], hosts=self.addon_hosts(app) if network else None)
        template = TaskTemplate(container, resources=resources, restart_policy=restart,
                                networks=[network] if network else None,
                                placement=Placement(constraints=["node.role==worker", *constraints]),
                                log_driver={"Name": "json-file", "Options": {"max-size": "10m", "max-file": "3"}})
        endpoint = EndpointSpec(mode="dnsrr", ports=[{"Protocol": "tcp", "TargetPort": PORT, "PublishMode": "host"}]
                                if ports else None)
        try:
            return self.api.create_service(
                template, name=name, labels=labels, mode=ServiceMode("replicated", replicas=replicas),
                endpoint_spec=endpoint)["ID"]
        except ENGINE_ERRORS as exc:
            raise BaeError(f"starting {unit} failed: {getattr(exc, 'explanation', None) or exc}") from None

    def app_network(self, app: str) -> str | None:
        """The app's own overlay network (made by addons.service when the app got an add-on), or None.
        An app without add-ons has none: its units stay on their node's default bridge."""
        try:
            rows = self.api.networks(filters={"label": [f"bae.platform={self.instance}", "bae.role=app-network",
                                                        f"bae.app={app}"], "driver": "overlay"})
        except ENGINE_ERRORS as exc:
            raise Unavailable(f"looking up the network of {app} failed: {exc}") from None
        return rows[0]["Name"] if rows else None

    def addon_hosts(self, app: str) -> dict[str, str]:
        """Name -> fixed address of the app's add-ons (containers on the manager, by label), for /etc/hosts
        (the units need no DNS to find them); from the add-ons' records when the platform gave them."""
        if self._addresses is not None:
            return self._addresses(app)
        return addon_hosts(self.api, self.instance, app)

    def stop(self, unit_id: str, grace: int) -> str:
        """One unit fewer in the unit's service: its replicas lowered by one (the last unit removes the
        service). Swarm chooses which task stops (it prefers tasks that do not run, then the nodes with
        the most tasks of the service), SIGTERM, the grace period, SIGKILL on its node; its slot is no
        longer listed from that moment, so it leaves the router at once. Returns the unit that stops."""
        service_id, task_id = _service(unit_id), _task(unit_id)
        if not task_id and "/" not in unit_id:
            self.remove(unit_id)  # a one-off unit's service
            return unit_id
        with self._scaling:
            try:
                spec = self.api.inspect_service(service_id)
                before = self._live_slots(service_id)
                replicas = spec["Spec"]["Mode"]["Replicated"]["Replicas"]
                if replicas <= 1:
                    self.api.remove_service(service_id)
                    return unit_id
                self._scale(service_id, replicas - 1)
            except docker.errors.NotFound:
                return unit_id
            except ENGINE_ERRORS as exc:
                raise Unavailable(f"stopping {unit_id[:12]} failed: {exc}") from None
            # which one Swarm chose: the slot whose newest task is no longer desired (at once, as a rule)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    now = self._live_slots(service_id)
                except BaeError:
                    break
                gone = [t for slot, t in before.items() if slot not in now]
                if gone:
                    chosen = task_id if task_id in gone else gone[0]
                    if chosen != task_id:
                        log.info("scaling in %s: Swarm stops task %s rather than %s", service_id[:12], chosen[:12],
                                 task_id[:12])
                    return f"{service_id}/{chosen}"
                time.sleep(0.05)
        return unit_id

    def remove_exited(self, unit_id: str) -> bool:
        """A task that exited is done with (its crash was seen): the unit's slot stays in the service,
        whose restart policy already started a new task there (the next unit of that index)."""
        task = _task(unit_id)
        if task:
            with self._lock:
                self._acked.add(task)
        return True

    def remove(self, unit_id: str) -> None:
        """A one-off unit's (or a prune job's) service goes. A unit, a task, went with ``stop``: Swarm
        removes a task's container itself once its slot is scaled away or its service removed."""
        if "/" not in unit_id:
            self._remove_service(unit_id)

    def _remove_service(self, service_id: str) -> None:
        try:
            self.api.remove_service(service_id)
        except docker.errors.NotFound:
            pass
        except ENGINE_ERRORS as exc:
            log.warning("removing %s failed: %s", service_id[:12], exc)

    @classmethod
    def is_up(cls, info: UnitInfo, age: float) -> bool:
        if info.status != "running":
            return False
        return cls.probe(info) if info.web else age >= WORKER_SETTLE

    @staticmethod
    def probe(info: UnitInfo, timeout: float = 0.25) -> bool:
        """Does the unit accept TCP connections on its node's published port?"""
        if not info.ip or not info.host_port:
            return False
        try:
            with socket.create_connection((info.ip, info.host_port), timeout=timeout):
                return True
        except OSError:
            return False

    def watch(self, on_event: Callable[[str, str], None], stop: threading.Event) -> None:
        """Service and node events (a node going down counts as a unit dying); tasks have none: the loop polls.
        A node found unreachable by the router's probe wakes the loop the same way."""
        self._on_event = on_event
        while not stop.is_set():
            try:
                stream = self.api.events(decode=True, filters={"type": ["service", "node"]})
                for event in stream:
                    if stop.is_set():
                        stream.close()
                        return
                    on_event("die" if event.get("Type") == "node" else event.get("Action", ""), "")
            except Exception as exc:  # the engine restarted: reconnect
                log.info("docker events stream ended (%s); reconnecting", exc.__class__.__name__)
                stop.wait(1)

    def _task_logs(self, unit_id: str, **params):
        """GET /tasks/ID/logs (the SDK has service logs only; a unit is one task of its service)."""
        task = _task(unit_id)
        if not task:
            raise BaeError(f"the unit {unit_id[:12]} has no task yet")
        query = {"stdout": 1, "stderr": 1, **params}
        response = self.api._get(self.api._url("/tasks/{0}/logs", task), params=query, stream=True)
        self.api._raise_for_status(response)
        return self.api._multiplexed_response_stream_helper(response)

    def logs(self, unit_id: str, tail: int = 20) -> str:
        """The task's last lines, and Swarm's word when the task could not run (an image its node could
        not pull, no node matching the constraints): what a failed deploy shows."""
        try:
            text = b"".join(self._task_logs(unit_id, tail=str(tail))).decode("utf-8", "replace")
        except (BaeError, *ENGINE_ERRORS):
            text = ""
        try:
            status = self.api.inspect_task(_task(unit_id))["Status"] if _task(unit_id) else {}
        except ENGINE_ERRORS:
            status = {}
        if status.get("Err") and status.get("State") not in ("running", "complete"):
            text += f"[swarm] task {status.get('State')}: {status['Err']}\n"
        return text

    def follow_logs(self, unit_id: str, since: float | None = None) -> Iterator[list[tuple[str, str]]]:
        params: dict = {"follow": 1, "timestamps": 1}
        if since:
            params["since"] = f"{since:.6f}"
        try:
            pending = b""
            for chunk in self._task_logs(unit_id, **params):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                batch = []
                for raw in lines:
                    stamp, _, message = raw.decode("utf-8", "replace").rstrip("\r").partition(" ")
                    try:
                        batch.append((_stamp(stamp), message))
                    except ValueError:
                        continue
                if batch:
                    yield batch
        except ENGINE_ERRORS as exc:
            raise translate(exc, f"following the output of {unit_id[:12]}") from None

    @contextlib.contextmanager
    def attach(self, job: OneOff, unit: str, stdin: bool) -> Iterator["_Attached"]:
        """A one-off unit as a one-task service that is not restarted, on any node. Swarm cannot attach
        a terminal or stdin to a task: output streams back, input is refused with a TTY and dropped without."""
        if job.tty:
            raise BaeError("an interactive terminal is not available for one-off units on the cluster "
                           "(Swarm tasks take no input)", "Run the command without ssh -t; it runs on a node "
                           "and its output and exit code come back.")
        env = {**job.workload.env, "BAE_APP": job.app, "BAE_DEPLOYMENT": job.deployment, "BAE_UNIT": unit,
               "DYNO": unit, "BAE_RELEASE": f"v{job.release}"}
        labels = {"bae.platform": self.instance, "bae.role": "oneoff", "bae.app": job.app,
                  "bae.deployment": job.deployment, "bae.release": str(job.release)}
        name = oneoff_name(self.instance, job.app, job.deployment, unit)
        service = self._create(name, job.app, job.workload, env, labels, unit, 10, ports=False, constraints=[],
                               restart=RestartPolicy(condition="none"))
        try:
            yield _Attached(self, service)
        finally:
            self.remove(service)

    def remove_all_oneoffs(self) -> int:
        """One-off units, and prune jobs, whose platform stopped while they ran."""
        rows = []
        for role in ("oneoff", "prune"):
            try:
                rows += self.api.services(filters={"label": [f"bae.platform={self.instance}", f"bae.role={role}"]})
            except ENGINE_ERRORS:
                return 0
        for row in rows:
            self.remove(row["ID"])
        return len(rows)

    def remove_all(self, **labels: str) -> int:
        services = self._services(**labels)
        for service in services:
            self.remove(service["ID"])
        return len(services)

    # -- what happened to units ------------------------------------------------------

    def timeline(self, **labels: str) -> list[str]:
        """Failovers, for `ps`: ``web.3 lost with node n2 at 12:00:03, running on n1 at 12:00:19``."""
        return [e.text() for e in self.history(**labels)]

    def _observe(self, service: dict, identity: dict, task: dict | None, nodes: dict[str, NodeInfo]) -> None:
        """Tell the app's log when a unit's task is lost with its node, and when it runs elsewhere."""
        if task is None or self.report is None:
            return
        unit = f"{identity['process']}.{identity['index']}"
        node = nodes.get(task.get("NodeID", ""))
        here = node.hostname if node else "?"
        running = task.get("Status", {}).get("State") == "running"
        app, deployment = identity["app"], identity["deployment"]
        key = (service["ID"], identity["index"])
        with self._lock:
            last = self._last.get(key)
            lost = last.lost if last and last.task == task["ID"] else None
            if last and last.task != task["ID"] and last.running:
                # a running task replaced by Swarm without exiting (the loop sees crashes): its node is gone
                # (the node list may lag a second behind the tasks, so it is not asked)
                lost = (last.node, time.time())
                self.report(app, deployment, f"{unit} lost with node {last.node} at {clock(lost[1])}")
            if lost and running:
                self.report(app, deployment, f"{unit} lost with node {lost[0]} at {clock(lost[1])}, running on "
                            f"{here} at {clock(time.time())} ({time.time() - lost[1]:.1f} s later)")
                lost = None
            self._last[key] = _Seen(task["ID"], here, task.get("NodeID", ""), running, lost)

    def history(self, **labels: str) -> list[Lost]:
        """Units that lost their task with a node and where they run now (oldest first)."""
        services = self._services(**labels)
        tasks = self._tasks(services)
        nodes = self.nodes(fresh=True)
        events = []
        for service in services:
            try:
                identity = UnitIdentity.from_labels(service["Spec"].get("Labels") or {})
            except (KeyError, ValueError):
                continue
            by_slot: dict[int, list[dict]] = {}
            for task in tasks.get(service["ID"], []):
                by_slot.setdefault(int(task.get("Slot") or 0), []).append(task)
            for slot, rows in by_slot.items():
                for task, after in zip(rows, rows[1:]):
                    if _ended_before(task, after) or task["Status"].get("State") == "rejected":
                        continue  # a crash Swarm restarted, a slot refilled after a scale-in, a failed start
                    events.append(_lost(identity, slot, task, after, nodes))
        return sorted(events, key=lambda e: e.lost_at)


def _lost(identity: dict, slot: int, task: dict, after: dict, nodes: dict[str, NodeInfo]) -> Lost:
    node = nodes.get(task.get("NodeID", ""))
    new_node = nodes.get(after.get("NodeID", ""))
    running = after.get("Status", {}).get("State") == "running"
    return Lost(identity["app"], identity["deployment"], f"{identity['process']}.{slot}",
                node.hostname if node else task.get("NodeID", "?")[:10], _epoch(after.get("CreatedAt")) or 0.0,
                new_node.hostname if new_node and running else None,
                _epoch(after["Status"].get("Timestamp")) if running else None)


# Run by the prune job on each worker (the release image's /usr/bin/python3, isolated, as root with the
# node's engine socket): argv = registry/repository@ prefix, image ids to keep, seconds to retry. Earlier
# prune jobs' exited containers go too: Swarm leaves a finished job's containers on the nodes.
PRUNE_SCRIPT = r"""
import http.client, json, socket, sys, time, urllib.parse

class Engine(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect("/var/run/docker.sock")

def call(method, path):
    conn = Engine("localhost", timeout=60)
    conn.request(method, path)
    response = conn.getresponse()
    body = response.read()
    return response.status, json.loads(body) if body[:1] in (b"[", b"{") else body

prefix, keep = sys.argv[1], set(filter(None, sys.argv[2].split(",")))
deadline, removed = time.time() + float(sys.argv[3]), 0
while True:
    used = set()
    for c in call("GET", "/containers/json?all=1")[1]:
        if (c.get("Labels") or {}).get("bae.role") == "prune" and c.get("State") == "exited":
            call("DELETE", "/containers/" + c["Id"])  # an earlier prune job's (Swarm leaves them)
        else:
            used.add(c["ImageID"])
    busy = kept = 0
    for image in call("GET", "/images/json")[1]:
        refs = [r for r in image.get("RepoDigests") or [] if r.startswith(prefix)]
        if not refs:
            continue
        if image["Id"] in keep:
            kept += 1
            continue
        if image["Id"] in used:
            busy += 1
            continue
        for ref in refs:
            removed += call("DELETE", "/images/" + urllib.parse.quote(ref, safe=""))[0] == 200
    if not busy or time.time() > deadline:
        break
    time.sleep(2)
print(f"removed {removed} image(s), kept {kept}, {busy} still in use", flush=True)
"""


def _published(task: dict, nodes: dict[str, NodeInfo]) -> tuple[str, int] | None:
    """NODE_ADDRESS, published port of a running task's web port, or None."""
    status = task.get("Status", {})
    node = nodes.get(task.get("NodeID", ""))
    if status.get("State") != "running" or node is None or not node.address:
        return None
    port = _web_port(status)
    return (node.address, port) if port else None


def _web_port(status: dict) -> int | None:
    """The port a task's web port ($PORT) is published on, on its node (host mode)."""
    for port in (status.get("PortStatus") or {}).get("Ports") or []:
        if port.get("TargetPort") == PORT and port.get("PublishedPort"):
            return port["PublishedPort"]
    return None


def _answers(address: tuple[str, int]) -> bool:
    """Does the host at ``address`` answer a TCP connection (accepted, or refused by its kernel)?"""
    try:
        with socket.create_connection(address, timeout=REACH_TIMEOUT):
            return True
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def _exited(task: dict, nodes: dict[str, NodeInfo]) -> bool:
    """Did the task's process end by itself (or fail to start) on a node that is up?"""
    if task.get("Status", {}).get("State") not in ("failed", "complete", "rejected"):
        return False
    node = nodes.get(task.get("NodeID", ""))
    return node is None or node.state == "ready"


def _settled(task: dict) -> bool:
    """Has the task been running for CRASH_SHOWN seconds?"""
    status = task.get("Status", {})
    since = _epoch(status.get("Timestamp")) if status.get("State") == "running" else None
    return since is not None and time.time() - since >= CRASH_SHOWN


def _epoch(stamp: str | None) -> float | None:
    if not stamp or stamp.startswith("0001-"):  # Docker's zero time
        return None
    return datetime.fromisoformat(stamp).timestamp()


def _crash_restarted(old: dict, new: dict, nodes: dict[str, NodeInfo]) -> bool:
    """Was ``new`` made because ``old`` exited by itself? (A task of a node that died and came back
    reports its end only after its replacement was made: that was no crash.)"""
    return _exited(old, nodes) and \
        (_epoch(old["Status"].get("Timestamp")) or 0) <= (_epoch(new.get("CreatedAt")) or 0) + 0.5


def _ended_before(old: dict, new: dict) -> bool:
    """Had ``old`` ended before ``new`` took its slot (a crash, a scale-in)? A task lost with its node
    reports no end, or reports it after its replacement was made (when the node comes back)."""
    return old.get("Status", {}).get("State") in EXITED and \
        (_epoch(old["Status"].get("Timestamp")) or 0) <= (_epoch(new.get("CreatedAt")) or 0) + 0.5


def _push_tag(image_id: str) -> str:
    """The tag a local image is pushed to the platform's registry under (its id's first 12 hex digits)."""
    return "i" + image_id.split(":")[-1][:12]


def _service(unit_id: str) -> str:
    return unit_id.split("/", 1)[0]


def _task(unit_id: str) -> str:
    """The task of a unit id (SERVICE/TASK); "" for a one-off's service id and a unit in transit (SERVICE/@SLOT)."""
    task = unit_id.split("/", 1)[1] if "/" in unit_id else ""
    return "" if task.startswith("@") else task


def _slots(tasks: list[dict], acked: set[str]) -> dict[int, list[dict]]:
    """A service's tasks by slot (oldest first, without those the loop is done with), for the slots the
    service still wants: a slot whose newest task is no longer desired running is stopping (scale-in)."""
    by_slot: dict[int, list[dict]] = {}
    for task in tasks:
        by_slot.setdefault(int(task.get("Slot") or 0), []).append(task)
    return {slot: [t for t in rows if t["ID"] not in acked] for slot, rows in by_slot.items()
            if rows[-1].get("DesiredState") in ("ready", "running")}


def _on_paused(rows: list[dict], nodes: dict[str, "NodeInfo"]) -> bool:
    """Does the slot's task run on a paused node (nodes:drain)?"""
    if not rows or rows[-1].get("Status", {}).get("State") not in ALIVE:
        return False
    node = nodes.get(rows[-1].get("NodeID", ""))
    return bool(node and node.availability == "pause")


def oneoff_name(instance: str, app: str, deployment: str, unit: str) -> str:
    """A one-off unit's service name (``run``, the release phase): unique, and short enough for Swarm."""
    return _name(f"bae-{instance}-{app}-{deployment}-{unit.replace('.', '-')}-{secrets.token_hex(3)}")


def _name(name: str) -> str:
    """A service name Swarm takes (at most 63 characters): long ones keep a hash of the rest."""
    if len(name) <= 63:
        return name
    return name[:54] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]


def _stamp(raw: str) -> str:
    return datetime.fromisoformat(raw).isoformat(timespec="microseconds")
