"""Node.js toolchain images: a stack plus one Node.js + npm pair, shared by every deployment.

A Node.js app whose ``engines.node`` the stack's Node.js does not satisfy gets that Node.js
and the npm of its line from the npm registry (the nodejs buildpack). Unpacked into the app,
the pair (~60 MB for Node 12 + npm 6) was written and committed again into every release
image, most of such a build's time. Instead, after a build that installed a pair itself,
bae (the trusted runner, not the build) makes a *toolchain image*: the stack image plus a
layer with that pair unpacked at ``/opt/bae/node/ID`` (root's, read-only), from the
tarballs in the platform's store, each one's sha512 computed again. Later builds whose
package.json asks for the same engines (same stack) run in a container from that image;
the buildpack uses the pair only when the sha512s the npm registry gives for what it would
install equal the ones the image holds (``bae-toolchain.json``), else it installs its own as
before and its build makes a new toolchain. The release image is the toolchain image plus
the app's layer: self-contained (Swarm nodes pull it whole from the platform's registry),
with the pair's layer shared by every release built on it.

The index (``build-store/toolchains/KEY.json``, KEY a hash of the stack and the engines
strings, never a name from the user) only says which image to start from; what a build
runs is decided by the sha512 check inside the build. A build that reports a wrong pair
(builds are untrusted) costs later builds of the same engines their speed, never their
integrity. Called by the build runner: ``lookup`` before a build, ``record`` after one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from bae.errors import BaeError, Gone
from bae.hostlock import host_lock
from buildpacks.engine import client, translated
from buildpacks.tarballs import MAX_SIZE

__all__ = ["Toolchain", "engines", "lookup", "record", "parse_report", "HOME_ROOT", "RECIPE"]

log = logging.getLogger("bae.toolchain")

RECIPE = "bae-node-toolchain-1"  # part of every image's id: bump when the layout below changes
HOME_ROOT = "/opt/bae/node"  # a toolchain's Node.js lives at HOME_ROOT/ID (bin/node, include/, lib/node_modules/npm)
MANIFEST = "bae-toolchain.json"  # in the toolchain's directory: what it holds, written by bae
VERSION = re.compile(r"^[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,6}$")
SHA512 = re.compile(r"^[0-9a-f]{128}$")
UNPACKED_LIMIT = 512 << 20  # a "Node.js" larger than this unpacked is not made into an image
NPM_SKIP = ("docs/", "man/", "html/", "changelogs/")  # npm's manuals: 300 files the build does not need


@dataclass(frozen=True)
class Toolchain:
    image: str  # the image tag builds start from
    home: str  # HOME_ROOT/ID inside it


def engines(read: Callable[[str], bytes | None]) -> tuple[str, str] | None:
    """(engines.node, engines.npm) of the app's package.json, or None when it names no Node.js."""
    raw = read("package.json")
    if raw is None or len(raw) > 1 << 20:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    found = data.get("engines") if isinstance(data, dict) else None
    if not isinstance(found, dict) or not isinstance(found.get("node"), str) or not found["node"].strip():
        return None
    npm = found.get("npm") if isinstance(found.get("npm"), str) else ""
    return found["node"][:200], npm[:200]


def _key(stack: str, wanted: tuple[str, str]) -> str:
    return hashlib.sha256(json.dumps([RECIPE, stack, *wanted]).encode()).hexdigest()[:32]


def _id(stack: str, pair: dict) -> str:
    data = [RECIPE, stack, pair["node"]["sha512"], pair["npm"]["sha512"]]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def _tag(instance: str, ident: str) -> str:
    return f"bae/{instance}/toolchain/node:{ident}"


def parse_report(report: object) -> dict | None:
    """The pair a build says it installed ({"node": {"version", "sha512"}, "npm": {...}}), or None
    when the report is not one (builds are untrusted: anything else is ignored)."""
    if not isinstance(report, dict):
        return None
    pair = {}
    for name in ("node", "npm"):
        part = report.get(name)
        if not isinstance(part, dict):
            return None
        version, sha = part.get("version"), part.get("sha512")
        if not (isinstance(version, str) and VERSION.match(version) and isinstance(sha, str) and SHA512.match(sha)):
            return None
        pair[name] = {"version": version, "sha512": sha}
    return pair


