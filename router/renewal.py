"""The certificate decision: which deployments need an ACME order now, and when to look again.

Pure: ``plan(wanted, now, ...) -> Plan`` over plain dataclasses, unit-tested
without a CA (tests/unit/test_renewal.py). router/certloop.py gathers the input
from the store and carries the orders out.

Rules, per deployment with automatic certificates on (certs:auto):
1. The names to cover are its hostnames except wildcards (HTTP-01 cannot prove
   them) and except names a valid uploaded certificate (its own or the
   platform's) covers: an upload is the owner's choice and wins.
2. Nothing to cover: nothing to do.
3. An order is due when no ACME certificate of the deployment covers every name,
   or when a third of the current one's lifetime is left, or when the CA's
   renewal information (ARI) suggested a time that has come.
4. A due order waits while the deployment is in backoff (``not_before``, stored
   after a failure: ``retry_min`` doubled per failure in a row, at most
   ``retry_max``, or the CA's Retry-After if later).
5. The next look is the earliest renewal time or backoff end among the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bae.model import Certificate, TlsState
from router.certs import covers

__all__ = ["Wanted", "Order", "Plan", "plan", "renew_at", "backoff", "RENEW_FRACTION"]

RENEW_FRACTION = 1 / 3  # renew when this much of the lifetime is left


@dataclass(frozen=True)
class Wanted:
    """One deployment as the plan sees it."""

    deployment_id: int
    slug: str
    hostnames: tuple[str, ...]
    state: TlsState
    certs: tuple[Certificate, ...] = ()  # its own certificates
    renewal_hint: datetime | None = None  # the CA's suggested renewal time (ARI), if it gave one


@dataclass(frozen=True)
class Order:
    deployment_id: int
    slug: str
    hostnames: tuple[str, ...]
    reason: str  # "new", "hostnames changed", "renewal due"
    replaces: tuple[str, ...] = ()  # ACME certificates the new one supersedes


@dataclass(frozen=True)
class Plan:
    orders: tuple[Order, ...] = ()
    next_check: datetime | None = None  # None: nothing will become due by itself
    waiting: dict = field(default_factory=dict)  # deployment id -> (reason, until): due but backing off


def _dt(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def renew_at(cert: Certificate) -> datetime:
    """When a third of ``cert``'s lifetime is left."""
    start, end = _dt(cert.not_before), _dt(cert.not_after)
    return end - (end - start) * RENEW_FRACTION


def backoff(failures: int, retry_min: float, retry_max: float) -> float:
    """Seconds to wait after ``failures`` failed orders in a row."""
    if failures <= 0:
        return 0.0
    return min(retry_max, retry_min * 2 ** min(failures - 1, 30))


def _valid(cert: Certificate, now: datetime) -> bool:
    return _dt(cert.not_before) <= now < _dt(cert.not_after)


def plan(wanted: list[Wanted], platform_certs: list[Certificate], now: datetime) -> Plan:
    orders, waiting, checks = [], {}, []
    uploaded_platform = [c for c in platform_certs if _valid(c, now)]
    for w in wanted:
        if not w.state.auto:
            continue
        uploaded = [c for c in w.certs if c.source == "uploaded" and _valid(c, now)] + uploaded_platform
        names = tuple(sorted(h for h in w.hostnames
                             if not h.startswith("*.") and not any(covers(c.hostnames, h) for c in uploaded)))
        if not names:
            continue
        acme = [c for c in w.certs if c.source == "acme"]
        current = [c for c in acme if _valid(c, now) and all(covers(c.hostnames, h) for h in names)]
        reason = None
        if not current:
            reason = "hostnames changed" if any(_valid(c, now) for c in acme) else "new"
        else:
            best = max(current, key=lambda c: _dt(c.not_after))
            due = renew_at(best)
            if w.renewal_hint is not None:
                due = min(due, w.renewal_hint)
            if now >= due:
                reason = "renewal due"
            else:
                checks.append(due)
        if reason is None:
            continue
        if w.state.not_before and _dt(w.state.not_before) > now:
            until = _dt(w.state.not_before)
            waiting[w.deployment_id] = (reason, until)
            checks.append(until)
            continue
        orders.append(Order(w.deployment_id, w.slug, names, reason, tuple(c.name for c in acme)))
    return Plan(tuple(orders), min(checks) if checks else None, waiting)


def next_attempt(now: datetime, failures: int, retry_min: float, retry_max: float,
                 retry_after: datetime | None = None) -> datetime:
    """When the next order may go out after a failure (the CA's Retry-After wins if later)."""
    when = now + timedelta(seconds=backoff(failures, retry_min, retry_max))
    return max(when, retry_after) if retry_after else when
