"""The scheduler's pure decision function, with plain dataclasses (no Docker)."""

from scheduler.plan import (Backoff, Context, Crashed, Done, Failed, Remove, Seen, Start, Stop, Want,
                            backoff_delay, plan, rollout_limit)
from bae.model import FormationEntry


def want(process="web", release=2, quantity=1, pending=False, plan_="s1", generation=0, app="a", dep="default"):
    return Want(app, dep, process, release, pending, quantity, plan_, generation, process == "web")


def unit(index=1, process="web", release=2, up=True, running=True, age=10.0, plan_="s1", generation=0, uid=None,
         exit_code=None, oom=False, recorded=False, app="a", dep="default", stopping=False):
    return Seen(uid or f"{app}-{process}-{index}-r{release}-{plan_}-{generation}", app, dep, process, release, index,
                plan_, generation, running, age, up, exit_code, oom, stopping, process == "web", recorded)


def ctx(**kw):
    return Context(now=1000.0, boot_timeout=60.0, **kw)


def kinds(actions):
    return [type(a).__name__ for a in actions]


def test_first_deploy_starts_then_completes():
    w = want(pending=True)
    assert plan([w], [], ctx()) == [Start(w, 1)]
    assert plan([w], [unit(up=False, age=1)], ctx()) == []
    assert plan([w], [unit()], ctx()) == [Done("a", "default", 2)]


def test_rollout_keeps_old_units_until_all_new_are_up():
    w = want(release=2, quantity=2, pending=True)
    old = [unit(1, release=1), unit(2, release=1)]
    assert plan([w], old, ctx()) == [Start(w, 1), Start(w, 2)]
    half = old + [unit(1, up=True), unit(2, up=False, age=1)]
    assert plan([w], half, ctx()) == []
    full = old + [unit(1), unit(2)]
    actions = plan([w], full, ctx())
    assert [a.unit.release for a in actions if isinstance(a, Stop)] == [1, 1]
    assert actions[-1] == Done("a", "default", 2)


def test_a_new_unit_that_crashes_fails_the_deploy_and_leaves_old_units():
    w = want(release=2, quantity=2, pending=True)
    old = [unit(1, release=1), unit(2, release=1)]
    crashed = unit(1, running=False, exit_code=1)
    booting = unit(2, up=False, age=3)
    actions = plan([w], old + [crashed, booting], ctx())
    assert actions[0] == Failed("a", "default", 2, "web.1 crashed (exit 1)", crashed.id)
    assert (actions[0].unit, actions[0].cause) == ("web.1", "exit")
    assert not [a for a in actions if isinstance(a, Stop) and a.unit.release == 1]
    assert Stop(booting, "the deploy failed") in actions and Remove(crashed) in actions


def test_a_web_unit_that_never_binds_port_fails_the_deploy():
    w = want(release=2, pending=True)
    silent = unit(1, up=False, age=61)
    actions = plan([w], [unit(1, release=1), silent], ctx())
    assert actions[0] == Failed("a", "default", 2, "web.1 never accepted connections on $PORT", silent.id)
    assert (actions[0].unit, actions[0].cause) == ("web.1", "port")  # the push's hint says to bind $PORT


def test_a_crash_outside_a_deploy_restarts_at_once_then_backs_off():
    w = want()
    dead = unit(1, running=False, exit_code=137)
    actions = plan([w], [dead], ctx())
    assert actions == [Crashed(dead, "web.1 crashed (exit 137)"), Remove(dead), Start(w, 1)]
    # the second crash in a row waits (the container stays visible for ps)
    actions = plan([w], [dead], ctx(backoff={w.key: Backoff(1, 0)}))
    assert kinds(actions) == ["Crashed"]
    recorded = unit(1, running=False, exit_code=137, recorded=True)
    assert plan([w], [recorded], ctx(backoff={w.key: Backoff(2, 1001.0)})) == []
    assert plan([w], [recorded], ctx(backoff={w.key: Backoff(2, 999.0)})) == [Remove(recorded), Start(w, 1)]


def test_oom_is_reported_as_such():
    w = want()
    hog = unit(2, running=False, exit_code=137, oom=True)
    actions = plan([want(quantity=2)], [unit(1), hog], ctx(memory={"s1": "256 MB"}))
    assert Crashed(hog, "web.2 exceeded its 256 MB memory limit") in actions
    assert w.key == ("a", "default", "web")


def test_backoff_delays():
    assert [backoff_delay(n, 300) for n in (1, 2, 3, 4, 12)] == [0, 1, 2, 4, 300]


def test_scale_up_down_and_to_zero():
    w = want(quantity=5)
    assert kinds(plan([w], [unit(1)], ctx())) == ["Start"] * 4
    assert [a.index for a in plan([w], [unit(1), unit(3)], ctx())] == [2, 4, 5]
    three = [unit(1), unit(2), unit(3)]
    stops = plan([want(quantity=1)], three, ctx())
    assert [(type(a).__name__, a.unit.index) for a in stops] == [("Stop", 2), ("Stop", 3)]
    assert kinds(plan([want(quantity=0)], three, ctx())) == ["Stop"] * 3


