"""Finding a daemon the platform started in an earlier run (nginx, the image registry), which
outlives `bae serve` and is adopted by the next one."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

__all__ = ["find_running"]


def find_running(pid_file: Path, ours: Callable[[int], bool]) -> list[int]:
    """Every running process ``ours`` recognises (by its command line): the pid file's first, then any
    other, so that a pid file removed by hand does not lead to a second daemon."""
    found = []
    try:
        pid = int(pid_file.read_text().split()[0])
        if ours(pid):
            found.append(pid)
    except (OSError, ValueError, IndexError):
        pass
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in found and ours(int(entry.name)):
            found.append(int(entry.name))
    return found
