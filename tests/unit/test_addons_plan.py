"""The add-on healing decision (addons.plan.heal) and the pure helpers around add-ons."""

from __future__ import annotations

import pytest

from addons.backups import _compare, parse_counts
from addons.kinds import kind_for
from addons.plan import Failed, Remove, Reset, Seen, Start, Wanted, backoff, heal
from bae.errors import Invalid

NOW = 1_000_000.0


def seen(id_, gen=0, running=True, started=NOW - 100, finished=None, code=None, oom=False, name="pg"):
    return Seen(id_, "shop", name, gen, running, started, finished, code, oom)


def test_running_current_generation_is_left_alone():
    assert heal([Wanted("shop", "pg", 0)], [seen("a")], NOW) == []


def test_vanished_container_is_started_again():
    assert heal([Wanted("shop", "pg", 0)], [], NOW) == [Start("shop", "pg", "vanished")]


def test_crashed_container_is_removed_and_replaced():
    actions = heal([Wanted("shop", "pg", 0)], [seen("a", running=False, finished=NOW - 1, code=137)], NOW)
    assert actions == [Remove("a", "shop", "pg", "crashed (exit 137)"), Start("shop", "pg", "crashed (exit 137)")]


def test_a_start_that_does_not_last_backs_off():
    dead = seen("a", running=False, started=NOW - 3, finished=NOW - 1, code=1)
    actions = heal([Wanted("shop", "pg", 0, failures=2)], [dead], NOW)
    assert Remove("a", "shop", "pg", "crashed (exit 1)") in actions
    assert Failed("shop", "pg", 3, NOW + backoff(3)) in actions
    assert not any(isinstance(a, Start) for a in actions)


def test_backed_off_addon_waits_then_starts():
    want = Wanted("shop", "pg", 0, failures=3, not_before=NOW + 5)
    assert heal([want], [], NOW) == []
    assert heal([want], [], NOW + 5) == [Start("shop", "pg", "vanished")]


def test_failures_reset_after_a_long_run():
    assert heal([Wanted("shop", "pg", 0, failures=2)], [seen("a", started=NOW - 60)], NOW) == [Reset("shop", "pg")]


def test_older_generations_duplicates_and_orphans_are_removed():
    actions = heal([Wanted("shop", "pg", 2)],
                   [seen("old", gen=1), seen("a", gen=2), seen("b", gen=2), seen("x", name="gone")], NOW)
    assert Remove("old", "shop", "pg", "an older generation") in actions
    assert Remove("b", "shop", "pg", "a second server on the same data") in actions
    assert Remove("x", "shop", "gone", "its add-on is gone") in actions
    assert not any(isinstance(a, Start) for a in actions)


def test_busy_addon_is_left_to_the_command():
    assert heal([Wanted("shop", "pg", 0, busy=True)], [], NOW) == []


def test_oom_is_named():
    actions = heal([Wanted("shop", "pg", 0)], [seen("a", running=False, finished=NOW, code=137, oom=True)], NOW)
    assert actions[-1] == Start("shop", "pg", "ran out of memory")


def test_backoff_grows_and_caps():
    assert [backoff(n) for n in range(0, 5)] == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert backoff(30) == 60.0


def test_counts_parse_and_compare():
    counts = parse_counts("public.t 3\nnoise\npublic.u 0\n2\n")
    assert counts == {"public.t": 3, "public.u": 0}
    assert _compare(counts, {"public.t": 3, "public.u": 0}) is None
    assert "public.t has 2 rows, the dump 3" in _compare(counts, {"public.t": 2, "public.u": 0})
    assert "public.u missing" in _compare(counts, {"public.t": 3})


def test_kinds_and_versions():
    assert kind_for("postgres")[1] == "15" and kind_for("postgres", "17")[1] == "17"
    assert kind_for("mysql", "10")[1] == "10.11"
    with pytest.raises(Invalid, match="not an add-on kind"):
        kind_for("mongodb")
    with pytest.raises(Invalid, match="trixie"):
        kind_for("postgres", "16")


def test_backup_due_at_its_time_not_when_set():
    from datetime import datetime, timezone

    from addons.plan import backup_due

    def t(hhmm, day=2):
        return datetime(2026, 12, day, int(hhmm[:2]), int(hhmm[3:]), tzinfo=timezone.utc)

    # set at 14:00 for 03:00: nothing until tomorrow's 03:00
    assert not backup_due("03:00", t("14:00"), [], t("14:00"))
    assert not backup_due("03:00", t("14:00"), [], t("02:59", 3))
    assert backup_due("03:00", t("14:00"), [], t("03:00", 3))
    # once started, not again that day; the next day again
    assert not backup_due("03:00", t("14:00"), [t("03:00", 3)], t("09:00", 3))
    assert backup_due("03:00", t("14:00"), [t("03:00", 3)], t("03:01", 4))
    # set before its time today: due at that time today
    assert not backup_due("15:30", t("15:29"), [], t("15:29"))
    assert backup_due("15:30", t("15:29"), [], t("15:30"))
    # missed while bae serve was down (yesterday 03:00): caught up once, at once
    assert backup_due("03:00", t("01:00", 1), [], t("02:00", 3))
    assert not backup_due("03:00", t("01:00", 1), [t("02:00", 3)], t("02:30", 3))
    # schedules from before the column existed (no since) behave the same, without the guard
    assert backup_due("03:00", None, [], t("04:00"))


def test_an_addon_is_noted_down_from_its_containers_end_until_one_runs_again():
    from addons.plan import down_reason, note_down

    want = [Wanted("shop", "redis-1", 0)]
    killed = Seen("c1", "shop", "redis-1", 0, False, 100.0, 160.0, 137)
    assert note_down({}, want, [killed], 200.0) == {("shop", "redis-1"): (160.0, "exited 137")}
    # the healer removed the container: still down since its end
    assert note_down({("shop", "redis-1"): (160.0, "exited 137")}, want, [], 210.0) == \
        {("shop", "redis-1"): (160.0, "exited 137")}
    assert note_down({}, want, [], 210.0) == {("shop", "redis-1"): (210.0, "no container")}
    assert note_down({("shop", "redis-1"): (160.0, "exited 137")}, want,
                     [Seen("c2", "shop", "redis-1", 0, True, 215.0)], 220.0) == {}
    assert note_down({("gone", "redis-1"): (1.0, "x")}, want, [Seen("c2", "shop", "redis-1", 0, True)], 5.0) == {}
    # a running container of an older generation does not make it up
    assert note_down({}, [Wanted("shop", "redis-1", 2)], [Seen("c0", "shop", "redis-1", 1, True)], 5.0) == \
        {("shop", "redis-1"): (5.0, "no container")}
    assert down_reason(Seen("c", "a", "b", 0, False, oom=True, exit_code=137)) == "ran out of memory"
    assert down_reason(Seen("c", "a", "b", 0, False)) == "stopped"


def test_addon_status_words():
    from types import SimpleNamespace

    from bae.console import clock
    from control.commands.addons import status

    up = SimpleNamespace(running=True, started_at=100.0)
    assert status(up, False, 160.0) == ("running", "up 1m")
    assert status(None, True, 160.0) == ("starting", "starting")
    assert status(None, False, 160.0) == ("down", "down (no container)")
    exited = SimpleNamespace(running=False, oom=False, exit_code=137, finished_at=150.0, state="exited")
    assert status(exited, False, 160.0) == ("down", f"down since {clock(150.0)} (exited 137)")
    assert status(exited, True, 160.0) == ("starting", "starting")
