"""``.slugignore``: paths removed from the source before the buildpacks run.

Same syntax as .gitignore without negation: a pattern with a slash (other than
a trailing one) is anchored at the root; one without matches any path
component; a trailing slash matches directories only. Pure logic.
"""

from __future__ import annotations

import fnmatch
from typing import Callable

__all__ = ["slugignore_filter"]


def slugignore_filter(text: str | None) -> Callable[[str], bool]:
    """A ``keep(path)`` predicate for file paths (relative, '/'-separated)."""
    patterns: list[tuple[str, bool, bool]] = []  # (pattern, anchored, dir_only)
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("!"):
            continue
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = "/" in line
        patterns.append((line.lstrip("/"), anchored, dir_only))
    if not patterns:
        return lambda path: True

    def keep(path: str) -> bool:
        parts = path.split("/")
        for pattern, anchored, dir_only in patterns:
            # every proper prefix is a directory; the full path is a file
            for depth in range(1, len(parts) + 1):
                is_dir = depth < len(parts)
                if dir_only and not is_dir:
                    continue
                candidate = "/".join(parts[:depth]) if anchored else parts[depth - 1]
                if fnmatch.fnmatchcase(candidate, pattern):
                    return False
        return True

    return keep
