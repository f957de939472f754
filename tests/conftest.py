"""Shared fixtures: a running `bae serve` per test module, and its clients."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import Server  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("bae")).start()
    yield srv
    code = srv.stop()
    srv.cleanup()
    log = srv.log()
    assert "Traceback" not in log, f"the server logged a traceback:\n{log[-5000:]}"
    assert code == 0, f"bae serve exited {code}:\n{log[-3000:]}"


@pytest.fixture(scope="module")
def admin(server):
    return server.user("root", admin=True)
