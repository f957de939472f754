"""Text a person reads: Heroku-style steps, details, errors and tables.

A Console writes to a pair of binary streams, so the same command code serves
the local terminal and an SSH channel. Nothing else in bae formats user output.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import BinaryIO, Iterable, Sequence

__all__ = ["Console", "Steps", "ago", "clock", "duration", "STEP", "DETAIL", "ERROR"]

STEP = "-----> "
DETAIL = " " * 7
ERROR = " !     "


class Steps:
    """Heroku's layout over a line writer ``out(text)``: ``-----> step`` and indented details."""

    def out(self, text: str = "") -> None:
        raise NotImplementedError

    def step(self, text: str) -> None:
        self.out(STEP + text)

    def detail(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            self.out(DETAIL + line)


class Console(Steps):
    """Where a command's output goes: ``out`` for results, ``err`` for errors."""

    def __init__(self, out: BinaryIO, err: BinaryIO) -> None:
        self._out = out
        self._err = err
        self._lock = threading.Lock()

    def _emit(self, stream: BinaryIO, data: bytes) -> None:
        with self._lock:
            stream.write(data)
            flush = getattr(stream, "flush", None)
            if flush:
                flush()

    def _write(self, stream: BinaryIO, text: str) -> None:
        self._emit(stream, text.encode("utf-8", "replace"))

    def out(self, text: str = "") -> None:
        self._write(self._out, text + "\n")

    def raw(self, data: bytes) -> None:
        """Bytes as they are (a one-off unit's output, a config value) to the output stream."""
        self._emit(self._out, data)

    def raw_err(self, data: bytes) -> None:
        self._emit(self._err, data)

    def err(self, text: str) -> None:
        self._write(self._err, text + "\n")

    def error(self, message: str, hint: str | None = None) -> None:
        lines = message.splitlines() + (hint.splitlines() if hint else [])
        self._write(self._err, "".join(f"{ERROR}{line}\n" for line in lines))

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str = "") -> None:
        rows = [["" if c is None else str(c) for c in row] for row in rows]
        if not rows:
            if empty:
                self.out(empty)
            return
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

        self.out(line([h.upper() for h in headers]))
        for row in rows:
            self.out(line(row))


def ago(stamp: str | None, now: datetime | None = None) -> str:
    """``2m ago`` for an ISO timestamp, the way Heroku shows ages."""
    if not stamp:
        return ""
    then = datetime.fromisoformat(stamp)
    return duration(((now or datetime.now(timezone.utc)) - then).total_seconds()) + " ago"


def clock(epoch: float | None) -> str:
    """``12:00:03``: a moment of today as event lines tell it (local time); ``?`` when not known."""
    return time.strftime("%H:%M:%S", time.localtime(epoch)) if epoch else "?"


def duration(seconds: float) -> str:
    """``45s``, ``3m``, ``2h``, ``5d``: the largest whole unit, as `ps` and `releases` show ages."""
    seconds = int(max(0, seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
