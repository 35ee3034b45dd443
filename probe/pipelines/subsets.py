"""Nested, seeded subsets of the training pairs: how alignment grows with the number of pairs.

STRUCTURE (Gröger et al., NeurIPS 2025) and FuseMix (Vouitsis et al., CVPR
2024) report alignment against the number of training pairs. For such a
curve to show the data and not the draw, the smaller sets are subsets of the
larger ones: one seeded permutation of the usable image rows is drawn, and the
subset of size n is its first n rows. ``n_pairs`` is an int (a count), a float
in (0, 1] (a fraction of the usable pairs) or None (all of them).
"""
from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np

from alignprobe.errors import ValidationError

#: The probe needs at least this many usable image-caption pairs.
MIN_PAIRS = 4
#: Mixed into the permutation's seed so the subset draw is independent of the probe's own split.
_SUBSET_STREAM = 19
_ALL = {"all", "none", "full"}


def check_n_pairs(value: Any) -> int | float | None:
    """One ``n_pairs`` value: an int >= 4, a float fraction in (0, 1], or None ("all"); else a clear error."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _ALL):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if text.lstrip("-").isdigit() else float(text)
        except ValueError:
            raise ValidationError(f"n_pairs: {value!r} is not a number of pairs; give e.g. 500, 0.25 or all") from None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValidationError(f"n_pairs must be an int >= {MIN_PAIRS}, a fraction in (0, 1] or None (all); "
                              f"got {value!r}")
    if isinstance(value, numbers.Integral):
        if value < MIN_PAIRS:
            raise ValidationError(f"n_pairs must be at least {MIN_PAIRS} (the probe needs {MIN_PAIRS} pairs); "
                                  f"got {value}")
        return int(value)
    if not 0.0 < float(value) <= 1.0:
        raise ValidationError(f"n_pairs as a float is a fraction of the pairs and must be in (0, 1]; got {value!r}"
                              f" (a count is an int, e.g. 500)")
    return float(value)


def parse_n_pairs(value: Any) -> list[int | float | None]:
    """``"500,2000,all"``, ``[500, 0.5, None]`` or one value -> the list of checked values, duplicates refused."""
    items = [p for p in value.split(",") if p.strip()] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        items = [items]
    out = [check_n_pairs(v) for v in items]
    if not out:
        raise ValidationError("n_pairs: give at least one value, e.g. 500,2000,all")
    if len(set(out)) != len(out):
        raise ValidationError(f"n_pairs: duplicate values in {out}")
    return out


def subset_size(n_pairs: int | float | None, n_usable: int) -> int:
    """How many of ``n_usable`` pairs ``n_pairs`` asks for (a count above n_usable is an error, not capped)."""
    if n_pairs is None:
        return n_usable
    if isinstance(n_pairs, float):
        return max(MIN_PAIRS, int(round(n_pairs * n_usable)))
    if n_pairs > n_usable:
        raise ValidationError(f"n_pairs={n_pairs} but the pairs set has only {n_usable} usable pairs; "
                              f"ask for at most {n_usable} (or all)")
    return int(n_pairs)


def nested_subset(usable_rows: Sequence[int], n_pairs: int | float | None, seed: int = 0) -> np.ndarray:
    """Sorted rows of the seeded subset of ``usable_rows`` that ``n_pairs`` asks for.

    For one seed and one set of usable rows, a smaller subset is always
    contained in a larger one (both are prefixes of the same permutation).
    """
    rows = np.asarray(usable_rows, dtype=np.int64)
    size = subset_size(n_pairs, len(rows))
    if size >= len(rows):
        return np.sort(rows)
    perm = np.random.default_rng([int(seed), _SUBSET_STREAM]).permutation(len(rows))
    return np.sort(rows[perm[:size]])
