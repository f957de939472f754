"""The import layers: a base every component stands on, components side by side, a root on top.

- ``bae`` (the base: model, errors, store, config, console, logs, access, the unit
  contract) imports nothing of ours but itself;
- the components (``gitserver``, ``buildpacks``, ``scheduler``, ``router``, ``addons``) import
  the base and themselves, never each other and never the root;
- ``control`` (the composition root: platform assembly, daemon, pipeline, deploy,
  CLI, commands) may import everything, and nothing imports it.
Third-party SDKs stay in their rooms: Docker in the runtime modules, the build
side's engine/runner and the add-ons' engine, paramiko and dulwich in gitserver, sqlite-utils in the store.
Function-local imports count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE = "bae"
COMPONENTS = ("gitserver", "buildpacks", "scheduler", "router", "addons")
COMPOSITION_ROOT = "control"
ENTRY_POINTS = {"bae/__main__.py"}  # `python -m bae` is the program itself, not a module anyone imports
SDKS = {  # third-party package -> the only files that may import it
    "docker": ("scheduler/runtime_", "buildpacks/engine.py", "buildpacks/runner.py", "addons/engine.py"),
    "paramiko": ("gitserver/",),
    "dulwich": ("gitserver/",),
    "sqlite_utils": ("bae/store.py",),
    "acme": ("router/acme.py",),  # the ACME client library and its JOSE and DNS helpers
    "josepy": ("router/acme.py",),
    "dns": ("router/acme.py",),
}
# the built-in buildpacks and the builder run inside build containers, not in bae's process
OUTSIDE = ("buildpacks/builder.py", "buildpacks/python/", "buildpacks/nodejs/", "buildpacks/stack/")


def imported(source: str) -> set[str]:
    """Top-level package names a module imports, anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def violations(path: str, source: str) -> list[str]:
    """What is wrong with the imports of the module at ``path`` (relative to the repository)."""
    package = path.split("/", 1)[0]
    if path in ENTRY_POINTS or path.startswith(OUTSIDE):
        return []
    ours = {BASE, COMPOSITION_ROOT, *COMPONENTS}
    allowed = {BASE: {BASE}, COMPOSITION_ROOT: ours}.get(package, {BASE, package})
    found = []
    for name in sorted(imported(source)):
        if name in ours and name not in allowed:
            found.append(f"{path} imports {name}")
        if name in SDKS and not path.startswith(SDKS[name]):
            found.append(f"{path} imports the {name} SDK")
    return found


def modules() -> list[tuple[str, str]]:
    out = []
    for package in (BASE, COMPOSITION_ROOT, *COMPONENTS):
        for file in sorted((ROOT / package).rglob("*.py")):
            out.append((file.relative_to(ROOT).as_posix(), file.read_text()))
    return out


def test_the_layers_hold():
    found = [v for path, source in modules() for v in violations(path, source)]
    assert not found, "imports across the layers:\n" + "\n".join(found)


def test_every_package_is_checked():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == {BASE, COMPOSITION_ROOT, *COMPONENTS}


def test_a_component_importing_the_root_fails_the_check():
    assert violations("scheduler/loop.py", "def f():\n    from control.platform import Platform\n") == [
        "scheduler/loop.py imports control"]
    assert violations("bae/store.py", "import router.table\n") == ["bae/store.py imports router"]
    assert violations("router/nginx.py", "from scheduler.runtime import UnitInfo\n") == [
        "router/nginx.py imports scheduler"]
    assert violations("gitserver/receive.py", "import docker\n") == ["gitserver/receive.py imports the docker SDK"]
    assert violations("control/daemon.py", "from router import Router\nimport docker\n") == [
        "control/daemon.py imports the docker SDK"]
