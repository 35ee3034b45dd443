"""Stable hashes and file-name slugs, shared by every layer of the package.

They live apart from the cache so that the registry (`backbones`), the engine
(`probe`) and the results store (`reports`) can name and key things the same
way without importing one another.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any


def stable_hash(obj: Any, length: int = 16) -> str:
    """A hash of a JSON-able object that does not depend on dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def slug(text: str, limit: int = 60) -> str:
    """``text`` reduced to characters safe in a file name (``unnamed`` when nothing is left)."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
    return out[:limit] or "unnamed"
