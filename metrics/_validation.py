"""Input checks shared by the metric functions.

Every public metric validates at its boundary with these helpers, so a bad
argument fails with one message that names the argument, what it must be,
and what it got, instead of a shape error deep inside a matmul.
"""
from __future__ import annotations

import numbers
from typing import Any, Iterable

import numpy as np
import torch

from alignprobe.errors import ValidationError


def _describe(x: Any) -> str:
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return f"{type(x).__name__} of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__}"


def as_matrix(
    x: Any,
    name: str,
    *,
    dtype: torch.dtype = torch.float32,
    min_rows: int = 1,
) -> torch.Tensor:
    """Return `x` as a finite 2-D floating tensor with at least `min_rows` rows.

    numpy arrays are wrapped without a copy where the dtype allows; torch
    tensors keep their device, so a caller's GPU features are scored on the GPU.
    """
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        try:
            arr = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise ValidationError(f"{name} must be a 2-D array of numbers; got {_describe(x)} ({exc})") from exc
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValidationError(f"{name} must be a 2-D array of numbers; got an array of dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex() or t.dtype == torch.bool:
        raise ValidationError(f"{name} must hold real numbers; got dtype {t.dtype}")
    if t.ndim != 2:
        raise ValidationError(
            f"{name} must be 2-D (n_samples, n_features); got shape {tuple(t.shape)}"
        )
    if t.shape[0] < min_rows:
        what = "must not be empty" if t.shape[0] == 0 else f"must have at least {min_rows} rows"
        raise ValidationError(f"{name} {what}; got shape {tuple(t.shape)}")
    if t.shape[1] == 0:
        raise ValidationError(f"{name} must have at least one feature column; got shape {tuple(t.shape)}")
    t = t.to(dtype)
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).any(dim=1).sum())
        raise ValidationError(
            f"{name} must contain only finite values; {bad} of {t.shape[0]} rows hold NaN or Inf"
        )
    return t


def as_numpy_matrix(x: Any, name: str, *, min_rows: int = 1) -> np.ndarray:
    """Like `as_matrix`, but a C-contiguous float32 numpy array (what faiss wants)."""
    t = as_matrix(x, name, min_rows=min_rows).cpu()
    return np.ascontiguousarray(t.numpy())


def as_labels(y: Any, name: str, n: int | None = None) -> np.ndarray:
    """Return class labels as a 1-D integer numpy array (of length `n` if given)."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValidationError(f"{name} must be a 1-D array of class labels; got shape {arr.shape}")
    if arr.size == 0:
        raise ValidationError(f"{name} must not be empty")
    if not np.issubdtype(arr.dtype, np.integer):
        # Float labels that are whole numbers (e.g. loaded from CSV) are fine;
        # anything else is most likely features passed in the wrong slot.
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValidationError(f"{name} must hold integer class labels; got dtype {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise ValidationError(f"{name} must have one label per row ({n}); got {arr.shape[0]} labels")
    return arr.astype(np.int64, copy=False)


def same_rows(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValidationError(
            f"{name_a} and {name_b} must have the same number of rows (one per sample, paired); "
            f"got {a.shape[0]} and {b.shape[0]}"
        )


def same_cols(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValidationError(
            f"{name_a} and {name_b} must have the same feature dimension; got {a.shape[1]} and {b.shape[1]}"
        )


def as_int(value: Any, name: str, *, low: int = 1, high: int | None = None, high_reason: str = "") -> int:
    """Return `value` as an int in [low, high]; bools are refused (True is not a k)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValidationError(f"{name} must be an integer; got {value!r}")
    v = int(value)
    if v < low:
        raise ValidationError(f"{name} must be >= {low}; got {v}")
    if high is not None and v > high:
        why = f" ({high_reason})" if high_reason else ""
        raise ValidationError(f"{name} must be <= {high}{why}; got {v}")
    return v


def as_ks(ks: Any, name: str, *, high: int, high_reason: str = "") -> tuple[int, ...]:
    """Return one int or an iterable of ints as a sorted tuple of distinct ints in [1, high]."""
    if isinstance(ks, numbers.Integral) and not isinstance(ks, (bool, np.bool_)):
        items: Iterable[Any] = (ks,)
    else:
        try:
            items = list(ks)
        except TypeError:
            raise ValidationError(f"{name} must be an integer or a sequence of integers; got {ks!r}") from None
    out = sorted({as_int(k, name, low=1, high=high, high_reason=high_reason) for k in items})
    if not out:
        raise ValidationError(f"{name} must name at least one k; got an empty sequence")
    return tuple(out)


def as_positive_float(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValidationError(f"{name} must be a positive number; got {value!r}")
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise ValidationError(f"{name} must be a positive finite number; got {v}")
    return v


def as_chunk_size(value: Any, name: str = "chunk_size") -> int | None:
    if value is None:
        return None
    return as_int(value, name, low=1)


def auto_chunk(n_rows: int, n_cols: int, chunk_size: int | None, budget: int = 1 << 25) -> int:
    """Rows per block so that a (rows, n_cols) float32 block stays near `budget` elements (128 MiB).

    Blocks much larger than this buy no speed (the matmul is already GEMM-bound)
    and make 100k x 100k problems run out of memory.
    """
    if chunk_size is not None:
        return max(1, min(chunk_size, n_rows))
    return max(1, min(n_rows, budget // max(1, n_cols), 8192))
