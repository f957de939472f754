"""What the scheduler's decisions depend on besides desired and observed state, kept in the store.

Level-based as the loop is, three facts cannot be read back from the runtime:
how often a process type crashed in a row (its backoff, and under which release,
plan and restart generation that was counted), when a unit was first up (a web
unit that once answered is not judged by the boot timeout again; a type's
backoff resets once a unit stayed up long enough), and whether a unit's crash
was counted already (an exited unit is kept while its type backs off). Like
kopf's progress annotations they are stored, never only in memory, so a
restart of `bae serve` decides exactly as before. Times are epoch seconds.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timezone

from bae.store import Store
from scheduler.plan import Backoff

__all__ = ["Decisions", "Shape"]

Key = tuple[str, str, str]  # (app, deployment, process)
Shape = tuple[int, str, int]  # (release, plan, generation) a backoff was counted under


@dataclass
class _Unit:
    deployment_id: int | None
    up_since: float | None = None
    crash_counted: bool = False


class Decisions:
    """The scheduler's decision state: read once from the store, written through on every change."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._backoff: dict[Key, tuple[Backoff, Shape | None]] = {}
        self._units: dict[str, _Unit] = {}

    def load(self, deployments: dict[int, tuple[str, str]]) -> None:
        """Read the stored state (``deployments``: id -> (app, name), to key backoffs by name)."""
        with self._lock:
            for (dep_id, process), row in self.store.backoffs().items():
                if dep_id in deployments:
                    not_before = datetime.fromisoformat(row["not_before"]).timestamp() if row["not_before"] else 0.0
                    shape = tuple(json.loads(row["shape"])) if row.get("shape") else None
                    self._backoff[(*deployments[dep_id], process)] = (Backoff(row["failures"], not_before), shape)
            self._units = {uid: _Unit(r["deployment_id"], r["up_since"], bool(r["crash_counted"]))
                           for uid, r in self.store.unit_states().items()}

    # -- backoff per process type ------------------------------------------------

    def backoffs(self) -> dict[Key, Backoff]:
        with self._lock:
            return {key: backoff for key, (backoff, _) in self._backoff.items()}

    def failures(self, key: Key) -> int:
        with self._lock:
            return self._backoff[key][0].failures if key in self._backoff else 0

    def count_failure(self, key: Key, dep_id: int | None, shape: Shape, delay: float, reason: str) -> None:
        """One more failure of a process type: its next start waits ``delay`` seconds."""
        with self._lock:
            failures = (self._backoff[key][0].failures if key in self._backoff else 0) + 1
            not_before = datetime.now(timezone.utc).timestamp() + delay
            self._backoff[key] = (Backoff(failures, not_before), shape)
        if dep_id is not None:  # shown by `ps` as "restarting in Ns"
            self.store.set_backoff(dep_id, key[2], failures, datetime.fromtimestamp(not_before, timezone.utc).isoformat(),
                                   reason, list(shape))

    def reset(self, key: Key, dep_id: int | None, unless_shape: Shape | None = None) -> None:
        """Forget a type's crashes (it stayed up, or it runs a new release, plan or generation now)."""
        with self._lock:
            entry = self._backoff.get(key)
            if entry is None or (unless_shape is not None and entry[1] in (None, unless_shape)):
                return
            del self._backoff[key]
        if dep_id is not None:
            self.store.set_backoff(dep_id, key[2], 0, None, None)

    # -- per unit ----------------------------------------------------------------

    def up_since(self, unit_id: str) -> float | None:
        with self._lock:
            unit = self._units.get(unit_id)
            return unit.up_since if unit else None

    def crash_counted(self, unit_id: str) -> bool:
        with self._lock:
            unit = self._units.get(unit_id)
            return bool(unit and unit.crash_counted)

    def mark_up(self, unit_id: str, dep_id: int | None, when: float) -> None:
        self._set(unit_id, dep_id, up_since=when)

    def mark_crash_counted(self, unit_id: str, dep_id: int | None) -> None:
        self._set(unit_id, dep_id, crash_counted=True)

    def forget_crash(self, unit_id: str) -> None:
        """A unit whose crash was counted runs again (started by hand): its next crash counts too."""
        with self._lock:
            unit = self._units.get(unit_id)
            if unit is None or not unit.crash_counted:
                return
        self._set(unit_id, unit.deployment_id, crash_counted=False)

    def forget_up(self, unit_id: str) -> None:
        """A unit that is no longer running is not up (its crash record stays)."""
        with self._lock:
            unit = self._units.get(unit_id)
            if unit is None or unit.up_since is None:
                return
            unit.up_since = None
            dep_id, counted = unit.deployment_id, unit.crash_counted
        self.store.set_unit_state(unit_id, dep_id, up_since=None, crash_counted=counted)

    def _set(self, unit_id: str, dep_id: int | None, **changes) -> None:
        with self._lock:
            unit = self._units.setdefault(unit_id, _Unit(dep_id))
            for name, value in changes.items():
                setattr(unit, name, value)
            row = (unit.deployment_id, unit.up_since, unit.crash_counted)
        self.store.set_unit_state(unit_id, row[0], up_since=row[1], crash_counted=row[2])

    def prune(self, listed: set[str]) -> None:
        """Units the runtime no longer lists are gone: so is what was recorded about them."""
        with self._lock:
            gone = [uid for uid in self._units if uid not in listed]
            for uid in gone:
                del self._units[uid]
        if gone:
            self.store.forget_units(gone)