def _index(store: Path) -> Path:
    return store / "toolchains"


def _image_exists(tag: str) -> bool:
    try:
        with translated("looking up a toolchain image"):
            client().images.get(tag)
        return True
    except Gone:
        return False


def lookup(store: Path, instance: str, stack: str, read: Callable[[str], bytes | None]) -> Toolchain | None:
    """The toolchain image a build of this source should start from, if the platform has one."""
    wanted = engines(read)
    if wanted is None:
        return None
    try:
        pair = parse_report(json.loads((_index(store) / f"{_key(stack, wanted)}.json").read_text()))
    except (OSError, ValueError):
        return None
    if pair is None:
        return None
    ident = _id(stack, pair)
    tag = _tag(instance, ident)
    try:
        if not _image_exists(tag):
            return None
    except BaeError as exc:
        log.warning("toolchain image %s: %s", tag, exc.message)
        return None
    return Toolchain(tag, f"{HOME_ROOT}/{ident}")


def _tarball(npm_store: Path, sha: str) -> Path:
    return npm_store / sha[:2] / sha[2:4] / sha[4:]


def _checked_copy(path: Path, sha: str, dest) -> None:
    """Copy the store's file into ``dest`` (an open temporary file), its sha512 computed again."""
    digest = hashlib.sha512()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fin:
        if os.fstat(fin.fileno()).st_size > MAX_SIZE:
            raise ValueError(f"{path.name[:16]}: too large")
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            dest.write(chunk)
    if digest.hexdigest() != sha:
        raise ValueError(f"{path.name[:16]}: its sha512 does not match its name")
    dest.seek(0)


def _members(tgz, keep: Callable[[str], bool]) -> Iterator[tuple[tarfile.TarInfo, tarfile.TarFile, str]]:
    """Regular files and directories of a registry tarball, the first path component stripped
    (``package/``), their paths checked (no absolute paths, no ``..``); links and devices dropped."""
    with tarfile.open(fileobj=tgz, mode="r:gz") as tar:
        for info in tar:
            parts = info.name.split("/")[1:]
            if not parts or any(p in ("", ".", "..") for p in parts):
                continue
            rel = "/".join(parts)
            if not (info.isreg() or info.isdir()) or not keep(rel):
                continue
            yield info, tar, rel


