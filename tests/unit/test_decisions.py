"""The scheduler's decision state survives a restart: what one Decisions wrote, the next reads back."""

import pytest

from bae.store import Store
from scheduler.state import Decisions

KEY = ("shop", "default", "worker")


@pytest.fixture
def shop(tmp_path):
    """A store holding the app shop; its default deployment."""
    store = Store(tmp_path / "bae.db")
    store.create_app("shop", None)
    return store, store.deployment("shop", "default")


def fresh(store: Store) -> Decisions:
    decisions = Decisions(store)
    decisions.load({d.id: (d.app, d.name) for d in store.deployments()})
    return decisions


def test_backoff_up_and_counted_crashes_are_read_back(shop):
    store, dep = shop
    before = fresh(store)
    before.count_failure(KEY, dep.id, (3, "s1", 0), 0.0, "worker.1 crashed (exit 1)")
    before.count_failure(KEY, dep.id, (3, "s1", 0), 8.0, "worker.1 crashed (exit 1)")
    before.mark_up("web-unit", dep.id, 1000.5)
    before.mark_crash_counted("worker-unit", dep.id)

    after = fresh(store)  # a restart of `bae serve`
    assert after.backoffs() == before.backoffs()
    assert after.backoffs()[KEY].failures == 2 and after.failures(KEY) == 2
    assert after.up_since("web-unit") == 1000.5 and after.up_since("worker-unit") is None
    assert after.crash_counted("worker-unit") and not after.crash_counted("web-unit")


def test_a_new_shape_forgets_the_crashes_the_same_shape_keeps_them(shop):
    store, dep = shop
    decisions = fresh(store)
    decisions.count_failure(KEY, dep.id, (3, "s1", 0), 1.0, "crashed")
    decisions.reset(KEY, dep.id, unless_shape=(3, "s1", 0))
    assert fresh(store).failures(KEY) == 1
    decisions.reset(KEY, dep.id, unless_shape=(4, "s1", 0))  # a new release
    assert decisions.backoffs() == {} and fresh(store).backoffs() == {}
    assert store.backoffs() == {}


def test_units_gone_from_the_runtime_are_forgotten(shop):
    store, dep = shop
    decisions = fresh(store)
    decisions.mark_up("a", dep.id, 1.0)
    decisions.mark_up("b", dep.id, 2.0)
    decisions.prune({"b"})
    assert fresh(store).up_since("a") is None and fresh(store).up_since("b") == 2.0
    decisions.forget_up("b")  # it exited
    assert fresh(store).up_since("b") is None
