"""A restart of dockerd itself: an app's units and its add-ons come back with their data.

This stops the machine's Docker Engine, so it runs only when asked (BAE_TEST_RESTART_DOCKERD=1,
as `make test` does) and must have the engine to itself: on a shared machine run it alone, e.g.
under an exclusive lock the other test runs hold shared. dockerd is started again by
scripts/start-dockerd, exactly as scripts/setup starts it, and the test waits until it answers,
also when the test fails, so the machine keeps working for the rest of the suite.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from helpers import APPS, make_repo, ok, until

pytestmark = [pytest.mark.integration, pytest.mark.restarts_dockerd]

SETTINGS = {"scheduler": {"boot_timeout": 60, "stop_grace": 5}}
ROOT = Path(__file__).resolve().parents[2]


def answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def dockerd_pid() -> int:
    return int(Path("/var/run/docker.pid").read_text().strip())


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")


def restart_dockerd() -> None:
    """Stop dockerd (SIGTERM, as a service manager would) and start it as scripts/setup does."""
    pid = dockerd_pid()
    os.kill(pid, 15)
    until(lambda: not Path(f"/proc/{pid}").exists(), timeout=120, what="dockerd stopped")
    start = subprocess.run(["bash", str(ROOT / "scripts" / "start-dockerd")], capture_output=True, text=True)
    assert start.returncode == 0, start.stdout + start.stderr
    until(answers, timeout=120, what="dockerd answering")


def get(server, path, method="GET", app="keep"):
    response = requests.request(method, f"http://127.0.0.1:{server.http_port}{path}",
                                headers={"Host": f"{app}.bae.localhost"}, timeout=30)
    if response.status_code >= 500:
        raise ValueError(f"HTTP {response.status_code}")
    return response


def state(server) -> str:
    """What a failure needs to be understood: the DOCKER-USER chain, the host's neighbour entries on
    the default bridge, each container of the installation with its addresses and /etc/hosts, the
    add-ons' recorded addresses and the end of the server's log."""
    import docker

    shown = [subprocess.run(cmd, capture_output=True, text=True).stdout
             for cmd in (["iptables", "-w", "-S", "DOCKER-USER"], ["ip", "-4", "neigh", "show", "dev", "docker0"])]
    api = docker.from_env().api
    instance = (server.data / "instance-id").read_text().strip()
    for row in api.containers(all=True, filters={"label": f"bae.platform={instance}"}):
        c = api.inspect_container(row["Id"])
        nets = {k: (v.get("IPAddress"), v.get("MacAddress")) for k, v in c["NetworkSettings"]["Networks"].items()}
        shown.append(f"{c['Name']} {c['State']['Status']} started {c['State']['StartedAt']} {nets}")
        with contextlib.suppress(OSError, TypeError):
            shown.append(Path(c["HostsPath"]).read_text())
    shown += [f"{f}: {f.read_text()}" for f in sorted(server.data.glob("addons/*/*/address"))]
    return "\n".join(shown) + "\n" + server.log()[-8000:]


def unit_state(server, app: str) -> tuple[str, str, str]:
    """The web unit of ``app``: its container name, its MAC and its /etc/hosts."""
    import docker

    api = docker.from_env().api
    instance = (server.data / "instance-id").read_text().strip()
    (row,) = api.containers(filters={"label": [f"bae.platform={instance}", "bae.role=unit", f"bae.app={app}"]})
    c = api.inspect_container(row["Id"])
    mac = next(iter(c["NetworkSettings"]["Networks"].values()))["MacAddress"]
    return c["Name"].lstrip("/"), mac, Path(c["HostsPath"]).read_text()


def test_units_and_addons_come_back_with_their_data_after_dockerd_restarts(server, tmp_path):
    dev = server.user("dev")
    ok(dev.ssh("apps:create", "keep"))
    ok(dev.ssh("addons:create", "keep", "postgres"))
    ok(dev.ssh("addons:create", "keep", "redis"))
    src = tmp_path / "keep"
    shutil.copytree(APPS / "addons-flask", src)
    push = dev.push(make_repo(src, {"marker.txt": str(time.time())}, "deploy"), "keep")
    assert push.returncode == 0, push.stderr[-3000:]
    for name in ("alpha", "beta"):
        assert until(lambda: get(server, f"/rows/DATABASE_URL?name={name}", "POST").status_code == 200, timeout=180)
    assert get(server, "/visits").json()["visits"] == 1

    before = cmdline(dockerd_pid())
    try:
        restart_dockerd()
    finally:
        if not answers():  # whatever happened: leave the machine with its engine
            subprocess.run(["bash", str(ROOT / "scripts" / "start-dockerd")])
    assert cmdline(dockerd_pid()) == before  # started exactly as before

    # the units and both add-ons come back, on the same data
    try:
        rows = until(lambda: get(server, "/rows/DATABASE_URL").json()["rows"], timeout=180, what="rows served again")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{state(server)}") from None
    assert rows == ["alpha", "beta"]
    assert until(lambda: get(server, "/visits").json()["visits"], timeout=180, what="visits served again") == 2
    logs = ok(dev.ssh("logs", "keep", "-n", "300"))
    assert "bae[addons]: postgres-1 was down since" in logs and "bae[addons]: redis-1 was down since" in logs, \
        logs[-3000:]
    ps = ok(dev.ssh("ps", "keep"))
    assert "web.1" in ps and "up" in ps, ps
    listing = ok(dev.ssh("addons", "keep"))
    assert listing.count("running") == 2, listing

    # the unit after the restart (a new container, possibly made while the healer re-created an add-on's)
    # knows both add-ons at their recorded addresses and has an opening to each
    name, mac, hosts = unit_state(server, "keep")
    rules = subprocess.run(["iptables", "-w", "-S", "DOCKER-USER"], capture_output=True, text=True).stdout
    for addon in ("postgres-1", "redis-1"):
        address = (server.data / "addons" / "keep" / addon / "address").read_text().strip()
        assert f"{address}\t{addon}" in hosts, hosts
        assert any(f"-d {address}/32" in r and mac.lower() in r.lower() and name in r for r in rules.splitlines()), rules

    # and still only this app's units reach them: another app's unit, started after the restart, cannot
    ok(dev.ssh("apps:create", "other"))
    ok(dev.ssh("config:set", "other", "DATABASE_URL=" + ok(dev.ssh("config:get", "keep", "DATABASE_URL")).strip()))
    push = dev.push(make_repo(src, {"marker.txt": str(time.time())}, "deploy"), "other")
    assert push.returncode == 0, push.stderr[-3000:]
    address = (server.data / "addons" / "keep" / "postgres-1" / "address").read_text().strip()
    for host in ("postgres-1", address):
        assert get(server, f"/connect?host={host}&port=5432").json()["reachable"] is True
        assert until(lambda: get(server, f"/connect?host={host}&port=5432", app="other").json(),
                     what="other's unit answering")["reachable"] is False
