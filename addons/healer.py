"""The add-on watcher in `bae serve`: heals add-on containers and runs scheduled backups.

It wakes on Docker events of add-on containers and at least every ``INTERVAL``
seconds, observes the containers by label, asks ``plan.heal`` what to do and does
it, writing one event line per change to the app's logs (``bae[addons]: postgres-1
was down since 12:00:03 (exited 137); restarted on its data``). Failures and
backoff are kept in the store, so a restarted `bae serve` goes on where it stopped.
Commands that work on an add-on hold its lock (``lock``), and the healer leaves a
locked add-on alone (it still notes since when one is down).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Iterator

from addons.engine import engine
from addons.plan import Failed, Remove, Reset, Seen, Start, Wanted, backup_due, heal, note_down
from addons.service import Services
from bae.console import clock
from bae.errors import BaeError

__all__ = ["Healer", "lock", "app_event", "settled"]

log = logging.getLogger("bae.addons.healer")

INTERVAL = 2.0


@contextlib.contextmanager
def lock(services: Services, app: str, name: str, wait: bool = True) -> Iterator[bool]:
    """Hold the add-on's lock (a file lock shared by the daemon and `bae` commands); yields
    False when ``wait`` is off and someone else holds it."""
    path = services.root / app / f".{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def app_event(platform, app: str, text: str) -> None:
    """One line in the logs of every deployment of ``app``: ``bae[addons]: text``."""
    try:
        deps = platform.store.deployments(platform.store.app(app))
    except BaeError:
        return
    for dep in deps:
        platform.logs.event(dep.app, dep.name, "addons", text)


def settled(before: list, after: list, addons: dict) -> list:
    """The containers a healing pass works on: those of the look taken with the add-ons' locks held
    (``after``), except a container of an add-on without a row that the first look (``before``, taken
    before the rows were read) did not have: its row may be newer than the rows read, so it is no
    orphan yet; the next pass sees it with its row."""
    known = {info.id for info in before}
    return [info for info in after
            if info.id in known or (info.labels.get("bae.app", ""), info.labels.get("bae.addon", "")) in addons]


def _epoch(stamp: str | None) -> float:
    return datetime.fromisoformat(stamp).timestamp() if stamp else 0.0


class Healer:
    def __init__(self, platform, services: Services) -> None:
        self.platform = platform
        self.services = services
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._backing_up: set[tuple[str, str]] = set()
        # (app, name) -> (since, why) while an add-on has no running server, for the event of its restart;
        # in memory: after a restart of `bae serve` the first pass that sees it down gives the time
        self._down: dict[tuple[str, str], tuple[float, str]] = {}

    def start(self) -> None:
        for target, name in ((self._run, "addons-healer"), (self._watch, "addons-events")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            if thread.name == "addons-healer":
                thread.join(30)

    def wake(self) -> None:
        self._wake.set()

    def _watch(self) -> None:
        def on_event(action: str, labels: dict) -> None:
            if action in ("die", "destroy", "oom", "stop", "kill"):
                self._wake.set()

        try:
            engine().watch(self.services.filters(), on_event, self._stop)
        except BaeError as exc:
            log.warning("not watching add-on containers: %s", exc.message)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except BaeError as exc:
                log.warning("add-on healing pass failed: %s", exc.message)
            except Exception:
                log.exception("add-on healing pass failed")
            self._wake.wait(INTERVAL)
            self._wake.clear()

    def tick(self) -> None:
        store = self.platform.store
        # containers first, then the store: a container seen here has its row already (addons:create
        # inserts the row before it starts one), so a new add-on is never taken for an orphan
        before = self.services.containers()
        addons = {(a.app, a.name): a for a in store.addons()}
        if not addons and not before:
            return
        wanted = []
        held = []
        for key, addon in addons.items():
            ctx = lock(self.services, addon.app, addon.name, wait=False)
            got = ctx.__enter__()
            if got:
                held.append(ctx)
            wanted.append(Wanted(addon.app, addon.name, addon.generation, addon.failures,
                                 _epoch(addon.not_before), busy=not got))
        try:
            # and again once the locks are held: a command that held one (addons:create, restart,
            # rotate) may have replaced that add-on's container since the first look, and the old
            # view would have the healer start it a second time over the new one
            containers = settled(before, self.services.containers(), addons)
            seen = [Seen(i.id, i.labels.get("bae.app", ""), i.labels.get("bae.addon", ""),
                         int(i.labels.get("bae.generation", "0") or 0), i.running, i.started_at, i.finished_at,
                         i.exit_code, i.oom) for i in containers]
            self._down = note_down(self._down, wanted, seen, time.time())
            for action in heal(wanted, seen, time.time()):
                self._apply(action, addons)
        finally:
            for ctx in held:
                ctx.__exit__(None, None, None)
        self._schedules(list(addons.values()))

    def _apply(self, action, addons) -> None:
        store = self.platform.store
        if isinstance(action, Remove):
            engine().remove(action.id)
            log.info("add-on %s/%s: removed container %s (%s)", action.app, action.name, action.id[:12], action.reason)
        elif isinstance(action, Failed):
            stamp = datetime.fromtimestamp(action.not_before, timezone.utc).isoformat()
            store.update_addon(addons[(action.app, action.name)], failures=action.failures, not_before=stamp)
            app_event(self.platform, action.app, f"{action.name} failed to start {action.failures} time(s); "
                                                 f"next try in {max(0, action.not_before - time.time()):.0f}s")
        elif isinstance(action, Reset):
            store.update_addon(addons[(action.app, action.name)], failures=0, not_before=None)
        elif isinstance(action, Start):
            addon = addons[(action.app, action.name)]
            try:
                self.services.start(addon)
            except BaeError as exc:
                log.warning("add-on %s/%s could not be started: %s", addon.app, addon.name, exc.message)
                app_event(self.platform, addon.app, f"{addon.name} could not be started: {exc.message}")
                return
            since, why = self._down.get((addon.app, addon.name), (time.time(), action.reason))
            log.info("add-on %s/%s restarted (%s)", addon.app, addon.name, action.reason)
            app_event(self.platform, addon.app, f"{addon.name} was down since {clock(since)} ({why}); "
                                                f"restarted on its data")

    # -- scheduled backups -----------------------------------------------------------------

    def _schedules(self, addons) -> None:
        from addons.backups import capture

        now = datetime.now(timezone.utc)
        for addon in addons:
            if not addon.schedule or (addon.app, addon.name) in self._backing_up:
                continue
            since = datetime.fromisoformat(addon.schedule_since) if addon.schedule_since else None
            started = [datetime.fromisoformat(b.created_at)
                       for b in self.platform.store.backups(addon.app, addon.name) if b.scheduled]
            if not backup_due(addon.schedule, since, started, now):
                continue
            self._backing_up.add((addon.app, addon.name))

            def run(addon=addon) -> None:
                from addons.backups import prune

                try:
                    backup = capture(self.services, addon, lambda _: None, scheduled=True)
                    app_event(self.platform, addon.app, f"{addon.name}: scheduled backup b{backup.number} verified")
                    prune(self.services, addon)
                except BaeError as exc:
                    app_event(self.platform, addon.app, f"{addon.name}: scheduled backup failed: {exc.message}")
                finally:
                    self._backing_up.discard((addon.app, addon.name))

            threading.Thread(target=run, name=f"backup-{addon.app}-{addon.name}", daemon=True).start()
