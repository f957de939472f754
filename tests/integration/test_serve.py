"""`bae serve` as a process: host key, slow clients, clean shutdown."""

from __future__ import annotations

import os
import re
import socket
import threading
import time

import pytest

from helpers import Server, head, make_repo, wait_for

pytestmark = pytest.mark.integration


def test_host_key_persists_and_is_printed(tmp_path):
    srv = Server(tmp_path).start()
    try:
        first = wait_for(lambda: re.search(r"host key (SHA256:\S+)", srv.log()), what="the host key line").group(1)
    finally:
        assert srv.stop() == 0
    srv.start()
    try:
        assert wait_for(lambda: re.findall(r"host key (SHA256:\S+)", srv.log())[1:], what="the host key line")[-1] == first
        assert (srv.data / "ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600
        admin = srv.user("root", admin=True)
        scan = admin.ssh("whoami")
        assert scan.returncode == 0
        known = srv.known_hosts.read_text()
        assert "ssh-ed25519" in known
    finally:
        assert srv.stop() == 0
        srv.cleanup()


def test_slow_clients_do_not_block_others(tmp_path):
    srv = Server(tmp_path).start()
    try:
        admin = srv.user("root", admin=True)
        idle = [socket.create_connection(("127.0.0.1", srv.ssh_port)) for _ in range(20)]
        started = time.monotonic()
        assert admin.ssh("whoami").returncode == 0
        assert time.monotonic() - started < 5
        for s in idle:
            s.close()
    finally:
        assert srv.stop() == 0
        srv.cleanup()


def test_connections_that_run_nothing_are_closed(tmp_path):
    import subprocess

    srv = Server(tmp_path, {"ssh": {"max_connections": 3, "idle_timeout": 2.0}}).start()
    try:
        user = srv.user("idler")
        # real OpenSSH clients that authenticate and then open no channel (-N), as many as the limit
        idle = [subprocess.Popen(user.ssh_cmd + ["-N", "bae@127.0.0.1"], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(3)]
        try:
            for proc in idle:
                proc.wait(timeout=60)  # closed by the server
        finally:
            for proc in idle:
                proc.kill()
        assert user.ssh("whoami").stdout.strip() == "idler"
        assert srv.log().count("without a command or git request") >= 3
        # a command at work is not idle: one waiting on its input outlives an idle connection
        other = srv.client("idler")
        busy = subprocess.Popen(user.ssh_cmd + ["bae@127.0.0.1", "keys:add", "idler"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        subprocess.run(user.ssh_cmd + ["-N", "bae@127.0.0.1"], timeout=60, stdin=subprocess.DEVNULL)
        out, err = busy.communicate(other.public_key, timeout=60)
        assert busy.returncode == 0, err
        assert other.ssh("whoami").stdout.strip() == "idler"
    finally:
        assert srv.stop() == 0
        srv.cleanup()


def test_sigterm_lets_an_inflight_push_finish(tmp_path):
    srv = Server(tmp_path).start()
    admin = srv.user("root", admin=True)
    srv.plain_app(admin, "inflight")
    repo = make_repo(tmp_path / "src", {f"f{i}.bin": os.urandom(1_000_000) for i in range(30)})
    result = {}
    pusher = threading.Thread(target=lambda: result.setdefault("push", admin.push(repo, "inflight")))
    pusher.start()
    git_dir = srv.data / "repos" / "inflight" / "default.git"
    wait_for(lambda: list((git_dir / "objects").glob("incoming-*")) or not pusher.is_alive(), interval=0.02,
             what="the push to be uploading")
    started = time.monotonic()
    code = srv.stop()
    pusher.join()
    srv.cleanup()
    assert code == 0
    assert time.monotonic() - started < 60
    push = result["push"]
    assert not list((git_dir / "objects").glob("incoming-*")), "the quarantine was left behind"
    if push.returncode == 0:
        assert (git_dir / "refs" / "heads" / "master").read_text().strip() == head(repo)
    else:  # refused (the connection was closed): nothing was applied
        assert not (git_dir / "refs" / "heads" / "master").exists()
    assert "stopped" in srv.log()


def _stop_orphaned_nginx(srv) -> None:
    """The router's nginx outlives a kill -9 of bae serve; stop it for a clean restart."""
    import signal as sig

    for pidfile in srv.data.rglob("nginx.pid"):
        try:
            pid = int(pidfile.read_text().strip())
            if str(srv.data).encode() not in open(f"/proc/{pid}/cmdline", "rb").read():
                continue  # a stale pid file: that pid is someone else's now
            os.kill(pid, sig.SIGTERM)
        except (ValueError, ProcessLookupError, FileNotFoundError):
            continue
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if open(f"/proc/{pid}/stat").read().split(") ")[1].startswith("Z"):
                    break
            except FileNotFoundError:
                break
            time.sleep(0.05)


def test_kill_9_during_a_build_leaves_no_debris_and_keeps_its_output(tmp_path):
    import glob
    import signal as sig
    import subprocess
    import tempfile

    import docker

    from helpers import APPS

    srv = Server(tmp_path).start()
    try:
        admin = srv.user("root", admin=True)
        admin.ssh("apps:create", "crashy")
        srv.bae("buildpacks:set", "crashy", str(APPS / "custom-buildpack"), check=True)
        repo = make_repo(tmp_path / "src", {"hello.txt": "hi", "slow.txt": "sleep in compile"})
        instance = (srv.data / "instance-id").read_text().strip()
        git_dir = srv.data / "repos" / "crashy" / "default.git"
        workdirs = os.path.join(tempfile.gettempdir(), f"bae-build-{instance}-*")
        push = subprocess.Popen(["git", "push", admin.url("crashy"), "master"], cwd=repo, env=admin.git_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        engine = docker.from_env(version="auto")

        def compiling() -> bool:
            for c in engine.containers.list(filters={"label": [f"bae.platform={instance}", "bae.role=build"]}):
                if any("sleep" in " ".join(p) for p in c.top().get("Processes") or []):
                    return True
            return False

        deadline = time.monotonic() + 300
        while not compiling():
            assert time.monotonic() < deadline and push.poll() is None, push.communicate()
            time.sleep(0.2)
        assert list((git_dir / "objects").glob("incoming-*")) and glob.glob(workdirs)
        os.kill(srv.proc.pid, sig.SIGKILL)  # a crash in the middle of the build
        srv.proc.wait()
        push.communicate(timeout=60)
        assert push.returncode != 0
        _stop_orphaned_nginx(srv)
        srv.start()
        assert admin.ssh("whoami").returncode == 0  # served: start-up is over
        assert not list((git_dir / "objects").glob("incoming-*")), "the push's quarantine was left behind"
        assert not glob.glob(workdirs), "the build's temporary directory was left behind"
        builds = admin.ssh("builds", "crashy").stdout
        assert re.search(r"^1\s+failed", builds, re.M), builds
        output = admin.ssh("builds:output", "crashy", "1").stdout
        assert "Compiling with the hello buildpack" in output and "sleeping" in output, output
        assert "Interrupted: bae serve stopped during this build" in output
        assert not compiling()
        os.remove(repo / "slow.txt")
        make_repo(repo, {}, "fast again")
        again = admin.push(repo, "crashy")
        assert again.returncode == 0, again.stderr
        assert not list((git_dir / "objects").glob("incoming-*")) and not glob.glob(workdirs)
    finally:
        srv.stop()
        _stop_orphaned_nginx(srv)  # also when the test failed before the restart
        srv.cleanup()
    assert "Traceback" not in srv.log()
