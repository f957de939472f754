"""Holes a hostile test found in running apps: duplicated log lines, ambiguous scaling,
memory kills that were not explained, `ps:scale` waits that outlived their purpose."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import docker
import pytest

from helpers import APPS, make_repo, wait_for

pytestmark = pytest.mark.integration

SETTINGS = {"scheduler": {"boot_timeout": 10, "stop_grace": 5}}


@pytest.fixture(scope="module")
def dev(server):
    return server.user("hard")


@pytest.fixture(scope="module")
def app(server, dev, tmp_path_factory) -> Path:
    """`hard`: the pyweb sample, pushed as it is (no build step)."""
    server.plain_app(dev, "hard")
    src = tmp_path_factory.mktemp("src") / "hard"
    shutil.copytree(APPS / "pyweb", src)
    repo = make_repo(src, {}, "pyweb")
    push = dev.push(repo, "hard")
    assert push.returncode == 0, push.stderr
    return repo


def units_of(server, **labels) -> list[dict]:
    engine = docker.from_env(version="auto")
    instance = (server.data / "instance-id").read_text().strip()
    filters = [f"bae.platform={instance}", "bae.role=unit"] + [f"bae.{k}={v}" for k, v in labels.items()]
    return engine.api.containers(all=True, filters={"label": filters})


def test_log_lines_of_stopped_units_are_stored_once(server, dev, app):
    assert dev.ssh("ps:scale", "hard", "web=2").returncode == 0
    for version in ("two", "three"):  # two deploys: the units of v1 and v2 are stopped
        code = re.sub(r'VERSION = "\w+"', f'VERSION = "{version}"', (app / "app.py").read_text())
        push = dev.push(make_repo(app, {"app.py": code}, version), "hard")
        assert push.returncode == 0, push.stderr
    wait_for(lambda: not units_of(server, app="hard", release="1") and not units_of(server, app="hard", release="2"),
             what="the old units to be stopped and removed")
    logs = dev.ssh("logs", "hard", "-n", "50").stdout
    app_lines = [line for line in logs.splitlines() if " app[" in line]
    assert len(app_lines) == len(set(app_lines)), f"lines stored twice:\n{logs}"
    firsts = [line for line in app_lines if line.endswith("listening on 5000")]
    assert len(firsts) == 6, logs  # web.1 and web.2 of v1, v2 and v3, once each


def test_scaling_one_type_twice_in_one_command_is_refused(server, dev, app):
    result = dev.ssh("ps:scale", "hard", "web=3", "web=2")
    assert result.returncode != 0
    assert "web is given twice" in result.stderr and "ps:scale hard web=2" in result.stderr
    resize = dev.ssh("ps:resize", "hard", "web=m1", "web=s1")
    assert resize.returncode != 0 and "web is given twice" in resize.stderr


def test_scaling_a_crashing_type_returns_with_the_crash(server, dev, app):
    result = dev.ssh("ps:scale", "hard", "crasher=1")  # the wait would last boot_timeout + 30 s
    assert result.returncode == 1
    assert "crasher is crashing: crasher.1 crashed (exit 3)" in result.stderr, result.stderr
    assert "crasher.1: about to crash" in result.stdout  # its last words
    assert "ps:scale hard crasher=0" in result.stderr
    assert dev.ssh("ps:scale", "hard", "crasher=0").returncode == 0


@pytest.fixture(scope="module")
def slow(server, dev, tmp_path_factory) -> str:
    """`hard/slow`: web binds $PORT only after 4 s; oomchild runs a child that is killed for memory;
    lingerer takes 4 s to stop."""
    server.plain_app(dev, "hard/slow")
    src = tmp_path_factory.mktemp("slow") / "slow"
    shutil.copytree(APPS / "pyweb", src)
    procfile = ("web: sleep 4; exec python3 app.py\n"
                "oomchild: python3 hog.py; echo the hog is gone; exec sleep 600\n"
                "lingerer: trap 'sleep 4; exit 0' TERM; while :; do sleep 0.2; done\n")
    push = dev.push(make_repo(src, {"Procfile": procfile}, "slow"), "hard/slow")
    assert push.returncode == 0, push.stderr
    return "hard/slow"


def test_a_client_that_hangs_up_during_a_scale_wait_ends_it_quietly(server, dev, slow):
    proc = subprocess.Popen(dev.ssh_cmd + ["bae@127.0.0.1", "ps:scale", slow, "web=2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert "Scaling web to 2" in proc.stdout.readline().decode()  # now it waits for web.2 (4 s)
    proc.kill()
    proc.wait()
    ended = wait_for(lambda: re.search(r"ran 'ps:scale hard/slow web=2': exit (\d+)", server.log()),
                     what="the wait to end")
    assert ended.group(1) == "255"
    log = server.log()
    assert "slow: web.2 up after" not in log[:ended.end()], "the wait went on after the client had gone"
    assert "Traceback" not in log and "Socket is closed" not in log


def test_memory_kills_are_explained_in_one_offs_and_in_running_units(server, dev, slow):
    result = dev.ssh("run", "hard", "python3 hog.py")
    assert result.returncode == 137
    assert re.search(r"run\.\d+ exceeded its 256 MB memory limit: a process of it was killed \(exit 137\)",
                     result.stderr), result.stderr
    assert dev.ssh("ps:scale", slow, "oomchild=1", "--no-wait").returncode == 0
    line = "oomchild.1: a process was killed for exceeding the unit's 256 MB memory limit; the unit runs on"
    wait_for(lambda: line in dev.ssh("logs", slow, "-n", "100").stdout, timeout=60, what="the memory kill in logs")
    logs = dev.ssh("logs", slow, "-n", "100").stdout
    assert "app[oomchild.1]: the hog is gone" in logs and "oomchild.1 crashed" not in logs
    assert dev.ssh("ps:scale", slow, "oomchild=0").returncode == 0


def test_ps_shows_a_stopping_unit_as_stopping(server, dev, slow):
    assert dev.ssh("ps:scale", slow, "lingerer=1").returncode == 0
    assert dev.ssh("ps:scale", slow, "lingerer=0", "--no-wait").returncode == 0
    line = wait_for(lambda: [x for x in dev.ssh("ps", slow).stdout.splitlines() if x.startswith("lingerer.1")
                             and "stopping" in x], what="lingerer.1 shown as stopping")[0]
    assert re.match(r"lingerer\.1\s+stopping \d+s \(scaled down\)", line), line
    wait_for(lambda: "lingerer.1" not in dev.ssh("ps", slow).stdout, what="lingerer.1 gone")
