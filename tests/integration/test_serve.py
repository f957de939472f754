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
