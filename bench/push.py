"""bench/push: `git push` to bae's git server against OpenSSH sshd + git-receive-pack.

It measures the git server (paramiko SSH, dulwich receive-pack, the quarantine
store, the ref update) with a deploy hook that only records the push, as the
foundation issue defined it; builds and deploys have their own benchmarks
(bench/build, bench/scale), and would dwarf the transfer.

Two repositories: (a) 10 small files, (b) 50 MB of random files in 5 commits
(packed with `git gc`, so the client sends stored deltas and both servers get the
same bytes). Each run pushes into a fresh repository on each server. The
reference is the stock OpenSSH sshd on another loopback port with
`receive.unpackLimit=1` (git keeps the pack, as bae does). Prints medians of
RUNS runs and the ratio bae/reference. Target: ratio ≤ 1.3 for both.

Memory: a real `bae serve` (its own data directory and ports) receives, builds
(with the no-op test buildpack) and deploys a 200 MB push of random files; the
benchmark samples the process's RSS and reads its peak (VmHWM). Target: peak ≤
150 MB above the RSS at idle. The git processes it runs (index-pack, cat-file)
are sampled and shown apart.

Run: .venv/bin/python -m bench.push [RUNS]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bae.config import Settings
from bench.common import APPS, Server, free_port, make_repo, median, report, run, timed, tmpdir, wait_port
from control.deploy import deploy_lock
from control.platform import Platform
from gitserver.keys import parse_public_key
from gitserver.session import SessionContext
from gitserver.sshd import SSHServer


def small_repo(path: Path) -> Path:
    return make_repo(path, {f"file{i}.txt": f"line {i}\n" * 20 for i in range(10)})


def big_repo(path: Path) -> Path:
    for c in range(5):
        make_repo(path, {f"c{c}/f{i}.bin": os.urandom(1_000_000) for i in range(10)}, f"commit {c}")
    run(["git", "gc", "-q"], cwd=path, check=True)
    return path


class ReferenceSSHD:
    """OpenSSH's sshd on a loopback port, letting our client key in as root."""

    def __init__(self, tmp: Path, pubkey: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        key = tmp / "host_key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        (tmp / "authorized_keys").write_text(pubkey)
        (tmp / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {tmp}/sshd.pid\n"
            f"AuthorizedKeysFile {tmp}/authorized_keys\nStrictModes no\nPermitRootLogin yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "Subsystem sftp internal-sftp\n")
        Path("/run/sshd").mkdir(exist_ok=True)
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(tmp / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(tmp / "sshd.log", "wb"))
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


class GitServer:
    """bae's SSH git server in this process, on a loopback port, with a recording deploy hook."""

    def __init__(self, tmp: Path, pubkey: str) -> None:
        settings = Settings(data_dir=str(tmp / "data"))
        self.platform = Platform(settings)
        self.user = self.platform.store.add_user("bench", admin=True)
        self.platform.store.add_key(self.user, parse_public_key(pubkey))
        self.port = free_port()
        context = SessionContext(self.platform.store, self.platform.repos, self, lambda *a: 1, "bench")
        self.ssh = SSHServer("127.0.0.1", self.port, self.platform.data / "ssh_host_ed25519_key", context)
        self.ssh.start()

    def lock(self, app, deployment, waiting):
        return deploy_lock(self.platform, app, deployment, waiting)

    def __call__(self, target, old, new, source, progress) -> None:
        """The deploy hook: record the push only."""
        store = self.platform.store
        build = store.start_build(store.deployment(target.app, target.deployment), new, old, target.user.name)
        progress(f"-----> Received {new[:7]} (recorded only: this benchmark measures the git server)")
        store.finish_build(build, "succeeded", "recorded by bench/push\n")

    def create(self, app: str) -> None:
        self.platform.store.create_app(app, self.user)
        self.platform.repos.create(app, "default")

    def stop(self) -> None:
        self.ssh.stop(grace=5)


def _kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return found


def memory(tmp: Path, megabytes: int = 200) -> None:
    """Peak RSS of a real `bae serve` while it receives, builds and deploys a large push."""
    import threading

    repo = tmp / "mem-src"
    for c in range(megabytes // 10):
        make_repo(repo, {f"c{c}/f{i}.bin": os.urandom(1_000_000) for i in range(10)}, f"commit {c}")
    run(["git", "config", "pack.window", "0"], cwd=repo, check=True)
    run(["git", "gc", "-q"], cwd=repo, check=True)
    (tmp / "serve").mkdir()
    server = Server(tmp / "serve").start()
    try:
        client = server.user("bench")
        client.ssh("apps:create", "bulky")
        server.bae("buildpacks:set", "bulky", str(APPS / "null-buildpack"), check=True)
        client.ssh("whoami")
        pid = server.proc.pid
        idle = _kb(pid, "VmRSS")
        peak, children = [idle], [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], _kb(pid, "VmRSS"))
                children[0] = max(children[0], sum(_kb(c, "VmRSS") for c in _children(pid)
                                                   if b"nginx" not in Path(f"/proc/{c}/cmdline").read_bytes()))

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.perf_counter()
        try:
            push = client.push(repo, "bulky")
        finally:
            done.set()
            sampler.join()
        took = time.perf_counter() - started
        if push.returncode != 0:
            raise SystemExit(f"the {megabytes} MB push failed:\n{push.stderr[-2000:]}")
        top = max(peak[0], _kb(pid, "VmHWM"))
        print(f"\n== memory of bae serve during a {megabytes} MB push (receive, build, deploy: {took:.1f} s)")
        print(f"idle {idle / 1024:.0f} MB, peak {top / 1024:.0f} MB: +{(top - idle) / 1024:.0f} MB  "
              f"(target ≤ +150 MB); its git processes peaked at {children[0] / 1024:.0f} MB together")
    finally:
        server.stop()
        server.cleanup()


def main(runs: int = 5) -> None:
    tmp = tmpdir("bae-bench-push-")
    try:
        key = tmp / "id"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        pub = Path(str(key) + ".pub").read_text()
        bae = GitServer(tmp, pub)
        ref = ReferenceSSHD(tmp, pub)
        ssh = (f"ssh -i {key} -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
               "-o LogLevel=ERROR -o BatchMode=yes")
        bae_env = dict(os.environ, GIT_SSH_COMMAND=f"{ssh} -p {bae.port}")
        ref_env = dict(os.environ, GIT_SSH_COMMAND=f"{ssh} -p {ref.port}")
        rows = []
        for label, repo in (("10 files", small_repo(tmp / "small")), ("50 MB in 5 commits", big_repo(tmp / "big"))):
            ours, theirs = [], []
            for i in range(runs + 1):  # the first round warms caches and is not counted
                app = f"b{len(rows)}-{i}"
                bae.create(app)
                bare = tmp / "ref" / f"{app}.git"
                run(["git", "init", "-q", "--bare", str(bare)], check=True)
                run(["git", "config", "receive.unpackLimit", "1"], cwd=bare, check=True)
                t_ref = timed(lambda: run(["git", "push", "-q", f"ssh://root@127.0.0.1:{ref.port}{bare}", "master"],
                                          cwd=repo, env=ref_env, check=True))
                t_bae = timed(lambda: run(["git", "push", "-q", f"ssh://bae@127.0.0.1:{bae.port}/{app}.git", "master"],
                                          cwd=repo, env=bae_env, check=True))
                if i:
                    ours.append(t_bae)
                    theirs.append(t_ref)
            rows.append((f"push {label}", median(ours), median(theirs), "ratio ≤ 1.3"))
        report(f"git push, median of {runs} runs (bae's git server vs OpenSSH sshd + git-receive-pack)", rows)
        ref.stop()
        bae.stop()
        memory(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
