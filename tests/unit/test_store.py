import threading

import pytest

from bae.errors import Conflict, NotFound
from bae.model import PublicKey
from bae.store import Store


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "bae.db")


def key(fp="SHA256:" + "a" * 43):
    return PublicKey(fp, "ed25519", 256, "c", "ssh-ed25519 AAAA c")


def test_wal_and_migrations_idempotent(tmp_path):
    Store(tmp_path / "x.db")
    store = Store(tmp_path / "x.db")
    assert store.db.journal_mode == "wal"
    assert "users" in store.db.table_names()


def test_users_keys_apps(store):
    alice = store.add_user("alice", admin=True)
    bob = store.add_user("bob")
    with pytest.raises(Conflict):
        store.add_user("alice")
    store.add_key(alice, key())
    with pytest.raises(Conflict, match="already registered to you"):
        store.add_key(alice, key())
    with pytest.raises(Conflict, match="user 'alice'"):
        store.add_key(bob, key())
    assert store.user_for_key(key().fingerprint).name == "alice"
    app = store.create_app("shop", bob)
    assert [d.name for d in store.deployments(app)] == ["default"]
    store.add_collaborator(app, alice)
    assert store.app("shop").collaborators == ("alice",)
    assert [a.name for a in store.apps(alice)] == ["shop"]
    with pytest.raises(Conflict, match="owns 1 app"):
        store.remove_user("bob")
    store.destroy_app(store.app("shop"))
    store.remove_user("bob")
    with pytest.raises(NotFound):
        store.user("bob")


def test_concurrent_writers_queue(tmp_path):
    path = tmp_path / "bae.db"
    Store(path)
    errors = []

    def work(i):
        try:
            s = Store(path)
            for j in range(20):
                s.add_user(f"u{i}x{j}")
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(Store(path).users()) == 120


def test_build_numbers_per_deployment(store):
    app = store.create_app("shop", None)
    dep = store.deployment("shop", "default")
    b1 = store.start_build(dep, "a" * 40, "0" * 40, "alice")
    b2 = store.start_build(dep, "b" * 40, "a" * 40, "alice")
    assert (b1.number, b2.number) == (1, 2)
    store.finish_build(b1, "failed", "log\n", error="boom")
    assert store.build(dep, 1).status == "failed"
    assert store.build(dep, 1).log == "log\n"
    assert [b.number for b in store.builds(dep)] == [2, 1]
    assert app.name == "shop"


def test_targets_give_each_deployment_its_target_release_and_formation(store):
    app = store.create_app("shop", None)
    dep = store.deployment("shop", "default")
    idle = store.create_deployment(app, "idle")  # never deployed: no release, no formation
    v1 = store.create_release(dep, image="i:1", config={}, process_types={"web": "w"}, build_id=None, commit=None,
                              user="alice", description="deploy")
    store.create_release(dep, image="i:2", config={}, process_types={"web": "w", "worker": "k"}, build_id=None,
                         commit=None, user="alice", description="deploy")
    store.ensure_formation(dep, {"web": "w", "worker": "k"}, "s1")
    store.set_target(dep.id, v1.version)
    targets = {d.name: (release, formation) for d, release, formation in store.targets()}
    assert targets["idle"] == (None, {}) and idle.name == "idle"
    release, formation = targets["default"]
    assert release.version == 1 and release.image == "i:1"
    assert {p: f.quantity for p, f in formation.items()} == {"web": 1, "worker": 0}


def test_set_placement_bumps_the_generation_and_sets_the_constraints_in_one_transaction(store):
    store.create_app("shop", None)
    dep = store.deployment("shop", "default")
    store.ensure_formation(dep, {"web": "w"}, "s1")
    store.set_placement(dep, "web", ["node.labels.zone==a"])
    assert store.formation(dep)["web"].generation == 1
    assert store.placement("shop", "default", "web") == ["node.labels.zone==a"]
    with pytest.raises(TypeError):  # the placement cannot be written: the generation stays too
        store.set_placement(dep, "web", [{"not", "json"}])
    assert store.formation(dep)["web"].generation == 1
    assert store.placement("shop", "default", "web") == ["node.labels.zone==a"]
    assert not store.db.conn.in_transaction
