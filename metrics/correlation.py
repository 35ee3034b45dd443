"""Correlation between per-encoder scores, with a bootstrap confidence interval."""
from __future__ import annotations

from typing import Any

import numpy as np

from alignprobe.errors import ValidationError

from ._validation import as_int

_METHODS = ("pearson", "spearman", "kendall")


def _as_vector(v: Any, name: str) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    arr = np.asarray(v)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValidationError(f"{name} must be a 1-D array of numbers; got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValidationError(f"{name} must be 1-D (one value per encoder/pair); got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValidationError(f"{name} must be finite; {int((~np.isfinite(arr)).sum())} entries are NaN or Inf")
    return arr


def _rowwise_pearson(xb: np.ndarray, yb: np.ndarray) -> np.ndarray:
    xc = xb - xb.mean(axis=1, keepdims=True)
    yc = yb - yb.mean(axis=1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / den
    r[den == 0] = np.nan  # a resample of identical values has no correlation
    return np.clip(r, -1.0, 1.0)


def correlate(
    x: Any,
    y: Any,
    method: str = "pearson",
    n_boot: int = 1000,
    seed: int = 0,
    *,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Correlation coefficient with a percentile-bootstrap confidence interval.

    Used to relate a vision-feature quality (k-means NMI, linear-probe
    accuracy) to alignment across encoders (SAIL, Zhang et al. CVPR 2025, Sec. 3).

    Args:
        x, y: (n,) paired values, n >= 3, neither constant.
        method: "pearson" (linear), "spearman" (rank; ties averaged) or
            "kendall" (tau-b). Coefficient and p-value are scipy.stats'
            pearsonr / spearmanr / kendalltau (two-sided).
        n_boot: bootstrap resamples (>= 1). Pairs are resampled with
            replacement: ``np.random.default_rng(seed).integers(0, n, (n_boot, n))``.
        seed: seed of the resampling.
        confidence: central coverage of the interval, in (0, 1).

    Returns dict(coefficient, ci_low, ci_high, p_value, n, method,
    confidence, n_boot, n_boot_valid). Resamples with a constant side have no
    coefficient and are left out of the percentiles; ``n_boot_valid`` says how
    many remained. With small n the interval is wide and the percentile method
    under-covers; report n alongside it.
    """
    from scipy import stats  # deferred: heavy, and only this function needs it

    if method not in _METHODS:
        raise ValidationError(f"method must be one of {_METHODS}; got {method!r}")
    xv, yv = _as_vector(x, "x"), _as_vector(y, "y")
    if xv.shape[0] != yv.shape[0]:
        raise ValidationError(f"x and y must have the same length (paired values); got {xv.shape[0]} and {yv.shape[0]}")
    n = xv.shape[0]
    if n < 3:
        raise ValidationError(f"x and y need at least 3 pairs for a correlation with a p-value; got {n}")
    for v, name in ((xv, "x"), (yv, "y")):
        if np.all(v == v[0]):
            raise ValidationError(f"{name} is constant ({v[0]!r} everywhere); its correlation is undefined")
    n_boot = as_int(n_boot, "n_boot", low=1)
    seed = as_int(seed, "seed", low=0)
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValidationError(f"confidence must be a number in (0, 1); got {confidence!r}")

    if method == "pearson":
        res = stats.pearsonr(xv, yv)
    elif method == "spearman":
        res = stats.spearmanr(xv, yv)
    else:
        res = stats.kendalltau(xv, yv)
    coefficient, p_value = float(res.statistic), float(res.pvalue)

    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    xb, yb = xv[idx], yv[idx]
    if method == "pearson":
        boot = _rowwise_pearson(xb, yb)
    elif method == "spearman":
        boot = _rowwise_pearson(stats.rankdata(xb, axis=1), stats.rankdata(yb, axis=1))
    else:
        boot = np.array([_kendall_or_nan(xb[i], yb[i]) for i in range(n_boot)])
    valid = boot[np.isfinite(boot)]
    if valid.size == 0:
        raise ValidationError(
            f"no bootstrap resample had a defined coefficient (n = {n} is too small or values barely vary)"
        )
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(valid, [100 * alpha, 100 * (1 - alpha)])
    return {
        "coefficient": coefficient,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p_value": p_value,
        "n": n,
        "method": method,
        "confidence": float(confidence),
        "n_boot": n_boot,
        "n_boot_valid": int(valid.size),
    }


def _kendall_or_nan(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(stats.kendalltau(a, b).statistic)
