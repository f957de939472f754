"""A restart of dockerd itself: an app's units and its add-ons come back with their data.

This stops the machine's Docker Engine, so it runs only when asked (BAE_TEST_RESTART_DOCKERD=1,
as `make test` does) and must have the engine to itself: on a shared machine run it alone, e.g.
under an exclusive lock the other test runs hold shared. dockerd is started again by
scripts/start-dockerd, exactly as scripts/setup starts it, and the test waits until it answers,
also when the test fails, so the machine keeps working for the rest of the suite.
"""

from __future__ import annotations

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


def get(server, path, method="GET"):
    response = requests.request(method, f"http://127.0.0.1:{server.http_port}{path}",
                                headers={"Host": "keep.bae.localhost"}, timeout=30)
    if response.status_code >= 500:
        raise ValueError(f"HTTP {response.status_code}")
    return response


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
    rows = until(lambda: get(server, "/rows/DATABASE_URL").json()["rows"], timeout=180, what="rows served again")
    assert rows == ["alpha", "beta"]
    assert until(lambda: get(server, "/visits").json()["visits"], timeout=180, what="visits served again") == 2
    logs = ok(dev.ssh("logs", "keep", "-n", "300"))
    assert "bae[addons]: postgres-1 restarted" in logs and "bae[addons]: redis-1 restarted" in logs, logs[-3000:]
    ps = ok(dev.ssh("ps", "keep"))
    assert "web.1" in ps and "up" in ps, ps
    listing = ok(dev.ssh("addons", "keep"))
    assert listing.count("running") == 2, listing