def test_web_units_start_in_batches_when_replacing():
    w = want(quantity=10, pending=True)
    assert len(plan([w], [], ctx(batch=5))) == 5
    booting = [unit(i, up=False, age=1) for i in (1, 2)]
    assert len(plan([w], booting, ctx(batch=5))) == 3
    resized = want(quantity=10, plan_="m1")
    old = [unit(i, plan_="s1") for i in range(1, 11)]
    assert len([a for a in plan([resized], old, ctx(batch=5)) if isinstance(a, Start)]) == 5
    assert len(plan([want(quantity=10)], [], ctx(batch=5))) == 10  # a plain scale-up starts them all


def test_resize_and_restart_replace_units_after_the_new_ones_are_up():
    w = want(plan_="m1")
    old = unit(1, plan_="s1")
    assert plan([w], [old], ctx()) == [Start(w, 1)]
    assert plan([w], [old, unit(1, plan_="m1")], ctx()) == [Stop(old, "replaced")]
    restarted = want(generation=1)
    assert plan([restarted], [unit(1)], ctx()) == [Start(restarted, 1)]


def test_worker_without_port_and_units_of_removed_deployments():
    worker = want("worker", quantity=2)
    web = want("web", quantity=0)
    assert kinds(plan([web, worker], [], ctx())) == ["Start", "Start"]
    stray = unit(1, app="gone")
    dead = unit(2, app="gone", running=False, exit_code=0)
    assert plan([], [stray, dead], ctx()) == [Stop(stray, "no longer wanted"), Remove(dead)]


def test_stopping_units_are_ignored_and_deployments_are_independent():
    w = want(quantity=1)
    going = unit(1, release=1, stopping=True)
    assert plan([w], [going, unit(1)], ctx()) == []
    loop = want(app="b", quantity=1)
    looping = unit(1, app="b", running=False, exit_code=1, recorded=True)
    actions = plan([w, loop], [unit(1), looping], ctx(backoff={loop.key: Backoff(5, 2000.0)}))
    assert actions == []  # b waits; a is untouched


def test_a_release_without_process_types_is_done_at_once():
    old = unit(1, release=1)
    actions = plan([], [old], ctx(), pending=(("a", "default", 2),))
    assert actions == [Done("a", "default", 2), Stop(old, "no longer wanted")]


def test_units_of_a_type_dying_together_count_as_one_crash():
    w = want(quantity=10)
    dead = [unit(i, running=False, exit_code=143) for i in range(1, 11)]
    actions = plan([w], dead, ctx())
    assert len([a for a in actions if isinstance(a, Start)]) == 10  # a first failure restarts at once


def test_rollout_limit_gives_each_batch_of_web_units_the_boot_timeout():
    web = {"web": FormationEntry("web", 5, "s1", 0), "worker": FormationEntry("worker", 9, "s1", 0)}
    assert rollout_limit(web, {"web": "x", "worker": "y"}, 60, 2) == 3 * 60 + 120  # 2 + 2 + 1
    assert rollout_limit(web, {"worker": "y"}, 60, 2) == 60 + 120  # the release has no web type
    assert rollout_limit({}, {"web": "x"}, 60, 0) == 60 + 120


def test_units_of_a_type_dying_together_count_as_one_failure_and_outdated_ones_as_none():
    w = want(quantity=2)
    first, second = unit(1, running=False, exit_code=137), unit(2, running=False, exit_code=137)
    crashes = [a for a in plan([w], [first, second], ctx()) if isinstance(a, Crashed)]
    assert [(a.unit.name, a.counts) for a in crashes] == [("web.1", True), ("web.2", False)]
    stuck_old = unit(3, release=1, up=False, age=61)  # a unit of the old release that never bound $PORT
    crashes = [a for a in plan([w], [unit(1), unit(2), stuck_old], ctx()) if isinstance(a, Crashed)]
    assert [(a.unit.name, a.counts) for a in crashes] == [("web.3", False)]


def test_a_unit_that_comes_back_by_itself_stops_its_duplicate_not_a_healthy_unit():
    """`docker restart` of web.1 (web=2): its replacement started meanwhile; web.2 is left alone."""
    w = want(quantity=2)
    back = unit(1, up=True, age=0.5, uid="web1-restarted")
    replacement = unit(1, up=False, age=0.3, uid="web1-new")
    web2 = unit(2, uid="web2")
    assert plan([w], [back, replacement, web2], ctx()) == [Stop(replacement, "a second web.1")]
    # both up: the older stays, still nothing happens to web.2
    both = unit(1, up=True, age=0.2, uid="web1-new")
    assert plan([w], [both, back, web2], ctx()) == [Stop(both, "a second web.1")]
    # a duplicate while scaling down: the duplicate and the highest index go
    assert plan([want(quantity=1)], [back, replacement, web2], ctx()) == [
        Stop(replacement, "a second web.1"), Stop(web2, "scaled down")]
