"""Shared fixtures: a running `bae serve` per test module, and its clients."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import serving  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """One `bae serve` per test module; a module may set SETTINGS (a dict) for it."""
    with serving(tmp_path_factory.mktemp("bae"), getattr(request.module, "SETTINGS", None)) as srv:
        yield srv


@pytest.fixture(scope="module")
def admin(server):
    return server.user("root", admin=True)


@pytest.fixture(scope="session")
def cluster():
    """One Docker Swarm per test run: the host's engine as manager, two dockerd-in-container workers."""
    from cluster import Cluster

    swarm = Cluster(workers=2)
    try:
        yield swarm
    finally:
        swarm.close()


# The trixie and sid stacks take minutes each to build on a fresh machine: when test_runtimes.py
# will run, build them at once, one after the other, in the background, while the other modules'
# tests run (a push that needs one waits for its build through the stack's lock). Built once per
# machine: later runs find both images (tagged by recipe hash). That a stack built during a push
# streams its progress to the pusher is checked by the push whose stack build fails.
_PREBUILD = """
from bae.config import Settings
from buildpacks.stack import build_stack
for name in ("trixie", "sid"):
    build_stack(Settings().build, lambda line: print(line, flush=True), name)
"""
_prebuild: list = []


def pytest_collection_finish(session):
    import subprocess
    import tempfile

    if any(item.nodeid.startswith("tests/integration/test_runtimes.py") for item in session.items) \
            and len({item.module.__name__ for item in session.items}) > 1:
        log = open(Path(tempfile.gettempdir()) / "bae-test-stacks.log", "w")
        _prebuild.append(subprocess.Popen([sys.executable, "-c", _PREBUILD], stdout=log, stderr=subprocess.STDOUT,
                                          cwd=Path(__file__).resolve().parents[1]))


def pytest_collection_modifyitems(config, items):
    """Tests that restart dockerd run only when asked (BAE_TEST_RESTART_DOCKERD=1, as `make test` does):
    on a machine where other test runs share the engine they would pull it from under them."""
    import os

    if os.environ.get("BAE_TEST_RESTART_DOCKERD") == "1":
        return
    dropped = [item for item in items if item.get_closest_marker("restarts_dockerd")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]
        _dropped.extend(dropped)


_dropped: list = []


def pytest_terminal_summary(terminalreporter):
    if _dropped:
        terminalreporter.write_line(f"{len(_dropped)} test(s) that restart dockerd were not run: set "
                                    "BAE_TEST_RESTART_DOCKERD=1 (make test does) where nothing else uses the engine")


def pytest_sessionfinish(session):
    for proc in _prebuild:
        proc.wait()
