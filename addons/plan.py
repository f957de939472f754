"""The healing decision for add-on containers: ``heal(wanted, seen, now) -> actions``, pure.

Rules, per add-on the store holds (``Wanted``), given its containers (``Seen``,
from labels):
1. Containers of an older generation (addons:restart, a credential rotation and
   restores bump it) or a second running one are removed: one server per data
   directory.
2. A stopped container of the current generation is removed and counted as a
   crash; one that ran less than ``SHORT_RUN`` seconds counts as a failed start,
   which backs the next start off (``backoff``: 1 s, 2 s, 4 s … up to 60 s).
3. With no running container, one is started on the same data, unless the
   add-on is backed off (``not_before``) or busy (a command holds its lock).
4. A running container that stayed up ``RESET_AFTER`` seconds clears the failures.
5. Containers of add-ons the store no longer holds are removed.
Actions are applied by healer.py; this module does no I/O.
"""

from __future__ import annotations

from datetime import datetime

from dataclasses import dataclass

__all__ = ["Wanted", "Seen", "Start", "Remove", "Failed", "Reset", "heal", "backoff", "backup_due", "down_reason",
           "note_down", "SHORT_RUN", "RESET_AFTER"]

SHORT_RUN = 10.0
RESET_AFTER = 30.0
BACKOFF_MAX = 60.0


@dataclass(frozen=True)
class Wanted:
    app: str
    name: str
    generation: int
    failures: int = 0
    not_before: float = 0.0  # epoch seconds
    busy: bool = False  # a command is working on it (restore, restart, destroy)


@dataclass(frozen=True)
class Seen:
    id: str
    app: str
    name: str
    generation: int
    running: bool
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    oom: bool = False


@dataclass(frozen=True)
class Start:
    app: str
    name: str
    reason: str  # what the event log says: "crashed (exit 1)", "vanished", ...


@dataclass(frozen=True)
class Remove:
    id: str
    app: str
    name: str
    reason: str


@dataclass(frozen=True)
class Failed:
    """A start that did not last: count it and back off."""
    app: str
    name: str
    failures: int
    not_before: float


@dataclass(frozen=True)
class Reset:
    app: str
    name: str


def backoff(failures: int) -> float:
    return min(BACKOFF_MAX, 2.0 ** max(0, failures - 1)) if failures else 0.0


def _why(seen: Seen) -> str:
    if seen.oom:
        return "ran out of memory"
    return f"crashed (exit {seen.exit_code})" if seen.exit_code not in (None, 0) else "stopped"


def heal(wanted: list[Wanted], seen: list[Seen], now: float) -> list:
    actions: list = []
    wants = {(w.app, w.name): w for w in wanted}
    for s in seen:
        if (s.app, s.name) not in wants:
            actions.append(Remove(s.id, s.app, s.name, "its add-on is gone"))
    for key, want in sorted(wants.items()):
        mine = [s for s in seen if (s.app, s.name) == key]
        if want.busy:
            continue
        stale = [s for s in mine if s.generation != want.generation]
        current = [s for s in mine if s.generation == want.generation]
        running = [s for s in current if s.running]
        dead = [s for s in current if not s.running]
        actions += [Remove(s.id, s.app, s.name, "an older generation") for s in stale]
        actions += [Remove(s.id, s.app, s.name, "a second server on the same data") for s in running[1:]]
        reason = "vanished" if not dead else _why(dead[0])
        failures = want.failures
        for s in dead:
            actions.append(Remove(s.id, s.app, s.name, _why(s)))
            if s.started_at and s.finished_at and s.finished_at - s.started_at < SHORT_RUN:
                failures += 1
        if failures != want.failures:
            actions.append(Failed(want.app, want.name, failures, now + backoff(failures)))
        if running:
            if want.failures and running[0].started_at and now - running[0].started_at >= RESET_AFTER:
                actions.append(Reset(want.app, want.name))
            continue
        not_before = now + backoff(failures) if failures != want.failures else want.not_before
        if now >= not_before:
            actions.append(Start(want.app, want.name, reason))
    return actions


def down_reason(seen: Seen | None) -> str:
    """How an add-on without a running server went down, in the words of `ps` and its events."""
    if seen is None:
        return "no container"
    if seen.oom:
        return "ran out of memory"
    return f"exited {seen.exit_code}" if seen.exit_code is not None else "stopped"


def note_down(known: dict, wanted: list[Wanted], seen: list[Seen], now: float) -> dict:
    """Since when and why each add-on has had no running container of its generation: (epoch, reason)
    by (app, name). What an earlier pass noted stays (``known``); a new entry takes a stopped
    container's own end time when one is seen, else ``now``; an add-on running again drops out."""
    down = {}
    for w in wanted:
        key = (w.app, w.name)
        mine = [s for s in seen if (s.app, s.name) == key and s.generation == w.generation]
        if any(s.running for s in mine):
            continue
        if key in known:
            down[key] = known[key]
            continue
        dead = sorted(mine, key=lambda s: s.finished_at or 0.0)
        down[key] = (dead[-1].finished_at or now, down_reason(dead[-1])) if dead else (now, down_reason(None))
    return down


def backup_due(schedule: str, since: datetime | None, scheduled: list[datetime], now: datetime) -> bool:
    """Whether a daily backup at ``schedule`` (HH:MM, UTC) is to be captured ``now``.

    It is due at the last HH:MM at or before ``now`` (today's, or yesterday's before that time), unless
    the schedule was set (``since``) after that moment — a new schedule waits for its next HH:MM
    rather than firing at once — or a scheduled backup was started since (``scheduled``: their
    start times). A missed time (`bae serve` was down) is caught up once.
    """
    from datetime import timedelta

    hour, minute = (int(x) for x in schedule.split(":"))
    due = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if due > now:
        due -= timedelta(days=1)
    if since is not None and since > due:
        return False
    return not any(started >= due for started in scheduled)
