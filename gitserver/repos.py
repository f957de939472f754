"""The repository backend: where each deployment's bare repo lives, and how a
pushed commit is read.

Paths are built only from validated names, so nothing a user sends reaches the
file system unchecked. Pushes land in a quarantine object store first (like
git's own ``tmp_objdir``): the pack is stored as received and indexed there,
and its files move into the repository only when the deploy succeeded. A
refused or broken push therefore leaves the repository byte-for-byte as it was.
Called by the receive/upload handlers, the pipeline (``CommitSource``) and the
apps/deployments commands.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from dulwich.object_store import DiskObjectStore
from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo

from bae.errors import NotFound
from bae.model import validate_name

__all__ = ["Repositories", "CommitSource", "DEPLOY_BRANCHES", "ZERO"]

DEPLOY_BRANCHES = (b"refs/heads/master", b"refs/heads/main")
ZERO = b"0" * 40
QUARANTINE_PREFIX = "incoming-"


class Repositories:
    """One bare repository per deployment under ``root/APP/DEPLOYMENT.git``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, app: str, deployment: str) -> Path:
        return self.root / validate_name("app", app) / (validate_name("deployment", deployment) + ".git")

    def create(self, app: str, deployment: str) -> Path:
        path = self.path(app, deployment)
        if not (path / "HEAD").exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{deployment}-", dir=path.parent))
            Repo.init_bare(str(tmp), default_branch=b"master").close()
            os.rename(tmp, path)
        return path

    def open(self, app: str, deployment: str) -> Repo:
        path = self.create(app, deployment)
        return Repo(str(path))

    def destroy(self, app: str, deployment: str | None = None) -> None:
        """Remove one deployment's repo, or with ``deployment=None`` all of the app's."""
        target = self.root / validate_name("app", app)
        if deployment is not None:
            target = self.path(app, deployment)
        if target.exists():
            graveyard = Path(tempfile.mkdtemp(prefix=".removing-", dir=self.root))
            os.rename(target, graveyard / "x")  # atomic: never a half-deleted repo at the path
            shutil.rmtree(graveyard, ignore_errors=True)

    def sweep(self) -> int:
        """Remove what a killed process left: push quarantines and half-made or half-removed repos.

        Called by ``bae serve`` at start-up, before it accepts pushes. Returns how many were removed.
        """
        debris = list(self.root.glob(f"*/*.git/objects/{QUARANTINE_PREFIX}*"))
        debris += list(self.root.glob(".removing-*")) + list(self.root.glob("*/.*-*"))
        for path in debris:
            shutil.rmtree(path, ignore_errors=True)
        return len(debris)


@contextlib.contextmanager
def quarantine(repo: Repo) -> Iterator[str]:
    """A throw-away object directory (``objects/incoming-*``, as git names it); removed on exit.

    Open it with ``quarantine_store`` once the pack is in.
    """
    objects = os.path.join(repo.controldir(), "objects")
    qdir = tempfile.mkdtemp(prefix=QUARANTINE_PREFIX, dir=objects)
    try:
        os.mkdir(os.path.join(qdir, "pack"))
        yield qdir
    finally:
        shutil.rmtree(qdir, ignore_errors=True)


def quarantine_store(repo: Repo, qdir: str) -> DiskObjectStore:
    """The quarantine's objects plus the repository's (an alternate), for dulwich and for git."""
    from gitserver.packs import git_env

    store = DiskObjectStore(qdir, alternates=[os.path.join(repo.controldir(), "objects")])
    store.git_env = git_env(repo.controldir(), qdir)
    return store


def migrate(store: DiskObjectStore, repo: Repo) -> None:
    """Move the quarantined packs into the repository (pack before index, as git does)."""
    dest = os.path.join(repo.controldir(), "objects", "pack")
    names = sorted(os.listdir(store.pack_dir))
    for suffix in (".pack", ".rev", ".idx"):
        for name in names:
            if name.endswith(suffix):
                os.replace(os.path.join(store.pack_dir, name), os.path.join(dest, name))
    for name in os.listdir(store.path):  # loose objects, if a pack was exploded
        if len(name) == 2 and not name.startswith("."):
            src = os.path.join(store.path, name)
            for obj in os.listdir(src):
                os.makedirs(os.path.join(repo.controldir(), "objects", name), exist_ok=True)
                os.replace(os.path.join(src, obj), os.path.join(repo.controldir(), "objects", name, obj))


