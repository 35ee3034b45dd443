"""Option dataclasses shared by the API and the CLI.

Precedence (lm-eval-harness style): CLI flags > config file > these defaults.
`None` means "keep the model's or the data's own default" and is never written
over a real default.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from alignprobe.errors import ValidationError


ENV_CACHE_DIR = "ALIGNPROBE_CACHE_DIR"


def default_cache_dir() -> Path:
    """`$ALIGNPROBE_CACHE_DIR`, else `$XDG_CACHE_HOME/alignprobe`, else `~/.cache/alignprobe`."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "alignprobe"


@dataclass
class EncodeOptions:
    """How to run an encoder over a data source and where to keep the result."""

    batch_size: int = 64
    device: str = "auto"  # auto | cpu | cuda | cuda:1 | mps
    dtype: str | None = None  # fp32 | fp16 | bf16; None = fp32 on CPU, fp16 on GPU
    num_workers: int | None = None  # None = one per spare core for images, 0 for texts
    storage_dtype: str = "fp16"  # dtype of the cached embeddings
    cache_dir: str | None = None  # None = $ALIGNPROBE_CACHE_DIR or ~/.cache/alignprobe
    recompute: bool = True  # False: a cache miss is an error (--no-recompute)
    shard: str | None = None  # "i/n"; None = torchrun's RANK/WORLD_SIZE or the whole set
    strict: bool = False  # an unreadable image is an error instead of skipped
    quiet: bool = False
    shard_rows: int | None = None  # rows per cache shard (the resume unit); None = the cache's default
    # Run model code an encoder ships (hub auto_map) that the registry does not pin to a commit; a permission,
    # not part of any encoder's identity or cache key.
    trust_remote_code: bool = False

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValidationError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.storage_dtype not in ("fp16", "fp32"):
            raise ValidationError(f"storage_dtype must be 'fp16' or 'fp32', got {self.storage_dtype!r}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValidationError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.shard_rows is not None and self.shard_rows < 1:
            raise ValidationError(f"shard_rows must be >= 1, got {self.shard_rows}")
        if self.dtype not in (None, "fp32", "fp16", "bf16"):
            raise ValidationError(f"dtype must be one of fp32, fp16, bf16, got {self.dtype!r}")

    def cache_root(self) -> Path:
        """Where the embedding cache lives: ``cache_dir``, else `default_cache_dir()`."""
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def override(obj, **changes):
    """A copy of dataclass `obj` with the non-None `changes` applied (unset flags keep defaults)."""
    names = {f.name for f in fields(obj)}
    unknown = set(changes) - names
    if unknown:
        raise ValidationError(f"unknown option(s) {sorted(unknown)}; valid: {sorted(names)}")
    values = asdict(obj)
    values.update({k: v for k, v in changes.items() if v is not None})
    return type(obj)(**values)
