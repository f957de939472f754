"""bench/push: `git push` to bae against OpenSSH sshd + git-receive-pack.

Two repositories: (a) 10 small files, (b) 50 MB of random files in 5 commits
(packed with `git gc`, so the client sends stored deltas and both servers get the
same bytes). Each run pushes into a fresh repository on each server. The
reference is the stock OpenSSH sshd on another loopback port with
`receive.unpackLimit=1` (git keeps the pack, as bae does). Prints medians of
RUNS runs and the ratio bae/reference. Target: ratio ≤ 1.3 for both.

Run: .venv/bin/python -m bench.push [RUNS]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import Server, free_port, make_repo, median, report, run, timed, tmpdir, wait_port


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


def main(runs: int = 5) -> None:
    tmp = tmpdir("bae-bench-push-")
    (tmp / "bae").mkdir()
    server = Server(tmp / "bae").start()
    try:
        client = server.user("bench", admin=True)
        ref = ReferenceSSHD(tmp, client.public_key)
        ref_ssh = " ".join(client.ssh_cmd[:-2])  # without "-p PORT"
        ref_env = dict(client.git_env, GIT_SSH_COMMAND=f"{ref_ssh} -p {ref.port}")
        rows = []
        for label, repo in (("10 files", small_repo(tmp / "small")), ("50 MB in 5 commits", big_repo(tmp / "big"))):
            ours, theirs = [], []
            for i in range(runs + 1):  # the first round warms caches and is not counted
                app = f"b{len(rows)}-{i}"
                client.ssh("apps:create", app)
                bare = tmp / "ref" / f"{app}.git"
                run(["git", "init", "-q", "--bare", str(bare)], check=True)
                run(["git", "config", "receive.unpackLimit", "1"], cwd=bare, check=True)
                t_ref = timed(lambda: run(["git", "push", "-q", f"ssh://root@127.0.0.1:{ref.port}{bare}", "master"],
                                          cwd=repo, env=ref_env, check=True))
                t_bae = timed(lambda: run(["git", "push", "-q", client.url(app), "master"],
                                          cwd=repo, env=client.git_env, check=True))
                if i:
                    ours.append(t_bae)
                    theirs.append(t_ref)
            rows.append((f"push {label}", median(ours), median(theirs), "ratio ≤ 1.3"))
        report(f"git push, median of {runs} runs (bae vs OpenSSH sshd + git-receive-pack)", rows)
        ref.stop()
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
