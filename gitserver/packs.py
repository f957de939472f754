"""A pushed pack, received into a quarantine directory by git's own index-pack.

The bytes of the pack go from the SSH channel straight into ``git index-pack
--stdin --fix-thin`` as they arrive; index-pack writes the pack and its index
into the quarantine, completes thin packs from the repository (an alternate of
the quarantine) and verifies every object's hash and the pack's checksum.
Afterwards ``git rev-list --objects`` checks that each new ref's history is
complete (the quarantine plus what the repository's refs already reach) — git's
own "connectivity check". Neither step holds the pack or its objects in this
process: memory stays flat however large the push.

Why git and not dulwich: dulwich's ``add_thin_pack`` resolves deltas and
indexes in Python (a 200 MB push took the server past 1 GB and left it there),
while index-pack is the reference implementation, streams from a pipe, is
faster, and enforces a size limit as it reads. git is already a dependency
(buildpack clones), and the same binary gives the connectivity check with
git's wording ("missing necessary objects"). Called by ``gitserver.receive``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import Callable

__all__ = ["PackRefused", "index_pack", "check_connected", "git_env"]

log = logging.getLogger("bae.gitserver")

CHUNK = 64 * 1024


class PackRefused(Exception):
    """The pack cannot be kept: ``status`` for git's report, ``message`` for the pusher."""

    def __init__(self, status: str, message: str, hint: str = "", detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint
        self.detail = detail  # for the operator's log only


def human(size: int) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{size} bytes"


def git_env(repo_dir: str, quarantine: str) -> dict:
    """git sees the repository's refs and objects, and writes only into the quarantine."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": quarantine,  # none of the host's git configuration
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_DIR": repo_dir,
        "GIT_OBJECT_DIRECTORY": quarantine,
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": os.path.join(repo_dir, "objects"),
        "GIT_QUARANTINE_PATH": quarantine,  # git refuses to move refs while this is set
        "LC_ALL": "C",
    }


@dataclass
class _Pump:
    """Copies the channel into index-pack's stdin on its own thread.

    The thread may stay blocked in ``recv`` after index-pack has read the whole
    pack (the client sends nothing more until it has our report); it ends when
    the channel closes. Nothing else reads the channel after the pack.
    """

    recv: Callable[[int], bytes]
    sink: object
    limit: int
    received: int = 0
    too_big: bool = False
    client_gone: bool = False

    def run(self) -> None:
        try:
            while True:
                try:
                    data = self.recv(CHUNK)
                except Exception:  # the connection broke
                    data = b""
                if not data:
                    self.client_gone = True
                    return
                self.received += len(data)
                if self.limit and self.received > self.limit:
                    self.too_big = True
                    return
                try:
                    self.sink.write(data)
                except (BrokenPipeError, ValueError, OSError):
                    return  # index-pack has finished (or failed) reading
        finally:
            try:
                self.sink.close()
            except OSError:
                pass


def index_pack(recv: Callable[[int], bytes], repo_dir: str, quarantine: str, limit: int) -> int:
    """Receive one pack from ``recv`` into ``quarantine``; return its size in bytes.

    Raises PackRefused for a pack over ``limit`` bytes (as soon as it is
    exceeded), a corrupt or truncated pack, or a thin pack whose bases are
    missing.
    """
    with tempfile.TemporaryFile(dir=quarantine) as errors:
        proc = subprocess.Popen(["git", "index-pack", "--stdin", "--fix-thin"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=errors, env=git_env(repo_dir, quarantine),
                                cwd=quarantine, bufsize=0)
        pump = _Pump(recv, proc.stdin, limit)
        thread = threading.Thread(target=pump.run, name="pack-receive", daemon=True)
        thread.start()
        out = proc.stdout.read()
        code = proc.wait()
        if pump.too_big:
            raise PackRefused(
                "pack exceeds maximum allowed size",
                f"this push is larger than the {human(limit)} the platform accepts "
                f"(stopped after {human(pump.received)})",
                "Push fewer commits at a time, keep large files out of git, "
                "or ask the operator to raise [git] max_push_size.",
                f"over max_push_size {limit} after {pump.received} bytes")
        errors.seek(0)
        detail = errors.read(4000).decode("utf-8", "replace").strip()
    if code != 0 or not out.startswith((b"pack\t", b"keep\t")):
        if "unresolved delta" in detail or "did not receive expected object" in detail:
            raise PackRefused("missing necessary objects", "the push lacks objects its pack refers to",
                              "Fetch from the platform and push again.", detail)
        reason = detail.splitlines()[-1].removeprefix("fatal: ") if detail else f"index-pack exited {code}"
        if "early EOF" in detail or (pump.client_gone and not detail):
            reason = "the pack was cut short"
        raise PackRefused(f"bad pack: {reason}"[:200], f"bad pack: {reason}"[:200], "", detail)
    return pump.received


def check_connected(repo_dir: str, quarantine: str, commits: list[bytes]) -> None:
    """Raise PackRefused unless every object reachable from ``commits`` is present.

    What the repository's refs already reach is trusted (``--not --all``), as
    git's own receive-pack does.
    """
    if not commits:
        return
    proc = subprocess.run(["git", "rev-list", "--objects", "--stdin", "--not", "--all", "--quiet"],
                          input=b"".join(c + b"\n" for c in commits), capture_output=True,
                          env=git_env(repo_dir, quarantine), cwd=quarantine)
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip()[:1000]
        raise PackRefused("missing necessary objects", "the push lacks objects its commits need",
                          "Fetch from the platform and push again.", detail)
