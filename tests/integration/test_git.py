"""git push / clone / fetch over the real OpenSSH client, and every bad input."""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from helpers import head, make_repo, run, wait_for

pytestmark = pytest.mark.integration


def snapshot(path: Path) -> dict:
    """Every file under a repository with its size: what 'unchanged' means here."""
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


def pkt(data: bytes) -> bytes:
    return b"%04x" % (len(data) + 4) + data


def read_advertisement(stream) -> list[bytes]:
    lines = []
    while True:
        size = int(stream.read(4), 16)
        if size == 0:
            return lines
        lines.append(stream.read(size - 4))


def raw_push(client, target: str, ref_line: bytes, pack: bytes, *,
             kill_when: Callable[[], bool] | None = None) -> subprocess.CompletedProcess | None:
    """Speak receive-pack by hand over ssh: for packs git itself would never send.
    With ``kill_when``, the client is killed mid-push as soon as that is true."""
    proc = subprocess.Popen(client.ssh_cmd + ["bae@127.0.0.1", f"git-receive-pack '/{target}.git'"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    read_advertisement(proc.stdout)
    proc.stdin.write(pkt(ref_line + b"\0report-status side-band-64k\n") + b"0000")
    proc.stdin.write(pack)
    proc.stdin.flush()
    if kill_when is not None:
        wait_for(kill_when, interval=0.01, what="the push to be under way")
        proc.kill()
        proc.wait()
        return None
    proc.stdin.close()
    out = proc.stdout.read()
    err = proc.stderr.read()
    proc.wait(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def pack_of(repo: Path, commit: str) -> bytes:
    return subprocess.run(["git", "pack-objects", "--stdout", "--revs", "-q"], input=f"{commit}\n".encode(),
                          cwd=repo, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def dev(server):
    return server.user("dev")


def test_push_clone_fetch(server, dev, tmp_path):
    server.plain_app(dev, "pushy")
    repo = make_repo(tmp_path / "src", {"app.py": "print('hi')\n"})
    result = dev.push(repo, "pushy")
    assert result.returncode == 0, result.stderr
    assert "remote: -----> Received" in result.stderr  # live side-band lines
    assert "* [new branch]      master -> master" in result.stderr
    clone = tmp_path / "clone"
    assert dev.git("clone", "-q", dev.url("pushy"), str(clone)).returncode == 0
    assert (clone / "app.py").read_text() == "print('hi')\n"
    make_repo(repo, {"more.txt": "x"}, "second")
    assert dev.push(repo, "pushy").returncode == 0
    assert dev.git("fetch", "-q", "origin", cwd=clone).returncode == 0
    assert run(["git", "rev-parse", "origin/master"], cwd=clone).stdout.strip() == head(repo)
    # the pack is stored as received (and indexed), not exploded into loose objects
    objects = server.data / "repos" / "pushy" / "default.git" / "objects"
    assert list((objects / "pack").glob("*.pack")) and list((objects / "pack").glob("*.idx"))
    assert not [p for p in objects.iterdir() if len(p.name) == 2]
    # builds were recorded with their log
    builds = dev.ssh("builds", "pushy").stdout
    assert "succeeded" in builds and head(repo)[:7] in builds
    output = dev.ssh("builds:output", "pushy", "1").stdout
    assert "Received" in output and "Plain files app detected" in output


def test_main_branch_and_deployments(server, dev, tmp_path):
    server.plain_app(dev, "mainly")
    server.plain_app(dev, "mainly/worker")
    repo = make_repo(tmp_path / "src", {"a": "1"}, branch="main")
    assert dev.push(repo, "mainly/worker", "main").returncode == 0
    clone = tmp_path / "clone"
    assert dev.git("clone", "-q", dev.url("mainly/worker"), str(clone)).returncode == 0
    assert run(["git", "branch", "--show-current"], cwd=clone).stdout.strip() == "main"
    # scp-style remote (no leading slash) works too
    scp = "bae@127.0.0.1:mainly.git"
    env = dict(dev.git_env, GIT_SSH_COMMAND=dev.git_env["GIT_SSH_COMMAND"].replace(f"-p {server.ssh_port}", ""))
    env["GIT_SSH_COMMAND"] += f" -p {server.ssh_port}"
    result = run(["git", "push", scp, "main:master"], cwd=repo, env=env)
    assert result.returncode == 0, result.stderr


def test_other_branches_refused_with_hint(server, dev, tmp_path):
    server.plain_app(dev, "branchy")
    repo = make_repo(tmp_path / "src", {"a": "1"})
    run(["git", "checkout", "-q", "-b", "feature"], cwd=repo)
    result = dev.push(repo, "branchy", "feature")
    assert result.returncode != 0
    assert "git push bae feature:master" in result.stderr
    assert "[remote rejected] feature -> feature" in result.stderr
    tags = dev.push(repo, "branchy", "HEAD:refs/tags/v1")
    assert tags.returncode != 0 and "only the master or main branch" in tags.stderr
    assert dev.push(repo, "branchy", "feature:master").returncode == 0
    delete = dev.push(repo, "branchy", ":master")
    assert delete.returncode != 0 and "deleting the deploy branch is not allowed" in delete.stderr
    assert dev.git("ls-remote", dev.url("branchy")).stdout.count("refs/heads/master") == 1


def test_access_and_unknown_targets(server, dev, tmp_path):
    other = server.user("other")
    server.plain_app(dev, "private")
    repo = make_repo(tmp_path / "src", {"a": "1"})
    denied = other.push(repo, "private")
    assert denied.returncode != 0 and "do not have access to app 'private'" in denied.stderr
    clone = other.git("clone", other.url("private"), str(tmp_path / "c"))
    assert clone.returncode != 0 and "do not have access" in clone.stderr
    unknown = dev.push(repo, "no-such-app")
    assert "no app named 'no-such-app'" in unknown.stderr
    unknown_dep = dev.push(repo, "private/nope")
    assert "has no deployment named 'nope'" in unknown_dep.stderr
    stranger = server.client("stranger")
    refused = stranger.push(repo, "private")
    assert refused.returncode != 0 and "Permission denied (publickey)" in refused.stderr
    # collaborators can push
    dev.ssh("access:add", "private", "other")
    assert other.push(repo, "private").returncode == 0


@pytest.mark.parametrize("path", [
    "/../private.git", "../../etc.git", "/private/../../x.git", "%2e%2e/private.git", "'/private.git'",
    "/pri vate.git", "/" + "a" * 300 + ".git", "/private.git/../../x", "/PRIVATE.git", "~/private.git",
])
def test_escaping_paths_refused(server, dev, path):
    server.plain_app(dev, "private")
    before = snapshot(server.data / "repos")
    for service in ("git-receive-pack", "git-upload-pack"):
        result = dev.ssh(f"{service} {shlex.quote(path)}")
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        assert "is not a repository path" in result.stderr or "is not valid" in result.stderr
    assert snapshot(server.data / "repos") == before


def test_corrupt_truncated_and_abandoned_packs_change_nothing(server, dev, tmp_path):
    server.plain_app(dev, "packs")
    repo = make_repo(tmp_path / "src", {"a": "1"})
    assert dev.push(repo, "packs").returncode == 0
    old = head(repo)
    make_repo(repo, {"big.bin": os.urandom(2_000_000)}, "big")
    new = head(repo)
    pack = pack_of(repo, f"^{old}\n{new}")
    git_dir = server.data / "repos" / "packs" / "default.git"
    before = snapshot(git_dir)
    line = f"{old} {new} refs/heads/master".encode()

    corrupt = bytearray(pack)
    corrupt[len(pack) // 2] ^= 0xFF
    result = raw_push(dev, "packs", line, bytes(corrupt))
    assert b"unpack bad pack" in result.stdout
    assert snapshot(git_dir) == before

    truncated = raw_push(dev, "packs", line, pack[: len(pack) // 3])
    assert b"unpack bad pack" in truncated.stdout or truncated.returncode != 0
    raw_push(dev, "packs", line, pack[: len(pack) // 2],
             kill_when=lambda: list((git_dir / "objects").glob("incoming-*")))
    wait_for(lambda: snapshot(git_dir) == before, timeout=10, what="the abandoned push's quarantine to go")
    assert dev.git("ls-remote", dev.url("packs")).stdout.split()[0] == old
    # and the real push still works afterwards
    assert dev.push(repo, "packs").returncode == 0


def test_two_pushes_to_one_deployment(server, dev, tmp_path):
    server.plain_app(dev, "racy")
    base = make_repo(tmp_path / "a", {"a": "1"})
    assert dev.push(base, "racy").returncode == 0
    other = tmp_path / "b"
    dev.git("clone", "-q", dev.url("racy"), str(other))
    make_repo(base, {"from-a": "x" * 100000}, "a")
    make_repo(other, {"from-b": "y" * 100000}, "b")
    results = {}

    def push(name, repo):
        results[name] = dev.push(repo, "racy")

    threads = [threading.Thread(target=push, args=(n, r)) for n, r in (("a", base), ("b", other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.returncode for r in results.values())
    assert codes[0] == 0 and codes[1] != 0, {k: v.stderr for k, v in results.items()}
    winner = "a" if results["a"].returncode == 0 else "b"
    loser = results["b" if winner == "a" else "a"]
    assert "fetch first" in loser.stderr or "rejected" in loser.stderr
    remote = dev.git("ls-remote", dev.url("racy")).stdout.split()[0]
    assert remote == head(base if winner == "a" else other)


def test_ten_concurrent_pushes_to_ten_apps(server, dev, tmp_path):
    names = [f"par-{i}" for i in range(10)]
    for name in names:
        server.plain_app(dev, name)
    repos = {n: make_repo(tmp_path / n, {"f.bin": os.urandom(300_000), "n": n}) for n in names}
    results = {}

    def push(name):
        results[name] = dev.push(repos[name], name)

    started = time.monotonic()
    threads = [threading.Thread(target=push, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    failed = {n: r.stderr for n, r in results.items() if r.returncode != 0}
    assert not failed, failed
    for name in names:
        assert dev.git("ls-remote", dev.url(name)).stdout.split()[0] == head(repos[name])
    print(f"10 concurrent pushes took {elapsed:.2f}s")


def objects_pack(repo: Path, *objects: str, thin: str = "") -> bytes:
    """A pack of exactly these objects (no --revs: nothing they refer to comes along)."""
    args = ["git", "pack-objects", "--stdout", "-q"] + (["--revs", "--thin"] if thin else [])
    data = thin if thin else "".join(f"{o}\n" for o in objects)
    return subprocess.run(args, input=data.encode(), cwd=repo, capture_output=True, check=True).stdout


def test_packs_missing_objects_are_refused_as_git_does(server, dev, tmp_path):
    server.plain_app(dev, "holes")
    repo = make_repo(tmp_path / "src", {"big.txt": "".join(f"line {i}\n" for i in range(20000))})
    first = head(repo)
    make_repo(repo, {"big.txt": "".join(f"line {i}\n" for i in range(20001))}, "second")
    second = head(repo)
    git_dir = server.data / "repos" / "holes" / "default.git"
    before = snapshot(git_dir)
    zero = "0" * 40
    cases = {
        # a commit whose tree (and files) are absent
        "tree absent": (f"{zero} {first} refs/heads/master", objects_pack(repo, first)),
        # a ref to an object the pack does not hold (an empty pack)
        "ref outside the pack": (f"{zero} {second} refs/heads/master", objects_pack(repo)),
        # a thin pack whose delta base the platform never received
        "thin pack, base absent": (f"{zero} {second} refs/heads/master", objects_pack(repo, thin=f"^{first}\n{second}\n")),
    }
    for name, (line, pack) in cases.items():
        result = raw_push(dev, "holes", line.encode(), pack)
        assert b"missing necessary objects" in result.stdout, (name, result.stdout)
        assert b"Internal error" not in result.stdout, name
        assert b"Received" not in result.stdout, f"{name}: the pipeline ran"
        assert snapshot(git_dir) == before, f"{name}: the repository changed"
    assert dev.ssh("builds", "holes").stdout.count("\n") <= 1, "a build was recorded"
    log = server.log()
    assert "KeyError" not in log and "deploy hook crashed" not in log
    assert "missing necessary objects" not in log or "Traceback" not in log
    assert dev.push(repo, "holes").returncode == 0  # the whole history is accepted
