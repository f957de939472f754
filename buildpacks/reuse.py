"""When a build may reuse the previous build's output instead of running the buildpacks.

Docker's layer cache for buildpacks: a buildpack may declare (in ``bae-inputs``)
the source files its output depends on; the built-in python and nodejs packs do
when nothing they run reads the code (no collectstatic, no npm build scripts).
If the previous successful build had such a declaration, the same fingerprint
(stack, buildpacks, config, .slugignore) and identical inputs, and the new
commit only adds or changes files, the new image is the previous one plus a
layer with the changed files: what running the buildpacks would have produced.
Pure logic over Source objects; the runner does the Docker part.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bae.model import Source

__all__ = ["fingerprint", "inputs_digest", "ReusePlan", "plan_reuse", "MAX_DEPTH"]

MAX_DEPTH = 20  # fast layers stacked on one full build before the next full build


_DIGEST_LIMIT = 64 * 1024 * 1024


def _tree_digest(path: str) -> str:
    """A hash of a buildpack's files, read each build (an operator may edit a local buildpack
    while bae serves; a few KB for the built-ins). Symlinks count by their target's name and are never
    followed (a link to /proc/kcore must not be read by root); at most 64 MiB are read."""
    h = hashlib.sha256()
    root = Path(path)
    if root.is_symlink():
        return hashlib.sha256(os.readlink(root).encode()).hexdigest()
    if root.is_file():
        return hashlib.sha256(root.read_bytes()[:_DIGEST_LIMIT]).hexdigest()
    budget = _DIGEST_LIMIT
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames) + sorted(d for d in dirnames if os.path.islink(os.path.join(dirpath, d))):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            if "__pycache__" in rel:
                continue
            if os.path.islink(full):
                h.update(f"{rel}->{os.readlink(full)}\0".encode())
            elif os.path.isfile(full) and budget > 0:
                with open(full, "rb") as fh:
                    data = fh.read(budget)
                budget -= len(data)
                h.update(rel.encode() + b"\0" + data + b"\0")
    return h.hexdigest()


def fingerprint(stack: str, buildpack_dirs: list[str], builder: str, config: dict[str, str],
                slugignore: bytes | None, extra: tuple = ()) -> str:
    """Everything besides the source that decides what the buildpacks produce."""
    data = {
        "stack": stack,
        "buildpacks": [_tree_digest(d) for d in buildpack_dirs],
        "builder": _tree_digest(builder),
        "config": sorted(config.items()),
        "slugignore": hashlib.sha256(slugignore or b"").hexdigest(),
        "extra": list(extra),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def inputs_digest(source: Source, inputs: list[str]) -> str:
    h = hashlib.sha256()
    for path in sorted(inputs):
        entry = source.entry(path)
        h.update(path.encode() + b"=" + (b"%o:%s" % (entry[0], entry[1]) if entry else b"absent") + b"\n")
    return h.hexdigest()


def _files(source: Source, keep: Callable[[str], bool]) -> dict[str, tuple[int, bytes]]:
    return {path: (mode, sha) for path, mode, sha in source.walk() if mode != 0o160000 and keep(path)}


@dataclass
class ReusePlan:
    changed: set[str]
    depth: int


def plan_reuse(previous_reuse: dict | None, fp: str, new_source: Source, old_source: Source,
               keep: Callable[[str], bool]) -> ReusePlan | None:
    """A plan to reuse the previous build, or None when the buildpacks must run."""
    if not previous_reuse or previous_reuse.get("fingerprint") != fp:
        return None
    if previous_reuse.get("depth", 0) >= MAX_DEPTH:
        return None
    if inputs_digest(new_source, previous_reuse["inputs"]) != previous_reuse["digest"]:
        return None
    old, new = _files(old_source, keep), _files(new_source, keep)
    if set(old) - set(new):
        return None  # a deletion: a layer on top cannot remove files
    changed = {path for path, entry in new.items() if old.get(path) != entry}
    return ReusePlan(changed, previous_reuse.get("depth", 0) + 1)
