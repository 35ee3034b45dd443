"""Result records: one JSON file per (vision, text, config) run.

One file per record, written atomically, so concurrent sweep shards writing to
the same results directory never clobber each other (CLIP_benchmark's layout).
"""
from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from alignprobe._version import __version__
from alignprobe.io import write_json_atomic

RECORD_SUFFIX = ".json"


def record_path(out_dir: str | Path, vision: str, text: str, config_hash: str, kind: str = "probe") -> Path:
    from alignprobe.probe.embeddings.cache import _slug

    return Path(out_dir) / f"{kind}__{_slug(vision)}__{_slug(text)}__{config_hash}{RECORD_SUFFIX}"


def git_revision() -> str | None:
    """The git commit of the alignprobe checkout, if it is one (recorded for reproducibility)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
            text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    import numpy
    import torch

    return {
        "alignprobe": __version__,
        "git": git_revision(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_record(path: str | Path, record: dict) -> Path:
    write_json_atomic(path, record)
    return Path(path)


def read_record(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def iter_records(out_dir: str | Path) -> Iterator[tuple[Path, dict]]:
    """Every readable record under `out_dir` (unreadable files are skipped, not fatal)."""
    for path in sorted(Path(out_dir).glob(f"*{RECORD_SUFFIX}")):
        try:
            yield path, read_record(path)
        except (OSError, json.JSONDecodeError):
            continue
