"""The reconcile loop inside `bae serve`: observe, plan, act, repeat.

Observed state comes from the runtime (containers by label) plus what this
process knows about them (which web units accept connections, which are
being stopped, which starts are under way). The desired state comes from the
store. ``plan`` decides; this module performs the actions on a thread pool so
that a slow stop never delays a start. It wakes immediately on a deploy, a
scale, a restart, a Docker event (a unit died) or a datagram on the wake
socket (from `bae` commands in other processes), and at least every
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
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from bae import config
from bae.errors import BaeError, DeployFailed
from bae.logstore import LogStore
from bae.model import Endpoint, slug
from bae.store import Store
from scheduler.logs import LogCollector
from scheduler.plan import (Backoff, Context, Crashed, Done, Failed, Remove, Seen, Start, Stop, Want,
                            backoff_delay, plan, rollout_limit)
from scheduler.plans import memory_labels
from scheduler.runtime import Runtime, UnitInfo, UnitSpec, Workload

__all__ = ["Scheduler"]

log = logging.getLogger("bae.scheduler")


@dataclass
class _Waiter:
    event: threading.Event = field(default_factory=threading.Event)
    error: str | None = None
    hint: str | None = None
    progress: Callable[[str], None] | None = None


class Scheduler:
    def __init__(self, store: Store, settings: config.Settings, runtime: Runtime, logs: LogStore, wake_socket: Path,
                 on_routes: Callable[[dict[tuple[str, str], tuple[Endpoint, ...]]], None] | None = None,
                 before_stop: Callable[[], None] | None = None) -> None:
        self.store = store
        self.logs = logs
        self.plans = settings.plans
        self.ca_bundle = settings.build.ca_bundle
        self.settings = settings.scheduler
        self._memory = memory_labels(settings.plans)  # for OOM messages; settings are fixed while serving
        self.runtime = runtime
        self.on_routes = on_routes
        self.before_stop = before_stop  # waits until the router has stopped sending a stopping unit requests
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="unit")
        self._starting: dict[str, Seen] = {}  # placeholder id -> Seen, until the container exists
        self._started_ids: dict[str, str] = {}  # placeholder id -> container id, once created
        self._started: dict[str, float] = {}  # container id -> when first seen without a start time
        self._stopping: set[str] = set()
        self._up: dict[str, float] = {}  # container id -> monotonic time it was first up
        self._recorded: set[str] = set()
        self._backoff: dict[tuple, Backoff] = {}
        self._waiters: dict[tuple[str, str, int], _Waiter] = {}  # (app, deployment, version)
        self._threads: list[threading.Thread] = []
        self._event_at = 0.0
        self._shapes: dict[tuple, tuple] = {}  # (app, dep, process) -> (release, plan, generation) last wanted
        self.sock_path = wake_socket
        self.collector = LogCollector(runtime, logs)

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        self._recover()
        for target, name in ((self._run, "scheduler"), (self._watch, "docker-events"), (self._listen, "wake-socket")):
            thread = threading.Thread(target=target, name=name, daemon=True)
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
        """Deploys that were under way when the platform stopped are refused: their pushes are gone."""
        store = self.store
        releases, builds = store.fail_interrupted("the platform restarted during the deploy")
        for release in releases:
            log.info("v%d (deployment %d) was being deployed when bae stopped; it failed", release.version,
                     release.deployment_id)
        if builds:
            log.info("%d build(s) were running when bae stopped; they failed", builds)
        now_wall, now = time.time(), time.monotonic()
        deps = {d.id: d for d in store.deployments()}
        for (dep_id, process), row in store.backoffs().items():
            if dep_id in deps:
                not_before = datetime.fromisoformat(row["not_before"]).timestamp() if row["not_before"] else 0
                self._backoff[(deps[dep_id].app, deps[dep_id].name, process)] = Backoff(
                    row["failures"], now + max(0.0, not_before - now_wall))

    def _watch(self) -> None:
        def on_event(action: str) -> None:
            if action in ("die", "destroy", "oom", "start", "stop", "kill"):
                # the container list may lag the event a little: poll fast for a moment
                self._event_at = time.monotonic()
                self._wake.set()

        self.runtime.watch(on_event, self._stop)

    def _listen(self) -> None:
        try:
            self.sock_path.unlink()
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.sock_path))
        os.chmod(self.sock_path, 0o600)
        sock.settimeout(1.0)
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
            except Exception:
                log.exception("reconcile pass failed; retrying")
                busy = False
                self._stop.wait(1)
            self._wake.wait(0.05 if busy else self.settings.interval)
            self._wake.clear()

    # -- deploys ----------------------------------------------------------------

    def deploy(self, dep, release, progress: Callable[[str], None] | None = None) -> None:
        """Run ``release`` for ``dep`` with the zero-downtime rule; raise DeployFailed if it cannot."""
        store = self.store
        waiter = _Waiter(progress=progress)
        key = (dep.app, dep.name, release.version)
        with self._lock:
            self._waiters[key] = waiter
        try:
            store.set_target(dep.id, release.version)
            self.wake()
            limit = rollout_limit(store.formation(dep), release.process_types, self.settings.boot_timeout,
                                  self.settings.rollout_batch)
            if not waiter.event.wait(limit):  # roll_out marks the release failed
                raise DeployFailed(f"the deploy of v{release.version} did not finish within {limit} s")
        finally:
            with self._lock:
                self._waiters.pop(key, None)
        if waiter.error:
            raise DeployFailed(waiter.error, waiter.hint)

    def _tell(self, app: str, deployment: str, text: str) -> None:
        """A platform event: the operator's log, the pusher waiting on a deploy, the app's log."""
        log.info("%s: %s", slug(app, deployment), text)
        with self._lock:
            waiters = [w for (a, d, _), w in self._waiters.items() if (a, d) == (app, deployment)]
        for w in waiters:
            if w.progress:
                w.progress(text)
        self.logs.event(app, deployment, "scheduler", text)

    # -- one pass ---------------------------------------------------------------

    def tick(self) -> bool:
        """Observe, plan, act. Returns True while something is in flight (poll fast)."""
        store = self.store
        now = time.monotonic()
        wants: list[Want] = []
        specs: dict[tuple[str, str, str], tuple] = {}
        deps: dict[tuple[str, str], object] = {}  # (app, name) -> bae.model.Deployment
        pending = []
        for dep, release, formation in store.targets():
            deps[(dep.app, dep.name)] = dep
            if release is None:
                continue
            if release.status == "pending":
                pending.append((dep.app, dep.name, release.version))
            for process, command in release.process_types.items():
                if process == "release":
                    continue
                entry = formation.get(process)
                if entry is None:
                    continue
                w = Want(dep.app, dep.name, process, release.version, release.status == "pending",
                         entry.quantity, entry.plan, entry.generation, process == "web")
                wants.append(w)
                specs[w.key] = (dep, release, command)
        infos = self.runtime.list_units()
        by_id = {i.id: i for i in infos}
        self.collector.sync(infos)
        seen = [self._seen(info, now) for info in infos]
        with self._lock:
            for placeholder, unit_id in list(self._started_ids.items()):
                if unit_id in by_id:  # listed now: the container stands for itself
                    self._starting.pop(placeholder, None)
                    del self._started_ids[placeholder]
            seen += list(self._starting.values())
            self._stopping &= set(by_id)
            for gone in [i for i in self._up if i not in by_id]:
                del self._up[gone]
            for gone in [i for i in self._started if i not in by_id]:
                del self._started[gone]
            self._recorded &= set(by_id)
        self._reset_backoff(seen, now, deps)
        for w in wants:  # a new release, plan or restart deserves a fresh start: forget old crashes
            shape = (w.release, w.plan, w.generation)
            if self._shapes.get(w.key, shape) != shape and w.key in self._backoff:
                del self._backoff[w.key]
                if (w.app, w.deployment) in deps:
                    store.set_backoff(deps[(w.app, w.deployment)].id, w.process, 0, None, None)
            self._shapes[w.key] = shape
        ctx = Context(now=now, boot_timeout=self.settings.boot_timeout, batch=max(1, self.settings.rollout_batch),
                      backoff_max=self.settings.backoff_max, backoff=dict(self._backoff),
                      memory=self._memory)
        actions = plan(wants, seen, ctx, tuple(pending))
        self._resolutions: list[tuple] = []
        self._apply(actions, specs, deps, by_id)
        self._publish_routes(infos)
        for resolution in self._resolutions:  # pushes learn the outcome once the router routes it
            self._resolve(*resolution)
        with self._lock:
            busy = bool(self._starting) or any(not s.up and s.running and not s.stopping for s in seen)
        return busy or now - self._event_at < 1.0

    def _seen(self, info: UnitInfo, now: float) -> Seen:
        if info.started_at:  # the container's own start time: the same age `ps` shows
            age = max(0.0, time.time() - info.started_at)
        else:  # created, not started yet
            age = now - self._started.setdefault(info.id, now)
        up = info.id in self._up
        if info.running and not up:
            if self.runtime.is_up(info, age):
                self._up[info.id] = now
                up = True
                if info.release:
                    self._tell(info.app, info.deployment, f"{info.unit} up" +
                               (f" after {age:.1f} s" if age < 600 else ""))
        if not info.running:
            self._up.pop(info.id, None)
        return Seen(info.id, info.app, info.deployment, info.process, info.release, info.index, info.plan,
                    info.generation, info.running, age, up, info.exit_code, info.oom, info.id in self._stopping,
                    info.web, info.id in self._recorded)

    def _reset_backoff(self, seen: list[Seen], now: float, deps: dict) -> None:
        for s in seen:
            if s.up and s.running and s.id in self._up and now - self._up[s.id] >= self.settings.backoff_reset:
                if self._backoff.get(s.key, Backoff()).failures:
                    self._backoff.pop(s.key, None)
                    if (s.app, s.deployment) in deps:
                        self.store.set_backoff(deps[(s.app, s.deployment)].id, s.process, 0, None, None)

    # -- actions ----------------------------------------------------------------

    def _apply(self, actions: list, specs: dict, deps: dict, by_id: dict) -> None:
        stops = [a for a in actions if isinstance(a, Stop)]
        for a in stops:
            if a.unit.id in by_id:
                with self._lock:
                    self._stopping.add(a.unit.id)
        if stops:  # take them out of the router before they get SIGTERM
            self._publish_routes(list(by_id.values()))
        for a in actions:
            try:
                if isinstance(a, Start):
                    self._start(a, specs[a.want.key])
                elif isinstance(a, Stop):
                    if a.unit.id in by_id:
                        self._tell(a.unit.app, a.unit.deployment, f"{a.unit.name} (v{a.unit.release}) stopping: {a.reason}")
                        self._pool.submit(self._stop_unit, a.unit.id)
                elif isinstance(a, Remove):
                    if a.unit.id in by_id:
                        self._pool.submit(self._remove_unit, a.unit.id)
                elif isinstance(a, Crashed):
                    self._crashed(a, deps)
                elif isinstance(a, Failed):
                    self._failed(a, deps)
                elif isinstance(a, Done):
                    self._done(a, deps)
            except Exception:
                log.exception("applying %s failed", type(a).__name__)

    def _stop_unit(self, unit_id: str) -> None:
        try:
            if self.before_stop:
                self.before_stop()
            self.runtime.stop(unit_id, self.settings.stop_grace)
            self._remove_unit(unit_id)
        finally:
            with self._lock:  # if it is still listed, the next pass decides again
                self._stopping.discard(unit_id)
            self._wake.set()

    def _remove_unit(self, unit_id: str) -> None:
        self.collector.finish(unit_id)  # its last lines (a crash's) are kept in the app's log
        self.runtime.remove(unit_id)

    def _start(self, action: Start, spec_parts: tuple) -> None:
        dep, release, command = spec_parts
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
                with self._lock:  # the placeholder goes once a pass lists the container itself
                    self._started_ids[placeholder_id] = unit_id
                return
            except BaeError as exc:
                self._tell(w.app, w.deployment, f"{w.process}.{action.index}: {exc.message}")
                self._count_failure(w.key, dep, exc.message, minimum=1.0)  # never retry a refused start at once
                if w.pending:
                    self._resolve(w.app, w.deployment, w.release, exc.message, exc.hint)
                    self.store.fail_release(release, exc.message)
            except Exception:
                log.exception("starting %s.%d failed", w.process, action.index)
            finally:
                self._wake.set()
            with self._lock:
                self._starting.pop(placeholder_id, None)

        self._tell(w.app, w.deployment, f"{w.process}.{action.index} starting (v{w.release}, {w.plan})")
        self._pool.submit(run)

    def _crashed(self, a: Crashed, deps: dict) -> None:
        u = a.unit
        self._recorded.add(u.id)
        if not a.counts:  # another unit of the type already counted this pass, or an outdated unit
            self._tell(u.app, u.deployment, a.reason)
            return
        delay = self._count_failure(u.key, deps.get((u.app, u.deployment)), a.reason)
        self._tell(u.app, u.deployment, f"{a.reason}, restarting " + (f"in {delay:.0f}s" if delay else "now"))

    def _count_failure(self, key: tuple[str, str, str], dep, reason: str, minimum: float = 0.0) -> float:
        """One more failure of a process type: its next start waits (the plan predicts the same
        delay, plan.backoff_delay); stored so that `ps` can say "restarting in Ns"."""
        failures = self._backoff.get(key, Backoff()).failures + 1
        delay = max(minimum, backoff_delay(failures, self.settings.backoff_max))
        self._backoff[key] = Backoff(failures, time.monotonic() + delay)
        if dep:
            wall = datetime.now(timezone.utc) + timedelta(seconds=delay)
            self.store.set_backoff(dep.id, key[2], failures, wall.isoformat(), reason)
        return delay

    def _pending(self, a, deps: dict):
        """The release a Failed/Done action is about, if it is still being deployed."""
        dep = deps.get((a.app, a.deployment))
        if dep is None:
            return None
        release = self.store.release(dep, a.release)
        return release if release.status == "pending" else None

    def _failed(self, a: Failed, deps: dict) -> None:
        release = self._pending(a, deps)
        if release is None:
            return
        back_to = self.store.fail_release(release, a.reason)
        output = self.runtime.logs(a.unit_id, tail=15) if a.unit_id else ""
        if output.strip():
            self._tell(a.app, a.deployment, f"the last output of {a.unit}:")
            for line in output.rstrip().splitlines()[-15:]:
                self._tell(a.app, a.deployment, f"  {line[:300]}")
        self._tell(a.app, a.deployment, f"deploy of v{a.release} failed: {a.reason}; "
                   + (f"v{back_to} keeps serving" if back_to else "nothing was running before"))
        self._resolve(a.app, a.deployment, a.release, a.reason, _failure_hint(a.cause, self.settings.boot_timeout))

    def _done(self, a: Done, deps: dict) -> None:
        release = self._pending(a, deps)
        if release is None:
            return
        self.store.activate(release)
        self._tell(a.app, a.deployment, f"v{a.release} is live")
        self._resolutions.append((a.app, a.deployment, a.release, None))

    def _resolve(self, app: str, deployment: str, version: int, error: str | None, hint: str | None = None) -> None:
        with self._lock:
            waiter = self._waiters.get((app, deployment, version))
        if waiter:
            waiter.error, waiter.hint = error, hint
            waiter.event.set()

    # -- routes -----------------------------------------------------------------

    def _publish_routes(self, infos: list[UnitInfo]) -> None:
        routes: dict[tuple[str, str], list[Endpoint]] = {}
        with self._lock:
            for info in infos:
                if info.web and info.running and info.id in self._up and info.id not in self._stopping:
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
