"""The reconcile loop inside `bae serve`: observe, desire, plan, apply, repeat.

Each pass reads what should run from the store (``desire``), what runs from the
runtime plus the stored decision state (``observe``), lets the pure ``plan``
decide, and performs the actions through a table of handlers (``apply``) on a
thread pool, so that a slow stop never delays a start. A deploy's outcome is
written to the store (the release goes active or failed, after the router
routes the new units); whoever waits for it reads it there. The loop wakes at
once on a datagram on the wake socket (deploys, `ps:*` commands, from any
process), on a runtime event (a unit died), and at least every
``scheduler.interval`` seconds otherwise.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bae import config
from bae.errors import BaeError
from bae.logstore import LogStore
from bae.model import Deployment, Endpoint, Release, slug
from bae.store import Store
from scheduler.logs import LogCollector
from scheduler.plan import Context, Crashed, Done, Failed, Remove, Seen, Start, Stop, Want, backoff_delay, plan
from scheduler.plans import memory_labels
from scheduler.runtime import Runtime, UnitInfo, UnitSpec, Workload
from scheduler.state import Decisions

__all__ = ["Scheduler"]

log = logging.getLogger("bae.scheduler")

Routes = dict[tuple[str, str], tuple[Endpoint, ...]]
REMOVED_GRACE = 10.0  # seconds a unit this process removed may still be listed before it is judged again

OOM_SETTLE = 1.0  # seconds after a memory kill before a unit that still runs is said to run on


@dataclass
class Desired:
    """What the store says should run, this pass."""

    wants: list[Want] = field(default_factory=list)
    specs: dict[tuple[str, str, str], tuple[Deployment, Release, str]] = field(default_factory=dict)  # want.key ->
    deployments: dict[tuple[str, str], Deployment] = field(default_factory=dict)
    pending: list[tuple[str, str, int]] = field(default_factory=list)  # releases being deployed

    def dep_id(self, app: str, deployment: str) -> int | None:
        dep = self.deployments.get((app, deployment))
        return dep.id if dep else None


@dataclass
class Observed:
    """What runs now, this pass."""

    units: list[UnitInfo]
    seen: list[Seen]
    by_id: dict[str, UnitInfo] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = {u.id: u for u in self.units}


@dataclass
class _Pass:
    desired: Desired
    observed: Observed
    live: list[Release] = field(default_factory=list)  # releases to mark active once routed


class Scheduler:
    def __init__(self, store: Store, settings: config.Settings, runtime: Runtime, logs: LogStore, wake_socket: Path,
                 on_routes: Callable[[Routes], None] | None = None,
                 before_stop: Callable[[], None] | None = None) -> None:
        self.store = store
        self.logs = logs
        self.runtime = runtime
        self.plans = settings.plans
        self.ca_bundle = settings.build.ca_bundle
        self.settings = settings.scheduler
        self._memory = memory_labels(settings.plans)  # for OOM messages; settings are fixed while serving
        self.on_routes = on_routes
        self.before_stop = before_stop  # waits until the router has stopped sending a stopping unit requests
        self.sock_path = wake_socket
        self.decisions = Decisions(store)
        self.collector = LogCollector(runtime, logs)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="unit")
        self._threads: list[threading.Thread] = []
        self._event_at = 0.0
        self._since = time.time()  # units started before this are adopted from an earlier `bae serve`
        # I/O under way (not decisions: a restart forgets it with the threads doing it)
        self._lock = threading.Lock()
        self._starting: dict[str, Seen] = {}  # placeholder id -> Seen, until the unit is listed
        self._started_ids: dict[str, str] = {}  # placeholder id -> unit id, once created
        self._created: dict[str, float] = {}  # unit id -> when first seen created but not started
        self._stopping: set[str] = set()
        self._removed: dict[str, float] = {}  # unit id -> when this process removed it (it may be listed a moment)
        self._ooms: dict[str, float] = {}  # unit id -> when a process in it was killed for memory, until said
        self._handlers: dict[type, Callable] = {Start: self._start, Stop: self._stop_unit, Remove: self._remove,
                                                Crashed: self._crashed, Failed: self._failed, Done: self._done}

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        self._recover()
        sock = self._bind()  # before start() returns: a deploy may notify at once
        for target, name, args in ((self._run, "scheduler", ()), (self._watch, "runtime-events", ()),
                                   (self._listen, "wake-socket", (sock,))):
            thread = threading.Thread(target=target, args=args, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop reconciling. Units keep running; the next `bae serve` adopts them."""
        self._stop.set()
        self._wake.set()
        try:
            self.sock_path.unlink()
        except FileNotFoundError:
            pass
        for thread in self._threads:
            if thread.name == "scheduler":
                thread.join(10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        self._wake.set()

    def _recover(self) -> None:
        """Deploys that were under way when the platform stopped are refused: their pushes are gone.
        The decision state is read back as it was."""
        releases, builds = self.store.fail_interrupted("the platform restarted during the deploy")
        for release in releases:
            log.info("v%d (deployment %d) was being deployed when bae stopped; it failed", release.version,
                     release.deployment_id)
        if builds:
            log.info("%d build(s) were running when bae stopped; they failed", builds)
        self.decisions.load({d.id: (d.app, d.name) for d in self.store.deployments()})
        self.store.forget_stopping()  # stops under way ended with the process; the first pass decides again

    def _watch(self) -> None:
        def on_event(action: str, unit_id: str) -> None:
            if action == "oom":  # a process inside it was killed; a pass says so (observe)
                with self._lock:
                    self._ooms.setdefault(unit_id, time.monotonic())
            if action in ("die", "destroy", "oom", "start", "stop", "kill"):
                # the unit list may lag the event a little: poll fast for a moment
                self._event_at = time.monotonic()
                self._wake.set()

        self.runtime.watch(on_event, self._stop)

    def _bind(self) -> socket.socket:
        try:
            self.sock_path.unlink()
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.sock_path))
        os.chmod(self.sock_path, 0o600)
        sock.settimeout(1.0)
        return sock

    def _listen(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                sock.recv(64)
                self._wake.set()
            except TimeoutError:
                continue
            except OSError:
                break
        sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            busy = False
            try:
                busy = self.tick()
            except BaeError as exc:  # e.g. dockerd restarting: said in one line, not as a traceback
                log.warning("reconcile pass failed: %s; retrying", exc.message)
                busy = False
                self._stop.wait(1)
            except Exception:
                log.exception("reconcile pass failed; retrying")
                busy = False
                self._stop.wait(1)
            self._wake.wait(0.05 if busy else self.settings.interval)
            self._wake.clear()

    def _tell(self, app: str, deployment: str, text: str) -> None:
        """A platform event: the operator's log and the app's log (where a waiting deploy reads it)."""
        log.info("%s: %s", slug(app, deployment), text)
        self.logs.event(app, deployment, "scheduler", text)

    # -- one pass ---------------------------------------------------------------

    def tick(self) -> bool:
        """Observe, desire, plan, apply. Returns True while something is in flight (poll fast)."""
        now = time.time()
        desired = self.desire()
        observed = self.observe(now, desired)
        ctx = Context(now=now, boot_timeout=self.settings.boot_timeout, batch=max(1, self.settings.rollout_batch),
                      backoff_max=self.settings.backoff_max, backoff=self.decisions.backoffs(), memory=self._memory)
        actions = plan(desired.wants, observed.seen, ctx, tuple(desired.pending))
        this = _Pass(desired, observed)
        self.apply(actions, this)
        self._publish_routes(observed.units)
        for release in this.live:  # a deploy is done once the router routes its units
            self.store.activate(release)
        with self._lock:
            busy = bool(self._starting) or bool(self._ooms) or any(not s.up and s.running and not s.stopping for s in observed.seen)
        return busy or time.monotonic() - self._event_at < 1.0

    def desire(self) -> Desired:
        """One ``Want`` per deployment and process type of the release it should run (the store's targets).
        A type that runs a new release, plan or restart generation forgets its old crashes."""
        desired = Desired()
        for dep, release, formation in self.store.targets():
            desired.deployments[(dep.app, dep.name)] = dep
            if release is None:
                continue
            if release.status == "pending":
                desired.pending.append((dep.app, dep.name, release.version))
            for process, command in release.process_types.items():
                entry = formation.get(process)
                if process == "release" or entry is None:
                    continue
                w = Want(dep.app, dep.name, process, release.version, release.status == "pending",
                         entry.quantity, entry.plan, entry.generation, process == "web")
                desired.wants.append(w)
                desired.specs[w.key] = (dep, release, command)
                self.decisions.reset(w.key, dep.id, unless_shape=(w.release, w.plan, w.generation))
        return desired

    def observe(self, now: float, desired: Desired) -> Observed:
        """The runtime's units as ``Seen`` (with the recorded decision state), plus the starts under way."""
        units = self.runtime.list_units()
        listed = {u.id for u in units}
        self.collector.sync(units)
        self.decisions.prune(listed)
        seen = [self._seen(info, now, desired) for info in units]
        self._report_ooms(units)
        with self._lock:
            for placeholder, unit_id in list(self._started_ids.items()):
                if unit_id in listed:  # listed now: the unit stands for itself
                    self._starting.pop(placeholder, None)
                    del self._started_ids[placeholder]
            seen += list(self._starting.values())
            stopped = [i for i in self._stopping if i not in listed]
            self._stopping &= listed
            mono = time.monotonic()
            for gone in [i for i, t in self._removed.items() if i not in listed or mono - t > REMOVED_GRACE]:
                del self._removed[gone]
        if stopped:  # gone while its stop ran (removed by hand): `ps` no longer shows it either
            self.store.forget_stopping(stopped)
        with self._lock:
            for gone in [i for i in self._created if i not in listed]:
                del self._created[gone]
        self._reset_backoff(seen, now, desired)
        return Observed(units, seen)

    def _seen(self, info: UnitInfo, now: float, desired: Desired) -> Seen:
        if info.started_at:  # the unit's own start time: the same age `ps` shows
            age = max(0.0, now - info.started_at)
        else:  # created, not started yet
            with self._lock:
                age = now - self._created.setdefault(info.id, now)
        dep_id = desired.dep_id(info.app, info.deployment)
        up = self.decisions.up_since(info.id) is not None
        if info.running and not up and self.runtime.is_up(info, age):
            self.decisions.mark_up(info.id, dep_id, now)
            up = True
            if info.release:  # an adopted unit (started before this process) was up all along
                adopted = (info.started_at or now) < self._since
                self._tell(info.app, info.deployment, f"{info.unit} up" + (" (adopted)" if adopted else f" after {age:.1f} s"))
        if info.running and up and self.decisions.crash_counted(info.id):  # it came back by itself: it may crash again
            self.decisions.forget_crash(info.id)
        if not info.running and up:
            self.decisions.forget_up(info.id)
            up = False
        with self._lock:  # a unit this process removes is not a crash, even if the runtime still lists it
            stopping = info.id in self._stopping or info.id in self._removed
        return Seen(info.id, info.app, info.deployment, info.process, info.release, info.index, info.plan,
                    info.generation, info.running, age, up, info.exit_code, info.oom, stopping,
                    info.web, self.decisions.crash_counted(info.id))

    def _report_ooms(self, units: list[UnitInfo]) -> None:
        """A unit whose process was killed for memory but which runs on (a web server's worker, a
        child process): nothing crashed, so only this says it. An exited unit's crash says it itself;
        a moment passes first, as the unit's own exit may follow the kill."""
        now = time.monotonic()
        running = {info.id: info for info in units if info.running}
        with self._lock:
            due = [i for i, t in self._ooms.items() if i in running and now - t >= OOM_SETTLE]
            self._ooms = {i: t for i, t in self._ooms.items() if i in running and i not in due}
        for unit_id in due:
            info = running[unit_id]
            self._tell(info.app, info.deployment, f"{info.unit}: a process was killed for exceeding the unit's "
                       f"{self._memory.get(info.plan, info.plan)} memory limit; the unit runs on")

    def _reset_backoff(self, seen: list[Seen], now: float, desired: Desired) -> None:
        """A type whose unit stayed up ``backoff_reset`` seconds starts afresh."""
        for s in seen:
            since = self.decisions.up_since(s.id) if s.up and s.running else None
            if since is not None and now - since >= self.settings.backoff_reset and self.decisions.failures(s.key):
                self.decisions.reset(s.key, desired.dep_id(s.app, s.deployment))

    # -- actions ----------------------------------------------------------------

    def apply(self, actions: list, this: _Pass) -> None:
        """Perform ``actions``: each kind by its handler in the table."""
        by_id = this.observed.by_id
        stops = [a for a in actions if isinstance(a, Stop) and a.unit.id in by_id]
        if stops:  # take them out of the router before they get SIGTERM
            with self._lock:
                self._stopping.update(a.unit.id for a in stops)
            for a in stops:  # `ps` (any process) shows them as stopping
                self.store.set_stopping(a.unit.id, this.desired.dep_id(a.unit.app, a.unit.deployment), a.reason)
            self._publish_routes(this.observed.units)
        for a in actions:
            try:
                self._handlers[type(a)](a, this)
            except BaeError as exc:  # the engine went away meanwhile: the next pass decides again
                log.warning("applying %s failed: %s", type(a).__name__, exc.message)
            except Exception:
                log.exception("applying %s failed", type(a).__name__)

    def _stop_unit(self, a: Stop, this: _Pass) -> None:
        if a.unit.id not in this.observed.by_id:
            return
        self._tell(a.unit.app, a.unit.deployment, f"{a.unit.name} (v{a.unit.release}) stopping: {a.reason}")
        self._pool.submit(self._stop_and_remove, a.unit, this.observed.by_id)

    def _stop_and_remove(self, unit: UnitInfo, listed: dict[str, UnitInfo]) -> None:
        unit_id = unit.id
        try:
            if self.before_stop:
                self.before_stop()
            stopped = self.runtime.stop(unit_id, self.settings.stop_grace) or unit_id
            if stopped != unit_id:  # the runtime chose another unit of the same shape (a swarm scale-in):
                with self._lock:  # that one is not a crash; this one stays and is routed again, at once
                    self._removed[stopped] = time.monotonic()
                    self._stopping.discard(unit_id)
                other = listed.get(stopped)  # the log names the unit that really stops (the one asked for
                # may still stop in place of another one asked for at the same time)
                self._tell(unit.app, unit.deployment, f"{other.unit if other else 'another unit'} (v{unit.release}) "
                                                      f"stops in place of {unit.name} (the cluster chose it)")
            self._remove_now(stopped)
        finally:
            with self._lock:  # if it is still listed, the next pass decides again
                self._stopping.discard(unit_id)
            self.store.forget_stopping([unit_id])
            self._wake.set()

    def _remove(self, a: Remove, this: _Pass) -> None:
        if a.unit.id in this.observed.by_id:  # exited: removed unless it came back meanwhile
            self._pool.submit(self._remove_now, a.unit.id, True)

    def _remove_now(self, unit_id: str, exited: bool = False) -> None:
        self.collector.finish(unit_id)  # its last lines (a crash's) are kept in the app's log
        if exited and not self.runtime.remove_exited(unit_id):
            return  # it runs again (started by hand): the same unit, decided about by the next pass
        if not exited:
            self.runtime.remove(unit_id)
        with self._lock:
            self._removed[unit_id] = time.monotonic()

    def _start(self, action: Start, this: _Pass) -> None:
        dep, release, command = this.desired.specs[action.want.key]
        w = action.want
        spec = UnitSpec(
            app=w.app, deployment=w.deployment, process=w.process, index=action.index, release=w.release,
            plan=w.plan, generation=w.generation, web=w.web, stop_grace=self.settings.stop_grace,
            workload=Workload.of(release, command, self.plans[w.plan], self.ca_bundle))
        placeholder_id = f"starting:{w.app}:{w.deployment}:{w.process}:{action.index}:{w.release}:{w.plan}:{w.generation}"
        placeholder = Seen(placeholder_id, w.app, w.deployment, w.process, w.release, action.index, w.plan,
                           w.generation, True, 0.0, False, web=w.web)
        with self._lock:
            if placeholder_id in self._starting:
                return
            self._starting[placeholder_id] = placeholder

        def run() -> None:
            try:
                unit_id = self.runtime.start(spec)
                with self._lock:  # the placeholder goes once a pass lists the unit itself
                    self._started_ids[placeholder_id] = unit_id
                return
            except BaeError as exc:
                self._tell(w.app, w.deployment, f"{w.process}.{action.index}: {exc.message}")
                self._count_failure(w.key, dep.id, (w.release, w.plan, w.generation), exc.message,
                                    minimum=1.0)  # never retry a refused start at once
                if w.pending:
                    self.store.fail_release(release, exc.message, exc.hint)
            except Exception:
                log.exception("starting %s.%d failed", w.process, action.index)
            finally:
                self._wake.set()
            with self._lock:
                self._starting.pop(placeholder_id, None)

        self._tell(w.app, w.deployment, f"{w.process}.{action.index} starting (v{w.release}, {w.plan})")
        self._pool.submit(run)

    def _crashed(self, a: Crashed, this: _Pass) -> None:
        u = a.unit
        dep_id = this.desired.dep_id(u.app, u.deployment)
        self.decisions.mark_crash_counted(u.id, dep_id)
        if not a.counts:  # another unit of the type already counted this pass, or an outdated unit
            self._tell(u.app, u.deployment, a.reason)
            return
        delay = self._count_failure(u.key, dep_id, (u.release, u.plan, u.generation), a.reason)
        self._tell(u.app, u.deployment, f"{a.reason}, restarting " + (f"in {delay:.0f}s" if delay else "now"))

    def _count_failure(self, key: tuple[str, str, str], dep_id: int | None, shape: tuple[int, str, int],
                       reason: str, minimum: float = 0.0) -> float:
        """One more failure of a process type: its next start waits (the plan predicts the same
        delay, plan.backoff_delay)."""
        delay = max(minimum, backoff_delay(self.decisions.failures(key) + 1, self.settings.backoff_max))
        self.decisions.count_failure(key, dep_id, shape, delay, reason)
        return delay

    def _pending(self, a: Failed | Done, this: _Pass) -> Release | None:
        """The release a Failed/Done action is about, if it is still being deployed."""
        dep = this.desired.deployments.get((a.app, a.deployment))
        if dep is None:
            return None
        release = self.store.release(dep, a.release)
        return release if release.status == "pending" else None

    def _failed(self, a: Failed, this: _Pass) -> None:
        release = self._pending(a, this)
        if release is None:
            return
        dep = this.desired.deployments[(a.app, a.deployment)]
        back_to = self.store.active_release(dep)
        output = self.runtime.logs(a.unit_id, tail=15) if a.unit_id else ""
        if output.strip():
            self._tell(a.app, a.deployment, f"the last output of {a.unit}:")
            for line in output.rstrip().splitlines()[-15:]:
                self._tell(a.app, a.deployment, f"  {line[:300]}")
        self._tell(a.app, a.deployment, f"deploy of v{a.release} failed: {a.reason}; "
                   + (f"v{back_to.version} keeps serving" if back_to else "nothing was running before"))
        # after the lines above: whoever waits for the outcome has them once it reads it
        self.store.fail_release(release, a.reason, _failure_hint(a.cause, self.settings.boot_timeout))

    def _done(self, a: Done, this: _Pass) -> None:
        release = self._pending(a, this)
        if release is None:
            return
        self._tell(a.app, a.deployment, f"v{a.release} is live")
        this.live.append(release)

    # -- routes -----------------------------------------------------------------

    def _publish_routes(self, units: list[UnitInfo]) -> None:
        routes: dict[tuple[str, str], list[Endpoint]] = {}
        with self._lock:
            stopping = set(self._stopping)
        for info in units:
            if info.web and info.running and info.id not in stopping and self.decisions.up_since(info.id) is not None:
                routes.setdefault((info.app, info.deployment), []).append(Endpoint(info.unit, info.address))
        frozen = {k: tuple(sorted(v, key=lambda e: e.address)) for k, v in routes.items()}
        # every pass: the router also follows hostnames and deployments; it only reloads on a change
        if self.on_routes:
            try:
                self.on_routes(frozen)
            except Exception:
                log.exception("the router did not take the new routes")


def _failure_hint(cause: str, boot_timeout: int) -> str:
    """What to do about a unit that failed a deploy, by plan.crash_cause."""
    if cause == "port":
        return (f"A web process must listen on 0.0.0.0:$PORT within {boot_timeout} s "
                "(e.g. gunicorn app:app --bind 0.0.0.0:$PORT).")
    if cause == "memory":
        return "Use less memory, or a larger plan: ps:resize APP web=m1."
    return "The unit's last output is above; `logs` shows more."
