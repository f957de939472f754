"""Collects every unit's output into the app's log store, so it outlives the unit.

One thread per running unit follows its output (``Runtime.follow_logs``) and appends
lines as ``app[web.1]``. A follower that ends while its unit still runs (the
engine ends the stream as the unit is being stopped, or a quiet unit's stream
times out) is followed again from the last line collected, as is each unit after
a restart of `bae serve`: every line is stored once. Before the scheduler
removes an exited unit it calls ``finish``, so a crash's last lines are kept.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime

from bae.errors import BaeError
from bae.logstore import Entry, LogStore
from scheduler.runtime import Runtime, UnitInfo

__all__ = ["LogCollector"]

log = logging.getLogger("bae.logs")


class LogCollector:
    def __init__(self, runtime: Runtime, store: LogStore) -> None:
        self.runtime = runtime
        self.store = store
        self._threads: dict[str, threading.Thread] = {}
        self._done: set[str] = set()  # exited units already collected (checked once, not every pass)
        self._lock = threading.Lock()
        self._since = time.time()  # units started before this are adopted: resume after their last line
        self._last: dict[str, str] = {}  # container id -> time of its last line collected by this process

    def sync(self, units: list[UnitInfo]) -> None:
        """Follow every unit that has no follower yet (called on each reconcile pass)."""
        with self._lock:
            for gone in [cid for cid, t in self._threads.items() if not t.is_alive()]:
                del self._threads[gone]
            self._done &= {info.id for info in units}
            for gone in set(self._last) - {info.id for info in units}:
                del self._last[gone]
            for info in units:
                if info.id in self._threads or info.id in self._done or info.status == "created":
                    continue
                if not info.running:
                    self._done.add(info.id)
                    if self.store.last_time(info.app, info.deployment, info.id):
                        continue  # exited and already collected
                thread = threading.Thread(target=self._follow, args=(info,), daemon=True, name=f"logs-{info.unit}")
                self._threads[info.id] = thread
                thread.start()

    def finish(self, unit_id: str, timeout: float = 3.0) -> None:
        """Wait until an exited unit's output is all collected."""
        with self._lock:
            thread = self._threads.get(unit_id)
        if thread is not None:
            thread.join(timeout)

    def _follow(self, info: UnitInfo) -> None:
        with self._lock:
            since = self._last.get(info.id)
        if since is None and (info.started_at or 0) < self._since:  # adopted: resume where the last run stopped
            since = self.store.last_time(info.app, info.deployment, info.id)
        try:
            for lines in self.runtime.follow_logs(
                    info.id, datetime.fromisoformat(since).timestamp() + 0.000001 if since else None):
                batch = [Entry(t, "app", info.unit, message, info.id) for t, message in lines
                         if not (since and t <= since)]
                if batch:
                    self.store.append(info.app, info.deployment, batch)
                    with self._lock:
                        self._last[info.id] = batch[-1].t
        except BaeError as exc:  # the unit went away mid-stream
            log.debug("log stream of %s ended: %s", info.name, exc.message)
