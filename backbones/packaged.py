"""Weights shipped inside installed Python packages (``"package:sub/path"``), found without importing them.

Its own module so that the registry (which reports whether packaged weights are installed) and
the resolver (which points a spec at them) both use it without importing each other.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


def packaged_path(packaged: str) -> Path | None:
    """The folder or file `"package:sub/path"` of an installed package, without importing it."""
    package, _, sub = packaged.partition(":")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for location in found.submodule_search_locations:
        target = Path(location) / sub
        if target.exists():
            return target
    return None


def packaged_dir(packaged: str) -> Path | None:
    """The folder `"package:sub/folder"` of an installed package (None for a file)."""
    found = packaged_path(packaged)
    return found if found is not None and found.is_dir() else None
