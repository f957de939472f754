"""Procfile parsing: ``name: command`` lines, with ``#`` comments and shell syntax kept.

Pure logic; the build runner calls it on the Procfile the build produced.
"""

from __future__ import annotations

import re

__all__ = ["parse_procfile"]

_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_-]{0,29})\s*:\s*(.*)$")


def parse_procfile(text: str) -> tuple[dict[str, str], list[str]]:
    """Return (process types, warnings). Later lines of the same name win, as on Heroku."""
    types: dict[str, str] = {}
    warnings: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            warnings.append(f"Procfile line {number} is not 'name: command' and was skipped: {line[:60]}")
            continue
        name, command = match.group(1).lower(), match.group(2).strip()
        if not command:
            warnings.append(f"Procfile line {number}: process type '{name}' has no command and was skipped")
            continue
        types[name] = command
    return types, warnings
