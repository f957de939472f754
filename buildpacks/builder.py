#!/usr/bin/env python3
"""Runs INSIDE the build container, as user bae, with the stack's python3.

Heroku's buildpack contract over /home/bae/app (the build dir): for each
buildpack in /tmp/bae/plan.json run ``bin/detect BUILD``, ``bin/compile BUILD
CACHE ENV`` (cwd: the buildpack's dir; each buildpack's ``export`` file is
sourced for the ones after it) and ``bin/release BUILD``. Scripts run through
their shebang's interpreter, so a missing execute bit does not matter. The
result (buildpack names, default process types, the Procfile) is printed last on
a line starting with the plan's nonce, which the host strips from the log.
Stdlib + PyYAML only: this file does not import bae.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys

PLAN_DIR = "/tmp/bae"
BUILD = "/home/bae/app"
CACHE = "/cache/buildpacks"
ENV_DIR = PLAN_DIR + "/env"


def say(text):
    print("-----> " + text, flush=True)


def fail(*lines):
    for line in lines:
        print(" !     " + line, flush=True)
    sys.exit(1)


def script(bp, name):
    path = os.path.join(bp["dir"], "bin", name)
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as fh:
        first = fh.readline(200)
    if first.startswith(b"#!"):
        return shlex.split(first[2:].decode("utf-8", "replace").strip()) + [path]
    return ["/bin/bash", path]


def run(cmd, cwd, capture=False):
    try:
        return subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.STDOUT if not capture else None, text=True)
    except OSError as exc:
        fail(f"cannot run {cmd[-1]}: {exc.strerror}")


def source_export(bp):
    """Apply a buildpack's ``export`` file to the environment of the ones after it."""
    path = os.path.join(bp["dir"], "export")
    if not os.path.isfile(path):
        return
    out = subprocess.run(["bash", "-c", 'set -a; source "$1" >/dev/null 2>&1; env -0', "-", path],
                         stdout=subprocess.PIPE, check=False).stdout
    for item in out.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key and key not in (b"_", b"SHLVL", b"PWD"):
            os.environ[key.decode()] = value.decode("utf-8", "replace")


def declared_inputs(bp, so_far):
    """Union the source paths this buildpack says its output depends on (``bae-inputs``).

    A buildpack that writes no ``bae-inputs`` file, or lists ``*``, depends on
    the whole source: then no later build may reuse this one's output.
    """
    path = os.path.join(bp["dir"], "bae-inputs")
    if so_far is None or not os.path.isfile(path):
        return None
    with open(path) as fh:
        names = {line.strip() for line in fh if line.strip()}
    return None if "*" in names else so_far | names


def reported_toolchain(bp):
    """The Node.js + npm pair a buildpack installed itself (``bae-toolchain.json``: versions and
    sha512s), which bae may make into a toolchain image for later builds (buildpacks/toolchain.py)."""
    path = os.path.join(bp["dir"], "bae-toolchain.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as fh:
            return json.load(fh)
    except ValueError:
        return None


def detect(bp):
    cmd = script(bp, "detect")
    if cmd is None:
        fail(f"buildpack {bp['name']} has no bin/detect")
    result = run(cmd + [BUILD], bp["dir"], capture=True)
    return result.returncode == 0, (result.stdout or "").strip().splitlines()[:1]


def main():
    with open(PLAN_DIR + "/plan.json") as fh:
        plan = json.load(fh)
    os.environ.update(plan["env"])
    os.makedirs(CACHE, exist_ok=True)
    chosen = []
    if plan["mode"] == "configured":
        for bp in plan["buildpacks"]:
            ok, name = detect(bp)
            if not ok:
                fail(f"the configured buildpack {bp['name']} does not accept this app (its bin/detect failed).",
                     "Change the list with buildpacks:set, or clear it with buildpacks:clear to auto-detect.")
            chosen.append((bp, name[0] if name else bp["name"]))
    else:
        for bp in plan["buildpacks"]:
            ok, name = detect(bp)
            if ok:
                chosen.append((bp, name[0] if name else bp["name"]))
                break
        if not chosen:
            found = sorted(e + ("/" if os.path.isdir(os.path.join(BUILD, e)) else "") for e in os.listdir(BUILD))
            lines = ["No buildpack detected this app.",
                     "Files at the root of your push: " + (", ".join(found[:30]) or "(none)")]
            for bp in plan["buildpacks"]:
                lines.append(f"The {bp['name']} buildpack looks for: {bp['looks_for']}")
            lines.append("Add one of those files, or choose a buildpack with buildpacks:set.")
            fail(*lines)
    defaults = {}
    inputs: set | None = set()
    toolchain = None
    for bp, display in chosen:
        say(f"{display} app detected")
        compile_cmd = script(bp, "compile")
        if compile_cmd is None:
            fail(f"buildpack {bp['name']} has no bin/compile")
        sys.stdout.flush()
        result = run(compile_cmd + [BUILD, CACHE, ENV_DIR], bp["dir"])
        if result.returncode != 0:
            fail(f"the {bp['name']} buildpack failed to compile this app (exit {result.returncode}); see above.")
        source_export(bp)
        inputs = declared_inputs(bp, inputs)
        toolchain = reported_toolchain(bp) or toolchain
        release_cmd = script(bp, "release")
        if release_cmd:
            released = run(release_cmd + [BUILD], bp["dir"], capture=True)
            if released.returncode != 0:
                fail(f"the {bp['name']} buildpack's bin/release failed (exit {released.returncode})")
            try:
                import yaml

                data = yaml.safe_load(released.stdout or "") or {}
            except Exception as exc:  # any YAML error: say which buildpack
                fail(f"the {bp['name']} buildpack's bin/release printed invalid YAML: {exc}")
            types = data.get("default_process_types") if isinstance(data, dict) else None
            if isinstance(types, dict):
                defaults.update({str(k): str(v) for k, v in types.items()})
    procfile = None
    path = os.path.join(BUILD, "Procfile")
    if os.path.isfile(path) and not os.path.islink(path):
        with open(path, "rb") as fh:
            procfile = fh.read(65536).decode("utf-8", "replace")
    for entry in os.listdir("/tmp"):  # the plan (PLAN_DIR) and whatever buildpacks left: not in the image
        target = os.path.join("/tmp", entry)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target, ignore_errors=True)
        else:
            os.unlink(target)
    result = {"buildpacks": [d for _, d in chosen], "default_process_types": defaults, "procfile": procfile,
              "inputs": sorted(inputs) if inputs is not None else None, "toolchain": toolchain}
    print(plan["nonce"] + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
