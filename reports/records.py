"""Result records: one JSON file per (vision, text, config) run.

One file per record, written atomically, so concurrent sweep shards writing to
the same results directory never clobber each other (CLIP_benchmark's layout).
"""
from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from alignprobe._version import __version__
from alignprobe.errors import DamagedRecordError, ResultNotSavedError
from alignprobe.hashing import slug
from alignprobe.io import write_json_atomic

log = logging.getLogger("alignprobe.records")

RECORD_SUFFIX = ".json"


def record_path(out_dir: str | Path, vision: str, text: str, config_hash: str, kind: str = "probe") -> Path:
    return Path(out_dir) / f"{kind}__{slug(vision)}__{slug(text)}__{config_hash}{RECORD_SUFFIX}"


def failure_path(path: str | Path) -> Path:
    """Where a failed rerun of the record at `path` is written when `path` holds a finished result.

    Beside it (`<stem>.failed.json`), never over it: a failure must not cost
    finished metrics. It ends in `.json`, so the store reads it and the report
    shows both the result and the later failure.
    """
    path = Path(path)
    return path.with_name(f"{path.stem}.failed{RECORD_SUFFIX}")


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


def fallback_dir() -> Path:
    """A new private directory for a record that could not be written to its place.

    Made by `tempfile.mkdtemp` (mode 0700, a name nobody can guess), never a
    fixed name in the shared temp directory, where another local user could
    plant a symlink or a directory and read or replace the result.
    """
    return Path(tempfile.mkdtemp(prefix="alignprobe-unsaved-"))


def write_record(path: str | Path, record: dict) -> Path:
    """Write `record` to `path` atomically; if that fails, keep it elsewhere and say where.

    A record is the product of minutes to hours of work: a full disk or a
    directory that became read-only must not lose it. It is written to a new
    private directory from `fallback_dir()` instead (or, failing that too,
    carried in the error message), and `ResultNotSavedError` names both places.
    """
    path = Path(path)
    try:
        write_json_atomic(path, record)
        return path
    except OSError as err:
        reason = f"{type(err).__name__}: {err.strerror or err}"
    try:
        # A new directory per record: a later failure (a sweep's failed-pair record) never overwrites a kept result.
        kept = fallback_dir() / path.name
        write_json_atomic(kept, record)
    except OSError:
        blob = json.dumps(record, indent=1, sort_keys=True, default=str)
        raise ResultNotSavedError(f"could not write the result record {path} ({reason}), nor a copy in a "
                                  f"private temporary directory; here it is, save it as {path.name}:\n{blob}"
                                  ) from None
    raise ResultNotSavedError(f"could not write the result record {path} ({reason}); the result was kept at "
                              f"{kept}: move it into the results directory as {path.name} once it is "
                              f"writable") from None


def read_record(path: str | Path) -> dict:
    """The record at `path`; `DamagedRecordError` (naming the file) when it is truncated or not a JSON object."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DamagedRecordError(f"result record {path} is damaged ({_reason(err)}); delete it, or rerun "
                                 f"that pair with force=True (--force) to recompute it") from None
    if not isinstance(obj, dict):
        raise DamagedRecordError(f"result record {path} is damaged (holds a JSON {type(obj).__name__}, "
                                 f"not an object); delete it, or rerun that pair with force=True (--force) to recompute it")
    return obj


def _reason(err: Exception) -> str:
    if isinstance(err, json.JSONDecodeError):
        return "empty file" if not err.doc.strip() else f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
    return f"not UTF-8 text ({err})"


def lookup_record(path: str | Path) -> dict | None:
    """The record at `path`, or None when there is none or it is damaged (treated as missing).

    A damaged record is renamed to ``<name>.damaged`` (kept, never deleted) with a
    warning, so the caller recomputes the pair and writes a fresh record.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        return read_record(path)
    except DamagedRecordError as err:
        aside = path.with_name(path.name + ".damaged")
        try:
            os.replace(path, aside)
        except FileNotFoundError:  # another sweep shard moved it first
            pass
        log.warning("%s; moved it to %s, the pair is recomputed", err, aside)
        return None


def iter_records(out_dir: str | Path, unreadable: list[tuple[Path, str]] | None = None
                 ) -> Iterator[tuple[Path, dict]]:
    """Every readable record under `out_dir` (and any other JSON object there, such as a sweep plan).

    Unreadable files are not fatal: each is appended to `unreadable` as
    (path, reason) when a list is given, and logged otherwise, so a report
    can name them instead of silently dropping the pair. A record of another
    shape (`vision_info` a string, `metrics` a list, ...) counts as unreadable.
    """
    for path in sorted(Path(out_dir).glob(f"*{RECORD_SUFFIX}")):
        try:
            record = read_record(path)
            problem = shape_problem(record)
            if problem is not None:
                raise DamagedRecordError(f"result record {path} has another shape ({problem}); it is left out: "
                                         f"delete it, or rerun that pair with force=True (--force) to rewrite it")
            yield path, record
        except (OSError, DamagedRecordError) as err:
            reason = str(err) if isinstance(err, DamagedRecordError) else f"unreadable ({err})"
            if unreadable is not None:
                unreadable.append((path, reason))
            else:
                log.warning("%s", reason)


_SCALAR = (str, int, float, bool, type(None))
#: Fields of a record that the results store reads, and the JSON types each may hold.
_SHAPE = {"kind": str, "status": str, "vision": str, "text": str, "config_hash": (str, type(None)),
          "group_hash": (str, type(None)), "seed": (int, float, type(None)), "started": (str, type(None)),
          "finished": (str, type(None)), "error": _SCALAR, "vision_info": (dict, type(None)),
          "text_info": (dict, type(None)), "timings_s": (dict, type(None)), "metrics": (dict, type(None)),
          "probe_config": (dict, type(None)), "train_config": (dict, type(None)),
          "sail_config": (dict, type(None))}
_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true/false", dict: "an object",
               list: "a list", type(None): "null"}


def shape_problem(record: dict) -> str | None:
    """What makes a result record unusable by the store, or None; other JSON (no vision and text) passes.

    Records are written by this code, but a results directory is shared and
    outlives versions: one odd file must cost its own row, never the report.
    """
    if not ("vision" in record and "text" in record):
        return None
    for key, types in _SHAPE.items():
        if key in record and not _is(record[key], types):
            return f"{key!r} is {_JSON_NAMES.get(type(record[key]), type(record[key]).__name__)}"
    for key in ("vision_info", "text_info", "timings_s", "metrics"):
        inner = record.get(key) or {}
        bad = next((k for k, v in inner.items() if not isinstance(v, _SCALAR)), None)
        if bad is not None:
            return f"{key}[{bad!r}] is {_JSON_NAMES.get(type(inner[bad]), type(inner[bad]).__name__)}, not a value"
    return None


def _is(value, types: type | tuple) -> bool:
    # JSON true/false are Python bools, which are ints: a seed of `true` is not a seed.
    if isinstance(value, bool):
        return bool in (types if isinstance(types, tuple) else (types,))
    return isinstance(value, types)
