"""One at a time on this host: a file lock shared by every platform process on the machine
(`bae serve`, `bae` commands, other instances), which share its Docker Engine."""

from __future__ import annotations

import contextlib
import fcntl
import re
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["host_lock"]


@contextlib.contextmanager
def host_lock(kind: str, key: str) -> Iterator[None]:
    """Hold the host-wide lock named ``kind`` + ``key`` (characters other than letters, digits,
    dot, dash and underscore in ``key`` become dashes) until the block ends."""
    path = Path(tempfile.gettempdir()) / f"bae-{kind}-{re.sub(r'[^A-Za-z0-9._-]', '-', key)}.lock"
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
