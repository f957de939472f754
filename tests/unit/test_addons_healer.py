"""The healer's view of the add-on containers: taken again once the add-ons' locks are held."""

from __future__ import annotations

from types import SimpleNamespace

from addons.healer import settled


def box(id_: str, app: str, name: str):
    return SimpleNamespace(id=id_, labels={"bae.app": app, "bae.addon": name})


def test_a_container_made_while_the_pass_waited_replaces_the_first_look():
    # addons:create (or restart, rotate) held the lock, made container c2 and let go before the
    # healer took the lock: the healer must see c2, not the empty first look, or it starts it again
    rows = {("shop", "redis-1"): object()}
    assert [c.id for c in settled([], [box("c2", "shop", "redis-1")], rows)] == ["c2"]
    assert [c.id for c in settled([box("c1", "shop", "redis-1")], [box("c2", "shop", "redis-1")], rows)] == ["c2"]


def test_a_new_container_whose_row_was_not_read_yet_is_no_orphan():
    rows = {("shop", "redis-1"): object()}
    after = [box("c1", "shop", "redis-1"), box("c9", "shop", "postgres-1")]
    assert [c.id for c in settled([box("c1", "shop", "redis-1")], after, rows)] == ["c1"]


def test_an_orphan_seen_in_both_looks_stays_for_removal():
    old = box("c7", "gone", "redis-1")
    assert [c.id for c in settled([old], [old], {})] == ["c7"]