class CommitSource:
    """The files of one commit, read straight from the object store (no checkout): a ``bae.model.Source``."""

    def __init__(self, store, commit: bytes) -> None:
        self.store = store
        self.commit_id = commit
        obj = store[commit]
        if not isinstance(obj, Commit):
            raise NotFound(f"{commit.decode()} is not a commit")
        self.commit: Commit = obj
        self.tree: Tree = store[obj.tree]

    @property
    def sha(self) -> str:
        return self.commit_id.decode()

    def at(self, sha: str) -> CommitSource:
        return CommitSource(self.store, sha.encode())

    def entry(self, path: str) -> tuple[int, bytes] | None:
        tree = self.tree
        parts = PurePosixPath(path).parts
        for i, part in enumerate(parts):
            try:
                mode, sha = tree[part.encode()]
            except KeyError:
                return None
            if i == len(parts) - 1:
                return mode, sha
            if not stat.S_ISDIR(mode):
                return None
            tree = self.store[sha]
        return None

    def read(self, path: str, limit: int = 1 << 20) -> bytes | None:
        """A regular file's bytes (not a symlink's target), or None if absent."""
        entry = self.entry(path)
        if not entry or not stat.S_ISREG(entry[0]):
            return None
        blob = self.store[entry[1]]
        return blob.as_raw_string()[:limit] if isinstance(blob, Blob) else None

    def walk(self) -> Iterator[tuple[str, int, bytes]]:
        """(path, mode, sha) for every file, symlink and submodule, depth first."""
        stack = [("", self.tree)]
        while stack:
            prefix, tree = stack.pop()
            for entry in tree.iteritems():
                path = prefix + entry.path.decode("utf-8", "surrogateescape")
                if stat.S_ISDIR(entry.mode):
                    stack.append((path + "/", self.store[entry.sha]))
                else:
                    yield path, entry.mode, entry.sha

    def tar(self, prefix: str, uid: int, keep: Callable[[str], bool] = lambda p: True) -> Iterator[bytes]:
        """The commit's files as an uncompressed tar stream under ``prefix``, owned by ``uid``.

        File contents stream from ``git cat-file --batch`` in chunks of at most
        1 MB, so memory stays flat whatever the size of the push or of one file.
        """
        mtime = int(self.commit.commit_time or time.time())
        dirs: set[str] = set()
        pending: list[bytes] = []

        def header(path: str, **fields) -> bytes:
            info = tarfile.TarInfo(f"{prefix}/{path}")
            info.mtime, info.uid, info.gid = mtime, uid, uid
            for name, value in fields.items():
                setattr(info, name, value)
            return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

        def add_dir(path: str) -> None:
            if path in dirs or path in ("", "."):
                return
            add_dir(str(PurePosixPath(path).parent))
            pending.append(header(path, type=tarfile.DIRTYPE, mode=0o755))
            dirs.add(path)

        with _Blobs(self.store) as blobs:
            for path, mode, sha in self.walk():
                if mode == 0o160000 or not keep(path):  # submodules are not fetched
                    continue
                add_dir(str(PurePosixPath(path).parent))
                if stat.S_ISLNK(mode):
                    target = b"".join(blobs.read(sha)).decode("utf-8", "surrogateescape")
                    pending.append(header(path, type=tarfile.SYMTYPE, linkname=target, mode=0o777))
                    continue
                size = blobs.size(sha)
                yield b"".join(pending) + header(path, size=size, mode=0o755 if mode & 0o100 else 0o644)
                pending.clear()
                yield from blobs.read(sha)
                if size % tarfile.BLOCKSIZE:
                    yield tarfile.NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)
        yield b"".join(pending) + tarfile.NUL * (2 * tarfile.BLOCKSIZE)


class _Blobs:
    """Blob contents from one ``git cat-file --batch`` process, in chunks.

    Used with a store that knows its git environment (a push's quarantine);
    otherwise the blobs are read by dulwich, whole.
    """

    CHUNK = 1 << 20

    def __init__(self, store) -> None:
        self.store = store
        self.proc = None
        self._next: tuple[bytes, int, bytes | None] | None = None  # sha, size, (dulwich) data
        env = getattr(store, "git_env", None)
        if env is not None:
            self.proc = subprocess.Popen(["git", "cat-file", "--batch"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, env=env, cwd=env["GIT_OBJECT_DIRECTORY"])

    def __enter__(self) -> "_Blobs":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def size(self, sha: bytes) -> int:
        if self.proc is None:
            data = self.store[sha].as_raw_string()
            self._next = (sha, len(data), data)
            return len(data)
        self.proc.stdin.write(sha + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        if len(line) != 3 or line[1] != b"blob":
            raise KeyError(sha)
        self._next = (sha, int(line[2]), None)
        return int(line[2])

    def read(self, sha: bytes) -> Iterator[bytes]:
        """The blob's bytes in chunks (after ``size(sha)``, or on its own)."""
        if self._next is None or self._next[0] != sha:
            self.size(sha)
        _, left, data = self._next
        self._next = None
        if data is not None:
            yield data
            return
        while left:
            chunk = self.proc.stdout.read(min(left, self.CHUNK))
            if not chunk:
                raise KeyError(sha)
            left -= len(chunk)
            yield chunk
        self.proc.stdout.read(1)  # the newline after each object
