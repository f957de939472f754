"""The platform's store of registry tarballs (buildpacks/tarballs.py): what a build's npm cache
may give it (checked), and what it gives a build's cache (read-only links), on real files."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from buildpacks.tarballs import CONTENT, merge, seed, tools, wanted

UID = 4242  # the build user's uid in these tests (the tests run as root)
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the store's files are root's: run as root")


def cached(cache: Path, data: bytes, digest: str | None = None) -> Path:
    """``data`` in an npm cache directory at the path of its sha512 (or of ``digest``)."""
    hexd = digest or hashlib.sha512(data).hexdigest()
    path = cache / CONTENT / hexd[:2] / hexd[2:4] / hexd[4:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def stored(store: Path) -> dict[str, Path]:
    return {"".join(p.relative_to(store).parts): p for p in store.rglob("*") if p.is_file()}


def test_merge_takes_only_tarballs_whose_sha512_is_their_name(tmp_path):
    cache, store = tmp_path / "cache" / "npm", tmp_path / "store"
    good = gzip.compress(b"package/package.json")
    cached(cache, good)
    cached(cache, gzip.compress(b"evil"), digest=hashlib.sha512(b"something else").hexdigest())  # lies about itself
    cached(cache, b'{"name": "express", "versions": {}}')  # a packument body: not shared
    link = cache / CONTENT / "ab" / "cd" / ("e" * 124)
    link.parent.mkdir(parents=True)
    (tmp_path / "secret").write_bytes(gzip.compress(b"host file"))
    link.symlink_to(tmp_path / "secret")  # a build's symlink is never followed
    assert merge(cache, store) == 1
    files = stored(store)
    assert list(files) == [hashlib.sha512(good).hexdigest()]
    path = files[hashlib.sha512(good).hexdigest()]
    assert path.read_bytes() == good
    info = path.stat()
    assert (info.st_uid, info.st_mode & 0o777) == (0, 0o444)
    assert merge(cache, store) == 0  # already there


def test_merge_refuses_a_cache_reached_through_a_symlink(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    cached(elsewhere, gzip.compress(b"not the build's"))
    build_cache = tmp_path / "cache"
    build_cache.mkdir()
    (build_cache / "npm").symlink_to(elsewhere)  # planted by a build: on the host it leads elsewhere
    assert merge(build_cache / "npm", tmp_path / "store") == 0
    assert not (tmp_path / "store").exists() or stored(tmp_path / "store") == {}


def test_seed_links_read_only_files_into_directories_the_build_owns(tmp_path):
    source, store = tmp_path / "first" / "npm", tmp_path / "store"
    data = gzip.compress(b"tarball")
    cached(source, data)
    merge(source, store)
    cache = tmp_path / "second" / "npm"
    (tmp_path / "second").mkdir()
    hexd = hashlib.sha512(data).hexdigest()
    assert seed(store, cache, UID, {hexd}) == 1
    linked = cache / CONTENT / hexd[:2] / hexd[2:4] / hexd[4:]
    assert linked.read_bytes() == data
    assert linked.stat().st_ino == stored(store)[hexd].stat().st_ino  # a hard link: no copy
    assert (linked.stat().st_uid, linked.stat().st_mode & 0o777) == (0, 0o444)  # the build cannot change it
    for d in (cache, cache / "_cacache", cache / CONTENT, linked.parent):
        assert d.stat().st_uid == UID  # cacache writes new content there
    assert seed(store, cache, UID, {hexd}) == 0  # nothing missing


def test_seed_replaces_a_planted_symlink_instead_of_following_it(tmp_path):
    source, store = tmp_path / "first" / "npm", tmp_path / "store"
    data = gzip.compress(b"tarball")
    cached(source, data)
    merge(source, store)
    target = tmp_path / "etc"
    target.mkdir()
    build = tmp_path / "second"
    (build / "npm" / "_cacache").mkdir(parents=True)
    (build / "npm" / "_cacache" / "content-v2").symlink_to(target)
    assert seed(store, build / "npm", UID, {hashlib.sha512(data).hexdigest()}) == 1
    assert list(target.iterdir()) == []
    assert not (build / "npm" / "_cacache" / "content-v2").is_symlink()


def tarball(name: str, body: str = "") -> bytes:
    """A registry tarball whose package/package.json names ``name``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path, data in ((f"package/package.json", json.dumps({"name": name}).encode()), ("package/x.js", body.encode())):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_seed_links_only_what_the_lockfile_names_and_the_tools(tmp_path):
    source, store = tmp_path / "first" / "npm", tmp_path / "store"
    express, secret, npm = tarball("express"), tarball("private-thing", "secret"), tarball("npm")
    for data in (express, secret, npm):
        cached(source, data)
    assert merge(source, store) == 3
    assert tools(store) == {hashlib.sha512(npm).hexdigest()}  # marked when it was taken in
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(express).digest()).decode()
    lock = json.dumps({"packages": {"node_modules/express": {"integrity": integrity}}}).encode()
    files = {"package-lock.json": lock, "yarn.lock": b'  integrity "' + integrity.encode() + b'"'}
    digests = wanted(lambda path, limit: files.get(path))
    assert digests == {hashlib.sha512(express).hexdigest()}
    cache = tmp_path / "second" / "npm"
    (tmp_path / "second").mkdir()
    assert seed(store, cache, UID, digests | tools(store) | {"0" * 128, "../etc"}) == 2
    linked = {"".join(p.relative_to(cache / CONTENT).parts) for p in (cache / CONTENT).rglob("*") if p.is_file()}
    assert linked == {hashlib.sha512(express).hexdigest(), hashlib.sha512(npm).hexdigest()}  # not the private one


def test_a_store_from_before_gets_its_tools_marked_once(tmp_path):
    source, store = tmp_path / "first" / "npm", tmp_path / "store"
    yarn = tarball("yarn")
    cached(source, yarn)
    merge(source, store)
    shutil.rmtree(store / "tools")
    assert tools(store) == set()
    merge(source, store)
    assert tools(store) == {hashlib.sha512(yarn).hexdigest()}
