"""Where units find an app's add-ons: the add-ons' records, not their containers (which a healer may be
re-creating when a unit is created)."""

from __future__ import annotations

from types import SimpleNamespace

from addons.service import Services
from bae.store import Store


def test_addresses_come_from_the_rows_and_each_addons_directory(tmp_path):
    store = Store(tmp_path / "bae.db")
    owner = store.add_user("dev")
    shop = store.create_app("shop", owner)
    store.create_app("other", owner)
    for name, kind in (("postgres-1", "postgres"), ("redis-1", "redis"), ("redis-2", "redis")):
        store.add_addon(shop, name=name, kind=kind, version="15", plan="s1", password="x", config_var="X_URL")
    platform = SimpleNamespace(store=store, settings=SimpleNamespace(scheduler=SimpleNamespace(runtime="docker")),
                               instance="inst", data=tmp_path / "data")
    services = Services(platform, base_image=lambda suite, out: "base")
    for name, ip in (("postgres-1", "172.30.0.254"), ("redis-1", "172.30.0.253")):
        services.dir("shop", name).mkdir(parents=True)
        (services.dir("shop", name) / "address").write_text(ip + "\n")
    # no container exists at all: the addresses are known anyway; redis-2 has not started yet
    assert services.addresses("shop") == {"postgres-1": "172.30.0.254", "redis-1": "172.30.0.253"}
    assert services.addresses("other") == {}
    assert services.addresses("nosuchapp") == {}
