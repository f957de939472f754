"""Shared benchmark plumbing: a bae server, timing, medians, the result table."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers import APPS, Server, free_port, make_repo, run, tmpdir, wait_port  # noqa: E402,F401


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(title: str, rows: list[tuple[str, float, float, str]]) -> None:
    """rows: (what, bae, reference, target). Prints figures and the ratio bae/reference."""
    print(f"\n== {title}")
    print(f"{'case':<42}{'bae':>10}{'reference':>12}{'ratio':>8}  target")
    for what, ours, ref, target in rows:
        print(f"{what:<42}{ours:>9.3f}s{ref:>11.3f}s{ours / ref:>8.2f}  {target}")
