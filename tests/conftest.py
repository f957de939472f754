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
