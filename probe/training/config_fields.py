"""What the engine's `TrainConfig` needs from any config: dict round-trips and field checks.

It is a frozen dataclass written into records and checkpoints as JSON and
read back, so it needs `to_dict` / `from_dict` (tuples become lists; unknown
keys are an error, not silently dropped) and field validation with errors
that name the class, the field and the value.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from alignprobe.errors import ValidationError


class ConfigDictMixin:
    """`replace`, `to_dict` and `from_dict` for a frozen dataclass config."""

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        # JSON has no tuples; from_dict's __post_init__ turns lists back into them.
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValidationError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
        return cls(**values)


def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_real(v) -> bool:
    return isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def require(owner: str, name: str, value, ok: Callable[[Any], Any], what: str) -> None:
    """Raise `ValidationError` "<owner>.<name> must be <what>" unless ``ok(value)``."""
    try:
        good = ok(value)
    except TypeError:
        good = False
    if not good:
        raise ValidationError(f"{owner}.{name} must be {what}, got {value!r}")
