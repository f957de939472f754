"""A release image made of the previous one plus one layer of files, without a container.

A code-only rebuild (``buildpacks/reuse.py``) is the previous release image plus a layer
with the changed files. Making it with a container (create, ``put_archive``, ``docker
commit``, remove) costs the engine two mounts of the container's file system and a diff
of it: ~0.25 s of a quarter-second rebuild here, as much as `docker build`'s cached COPY
step. ``docker load`` of an archive that holds just the new layer and the image's
configuration does the same in one call: the engine takes the layers it already has by
their chain ID without reading them (moby's ``tarexport`` load), and unpacks only the new
one. The configuration is the previous image's (as the engine reports it) with the new
layer's digest, history entry and labels appended.

An engine that refuses such an archive (e.g. one whose image store needs every layer's
bytes) raises ``Refused``: the runner then makes the image with a container as before.
Called by the build runner only.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import io
import json
import logging
import tarfile
import tempfile
from typing import Iterable

from buildpacks.engine import ENGINE_ERRORS, client

__all__ = ["Refused", "child_config", "add_layer"]

log = logging.getLogger("bae.build")

CHUNK = 1 << 20


class Refused(Exception):
    """The engine did not load the image (the caller makes it another way)."""


def _iso(seconds: int | float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def child_config(attrs: dict, history: list[dict], diff_id: str | None, created: str, created_by: str,
                 labels: dict[str, str]) -> dict:
    """The image configuration of a child of the image ``attrs`` (``docker image inspect``) with
    ``history`` (the engine's history, newest first): one more layer ``diff_id`` (None: no layer),
    one more history entry, ``labels`` set.

    The engine does not report which history entries made no layer; an entry of size 0 is taken
    for one. The engine refuses a configuration with more layer-making entries than layers, never
    one with fewer: a real layer of size 0 (rare) only shifts the sizes `docker history` shows."""
    config = copy.deepcopy(attrs.get("Config") or {})
    config["Labels"] = {**(config.get("Labels") or {}), **labels}
    entries = []
    for item in reversed(history):
        entry = {"created": _iso(item.get("Created") or 0), "created_by": item.get("CreatedBy") or ""}
        if item.get("Comment"):
            entry["comment"] = item["Comment"]
        if not item.get("Size"):
            entry["empty_layer"] = True
        entries.append(entry)
    layers = list((attrs.get("RootFS") or {}).get("Layers") or [])
    own = {"created": created, "created_by": created_by}
    if diff_id is None:
        own["empty_layer"] = True
    else:
        layers.append(diff_id)
    entries.append(own)
    result = {"architecture": attrs.get("Architecture") or "amd64", "os": attrs.get("Os") or "linux",
              "created": created, "config": config, "rootfs": {"type": "layers", "diff_ids": layers},
              "history": entries}
    if attrs.get("Variant"):
        result["variant"] = attrs["Variant"]
    return result


def _add_file(archive: tarfile.TarFile, name: str, fileobj, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    archive.addfile(info, fileobj)


def add_layer(parent: str, tag: str, files: Iterable[bytes] | None, labels: dict[str, str], created_by: str) -> int:
    """Make image ``tag`` (REPOSITORY:TAG): image ``parent`` plus the layer ``files`` (an uncompressed
    tar stream; None or an empty archive: no new layer). Returns the layer's size in bytes (its
    files' contents). Raises Refused when the engine does not load it."""
    try:
        api = client().api
        attrs = api.inspect_image(parent)
        history = api.history(parent)
    except ENGINE_ERRORS as exc:
        raise Refused(f"looking up {parent}: {exc}") from None
    created = datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
    with tempfile.TemporaryFile() as layer, tempfile.TemporaryFile() as archive_file:
        digest, size, content = hashlib.sha256(), 0, 0
        for chunk in files or ():
            digest.update(chunk)
            layer.write(chunk)
            size += len(chunk)
        diff_id = None
        if size:
            layer.seek(0)
            with tarfile.open(fileobj=layer, mode="r:") as check:
                members = check.getmembers()
            content = sum(m.size for m in members if m.isreg())
            diff_id = "sha256:" + digest.hexdigest() if members else None
        image_config = child_config(attrs, history, diff_id, created, created_by, labels)
        config = json.dumps(image_config).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        # the parent's layers by name only: the engine has them (by chain ID) and never opens these
        names = [f"{i}/layer.tar" for i in range(len(image_config["rootfs"]["diff_ids"]))]
        manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": names}]
        with tarfile.open(fileobj=archive_file, mode="w:") as archive:
            _add_file(archive, config_name, io.BytesIO(config), len(config))
            if diff_id is not None:
                layer.seek(0)
                _add_file(archive, names[-1], layer, size)
            body = json.dumps(manifest).encode()
            _add_file(archive, "manifest.json", io.BytesIO(body), len(body))
        archive_file.seek(0)
        try:
            replies = list(api.load_image(archive_file, quiet=True))
        except ENGINE_ERRORS as exc:
            raise Refused(str(exc)) from None
    errors = [r.get("error") or r.get("errorDetail", {}).get("message") for r in replies
              if isinstance(r, dict) and (r.get("error") or r.get("errorDetail"))]
    if errors:
        raise Refused("; ".join(str(e) for e in errors))
    return content
