"""App logs that outlive their units: one JSON-lines file per deployment.

Lines come from the units (collected by the scheduler), from the platform
(``bae[scheduler]: web.2 crashed …``, deploys, scaling, config changes) and,
at read time, from the router's access log. Each file keeps the last
``logs.retention_lines`` lines. Appends take an flock, so `bae serve` and `bae`
commands in other processes can write at once. Pure file handling: no Docker.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from bae.model import deployment_key, now

__all__ = ["LogStore", "Entry", "Cursor", "router_log_name"]

log = logging.getLogger("bae.logs")


def router_log_name(app: str, deployment: str) -> str:
    """The file nginx writes a deployment's access log to (under the router log directory)."""
    return f"{deployment_key(app, deployment)}.log"


@dataclass(frozen=True)
class Entry:
    t: str  # ISO 8601 UTC with microseconds
    source: str  # app, bae or router
    unit: str  # web.1, scheduler, deploy, router...
    text: str
    cid: str = ""

    def render(self) -> str:
        return f"{self.t} {self.source}[{self.unit}]: {self.text}"

    @property
    def process(self) -> str:
        return self.unit.split(".", 1)[0]


class Cursor:
    """A position in one log file: ``read()`` returns the complete lines added since the last read."""

    def __init__(self, path: Path, parse: Callable[[str], Entry | None]) -> None:
        self.path, self.parse = path, parse
        st = path.stat() if path.exists() else None
        self.position, self.inode = (st.st_size, st.st_ino) if st else (0, None)
        self._recent: list[tuple] = []  # lines read lately: a trimmed file is read again from its start

    def read(self) -> list[Entry]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        if st.st_ino != self.inode or st.st_size < self.position:  # trimmed or replaced: read it again
            self.position, self.inode = 0, st.st_ino
        if st.st_size == self.position:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.position)
            chunk = fh.read()
        complete = chunk.rfind(b"\n") + 1
        self.position += complete
        out = []
        for raw in chunk[:complete].decode("utf-8", "replace").splitlines():
            e = self.parse(raw)
            if e is None or (e.t, e.unit, e.text) in self._recent:
                continue
            self._recent.append((e.t, e.unit, e.text))
            out.append(e)
        del self._recent[:-2000]
        return out


class LogStore:
    def __init__(self, root: Path, retention: int, router_root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.retention = max(100, retention)
        self.router_root = Path(router_root)  # nginx's access logs, one file per deployment

    def path(self, app: str, deployment: str) -> Path:
        return self.root / f"{deployment_key(app, deployment)}.jsonl"

    def append(self, app: str, deployment: str, entries: list[Entry]) -> None:
        if not entries:
            return
        data = "".join(json.dumps({"t": e.t, "s": e.source, "u": e.unit, "c": e.cid, "m": e.text},
                                  ensure_ascii=False) + "\n" for e in entries)
        path = self.path(app, deployment)
        with open(path, "a", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.write(data)
            fh.flush()
            if fh.tell() > self.retention * 400:  # roughly: check the line count only when the file grew
                self._trim(path)

    def _trim(self, path: Path) -> None:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        if len(lines) > self.retention:
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(lines[-self.retention:]), encoding="utf-8")
            os.replace(tmp, path)

    def event(self, app: str, deployment: str, unit: str, text: str) -> None:
        """A platform line: ``bae[unit]: text``. Best effort: a full disk must not fail (or falsely
        refuse) the deploy, scale or command the line is about."""
        try:
            self.append(app, deployment, [Entry(now(), "bae", unit, text)])
        except OSError as exc:
            log.warning("could not write the app log of %s/%s: %s", app, deployment, exc)

    @staticmethod
    def _parse(line: str) -> Entry | None:
        try:
            d = json.loads(line)
            return Entry(d["t"], d["s"], d["u"], d["m"], d.get("c", ""))
        except (ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def _parse_router(line: str) -> Entry | None:
        try:
            d = json.loads(line)
            stamp = datetime.fromtimestamp(float(d["msec"]), timezone.utc).isoformat(timespec="microseconds")
            text = (f'{d["method"]} {d["path"]} {d["status"]} {d["bytes"]}B {float(d["duration"]) * 1000:.0f}ms '
                    f'unit={d["unit"]} request_id={d["request_id"]} client={d["client"]}')
            return Entry(stamp, "bae", "router", text)
        except (ValueError, KeyError, TypeError):
            return None

    def _source(self, app: str, deployment: str, router: bool):
        if router:
            return self.router_root / router_log_name(app, deployment), self._parse_router
        return self.path(app, deployment), self._parse

    @staticmethod
    def _matches(e: Entry, process: str | None, unit: str | None) -> bool:
        if unit:
            return e.unit == unit or (e.source == "bae" and e.text.startswith(unit + " "))
        if process:
            return (e.source == "app" and e.process == process) or (e.source == "bae" and e.text.startswith(process + "."))
        return True

    def read(self, app: str, deployment: str, *, lines: int = 100, process: str | None = None,
             unit: str | None = None, router: bool = False) -> list[Entry]:
        """The last ``lines`` lines, time-ordered: app and platform lines, or only the router's."""
        path, parse = self._source(app, deployment, router)
        if not path.exists():
            return []
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
        if router:
            text = text[-self.retention:]
        entries = [e for e in map(parse, text) if e is not None and self._matches(e, process, unit)]
        entries.sort(key=lambda e: e.t)
        return entries[-lines:] if lines else entries

    def cursor(self, app: str, deployment: str, *, router: bool = False) -> Cursor:
        """Reads the lines written after now, each once (across trims)."""
        return Cursor(*self._source(app, deployment, router))

    def follow(self, app: str, deployment: str, stop, *, process: str | None = None, unit: str | None = None,
               router: bool = False) -> Iterator[Entry]:
        """New lines as they arrive (across unit replacements) until ``stop()`` is true."""
        cursor = self.cursor(app, deployment, router=router)
        while not stop():
            time.sleep(0.2)
            for e in cursor.read():
                if self._matches(e, process, unit):
                    yield e

    def last_time(self, app: str, deployment: str, cid: str) -> str | None:
        """When the last collected line of container ``cid`` was written (to resume after a restart)."""
        try:
            lines = self.path(app, deployment).read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return None
        for line in reversed(lines):  # a container's lines are appended in time order: its last is the latest
            if cid in line:
                e = self._parse(line)
                if e and e.cid == cid:
                    return e.t
        return None

    def remove(self, app: str, deployment: str) -> None:
        """Forget a destroyed deployment's logs, the router's included (app names can be reused)."""
        router = self.router_root / router_log_name(app, deployment)
        for path in (self.path(app, deployment), router, router.with_name(router.name + ".1")):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
