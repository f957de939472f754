"""Large pushes: memory stays flat (the pack streams to disk), and [git] max_push_size."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest

from helpers import head, make_repo, run, serving

pytestmark = pytest.mark.integration

MB = 1024 * 1024


def random_repo(path: Path, megabytes: int) -> Path:
    """``megabytes`` of incompressible files in commits of 10 MB, packed as a client sends them."""
    for c in range(megabytes // 10):
        make_repo(path, {f"c{c}/f{i}.bin": os.urandom(MB) for i in range(10)}, f"commit {c}")
    run(["git", "config", "pack.window", "0"], cwd=path, check=True)  # random data: no delta search
    run(["git", "gc", "-q"], cwd=path, check=True)
    return path


def status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status (VmRSS, VmHWM, ...)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[name] = int(value.split()[0])
    return fields


def test_a_200_mb_push_keeps_memory_flat(tmp_path):
    repo = random_repo(tmp_path / "src", 200)
    (tmp_path / "srv").mkdir()
    with serving(tmp_path / "srv") as server:
        dev = server.user("big")
        server.plain_app(dev, "bulky")
        assert dev.ssh("whoami").returncode == 0
        pid = server.proc.pid
        idle = status(pid)["VmRSS"]
        peak = [idle]
        done = threading.Event()

        def sample():  # VmHWM is the true peak; sampling also sees the git children
            while not done.wait(0.05):
                peak[0] = max(peak[0], status(pid)["VmRSS"])

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            push = dev.push(repo, "bulky")
        finally:
            done.set()
            sampler.join()
        assert push.returncode == 0, push.stderr[-2000:]
        hwm = status(pid)["VmHWM"]
        grown = (max(hwm, peak[0]) - idle) / 1024
        print(f"bae serve: idle {idle / 1024:.0f} MB, peak {max(hwm, peak[0]) / 1024:.0f} MB (+{grown:.0f} MB) for a 200 MB push")
        assert grown <= 150, f"bae serve grew by {grown:.0f} MB during a 200 MB push (limit 150 MB)"
        assert dev.git("ls-remote", dev.url("bulky")).stdout.split()[0] == head(repo)
        objects = server.data / "repos" / "bulky" / "default.git" / "objects"
        assert not list(objects.glob("incoming-*"))


def test_max_push_size_refuses_early(tmp_path):
    big = random_repo(tmp_path / "big", 40)
    small = random_repo(tmp_path / "small", 10)
    (tmp_path / "srv").mkdir()
    with serving(tmp_path / "srv", {"git": {"max_push_size": "20m"}}) as server:
        dev = server.user("big")
        server.plain_app(dev, "capped")
        git_dir = server.data / "repos" / "capped" / "default.git"
        refused = dev.push(big, "capped")
        assert refused.returncode != 0
        assert "this push is larger than the 20 MB the platform accepts" in refused.stderr, refused.stderr
        assert "max_push_size" in refused.stderr
        received = int(re.search(r"over max_push_size \d+ after (\d+) bytes", server.log()).group(1))
        assert received < 21 * MB, f"the server read {received} bytes of a 40 MB push over a 20 MB limit"
        assert not (git_dir / "refs" / "heads" / "master").exists()
        assert not list((git_dir / "objects").glob("incoming-*")) and not list((git_dir / "objects" / "pack").iterdir())
        assert "Traceback" not in refused.stderr
        ok = dev.push(small, "capped")
        assert ok.returncode == 0, ok.stderr[-2000:]
