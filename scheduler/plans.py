"""Plans (unit sizes) from the settings: parsing and showing their limits."""

from __future__ import annotations

import re

from bae.errors import Invalid

__all__ = ["memory_bytes", "memory_label", "memory_labels", "check_plan"]

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", re.I)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def memory_bytes(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise Invalid(f"'{text}' is not a memory size", "Write it like 256m or 1g.")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def memory_label(text: str) -> str:
    """``256m`` -> ``256 MB``, ``1g`` -> ``1 GB`` (as messages and `plans` show it)."""
    size = memory_bytes(text)
    if size % 1024**3 == 0:
        return f"{size // 1024**3} GB"
    return f"{size // 1024**2} MB"


def memory_labels(plans: dict) -> dict[str, str]:
    """Each plan's memory limit as messages show it, by plan name."""
    return {name: memory_label(p.memory) for name, p in plans.items()}


def check_plan(plans: dict, name: str) -> str:
    if name not in plans:
        raise Invalid(f"there is no plan named '{name}'", f"Plans: {', '.join(sorted(plans))} (see `plans`).")
    return name