def _package_json(tar: tarfile.TarFile, info: tarfile.TarInfo) -> dict:
    try:
        data = json.loads(tar.extractfile(info).read(1 << 20))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _layer(npm_store: Path, pair: dict, home: str, out) -> None:
    """Write the toolchain's files as an uncompressed tar to ``out``: Node.js's bin/node and
    include/ (headers for native addons), npm at lib/node_modules/npm, bin/npm and bin/npx, and
    the manifest; every entry root's, 0755 or 0644."""
    total, now = 0, int(time.time())
    names: dict[str, str] = {}
    prefix = home.lstrip("/")

    def add_dir(tar: tarfile.TarFile, path: str) -> None:
        info = tarfile.TarInfo(path)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, now
        tar.addfile(info)

    with tarfile.open(fileobj=out, mode="w") as layer:
        parts = ""
        for part in prefix.split("/"):
            parts = f"{parts}/{part}" if parts else part
            add_dir(layer, parts)
        for name, keep, into in (
            ("node", lambda rel: rel == "bin/node" or rel == "package.json" or rel.startswith("include/"), ""),
            ("npm", lambda rel: not rel.startswith(NPM_SKIP), "lib/node_modules/npm/"),
        ):
            with tempfile.TemporaryFile() as tgz:
                _checked_copy(_tarball(npm_store, pair[name]["sha512"]), pair[name]["sha512"], tgz)
                for info, tar, rel in _members(tgz, keep):
                    total += info.size
                    if total > UNPACKED_LIMIT:
                        raise ValueError("the unpacked toolchain is too large")
                    if rel == "package.json":
                        names[name] = str(_package_json(tar, info).get("name", ""))
                        if not into:
                            continue  # Node.js's own package.json: checked, not installed
                    out_info = tarfile.TarInfo(f"{prefix}/{into}{rel}")
                    out_info.uid = out_info.gid = 0
                    out_info.uname = out_info.gname = "root"
                    out_info.mtime = info.mtime
                    if info.isdir():
                        out_info.type, out_info.mode = tarfile.DIRTYPE, 0o755
                        layer.addfile(out_info)
                        continue
                    out_info.size = info.size
                    out_info.mode = 0o755 if info.mode & 0o111 else 0o644
                    layer.addfile(out_info, tar.extractfile(info))
        if not names.get("node", "").startswith("node-linux-") or names.get("npm") != "npm":
            raise ValueError(f"the tarballs are not Node.js and npm (they say {names.get('node')!r}, {names.get('npm')!r})")
        for dirpath in ("bin", "lib", "lib/node_modules"):
            add_dir(layer, f"{prefix}/{dirpath}")
        for name, target in (("npm", "../lib/node_modules/npm/bin/npm-cli.js"),
                             ("npx", "../lib/node_modules/npm/bin/npx-cli.js")):
            link = tarfile.TarInfo(f"{prefix}/bin/{name}")
            link.type, link.linkname, link.mode, link.mtime = tarfile.SYMTYPE, target, 0o777, now
            layer.addfile(link)
        manifest = json.dumps(pair, indent=1).encode()
        info = tarfile.TarInfo(f"{prefix}/{MANIFEST}")
        info.size, info.mode, info.mtime = len(manifest), 0o644, now
        layer.addfile(info, io.BytesIO(manifest))



def _build_image(npm_store: Path, stack: str, pair: dict, tag: str, home: str, labels: dict) -> None:
    with tempfile.TemporaryFile() as layer:
        _layer(npm_store, pair, home, layer)
        layer.seek(0)
        container = None
        try:
            with translated("making a toolchain image"):
                container = client().containers.create(stack, command=["true"], labels=labels)
                container.put_archive("/", layer)
                repository, _, version = tag.rpartition(":")
                container.commit(repository=repository, tag=version,
                                 changes=[f"LABEL {k}={v}" for k, v in labels.items()])
        finally:
            if container is not None:
                with contextlib.suppress(BaeError), translated("removing a toolchain container"):
                    container.remove(force=True)


def record(store: Path, instance: str, stack: str, read: Callable[[str], bytes | None], report: object,
           step: Callable[[str], None]) -> str | None:
    """After a successful build that installed a Node.js + npm pair itself: make its toolchain image
    (once per stack and pair) and point this source's engines at it. Returns the image's tag, or None
    (nothing to do, or a failure, which only costs later builds their speed)."""
    wanted, pair = engines(read), parse_report(report)
    if wanted is None or pair is None:
        return None
    ident = _id(stack, pair)
    tag, home = _tag(instance, ident), f"{HOME_ROOT}/{ident}"
    npm_store = store / "npm"
    try:
        with host_lock("toolchain", ident):
            if not _image_exists(tag):
                step(f"Making a toolchain image with Node.js {pair['node']['version']} and npm "
                     f"{pair['npm']['version']} for the next builds (once per platform)")
                _build_image(npm_store, stack, pair, tag, home,
                             {"bae.platform": instance, "bae.role": "toolchain"})
        index = _index(store)
        index.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=index, prefix=".incoming-")
        with os.fdopen(fd, "w") as fh:
            json.dump(pair, fh)
        os.replace(tmp, index / f"{_key(stack, wanted)}.json")
    except (OSError, ValueError, tarfile.TarError) as exc:
        log.warning("no toolchain image for node %s + npm %s: %s", pair["node"]["version"], pair["npm"]["version"], exc)
        return None
    except BaeError as exc:
        log.warning("no toolchain image for node %s + npm %s: %s", pair["node"]["version"], pair["npm"]["version"],
                    exc.message)
        return None
    return tag
