"""Correlation between per-encoder scores, stated honestly for the few points a sweep has.

Each coefficient comes with a percentile-bootstrap interval (resampling
encoders) and a permutation p-value (shuffling the pairing: exact
enumeration when n! permutations are few, else Monte Carlo with the
(1 + hits) / (1 + B) estimate of Phipson & Smyth 2010). Below
``MIN_INTERVAL_N`` encoders no interval is given: a bootstrap of 3 or 4
points mostly redraws the same points and yields degenerate intervals such
as [1.00, 1.00]; the result says ``TOO_FEW_FOR_INTERVALS`` instead.
``correlation_difference`` answers SAIL's question "does clustering quality
predict alignment better than linear separability?" as a paired-bootstrap
interval of the difference of two correlations over the same encoders.
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from alignprobe.errors import ValidationError

from ._validation import as_int

_METHODS = ("pearson", "spearman", "kendall")

#: Fewest encoders for which a bootstrap interval is reported.
MIN_INTERVAL_N = 5
TOO_FEW_FOR_INTERVALS = "too few encoders for intervals"
#: Permutations of the permutation test; with n! <= this, all n! are enumerated (n <= 7).
DEFAULT_PERMUTATIONS = 10_000


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


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise ValidationError(f"method must be one of {_METHODS}; got {method!r}")


def _check_paired(x: Any, y: Any, names: tuple[str, str] = ("x", "y")) -> tuple[np.ndarray, np.ndarray]:
    xv, yv = _as_vector(x, names[0]), _as_vector(y, names[1])
    if xv.shape[0] != yv.shape[0]:
        raise ValidationError(
            f"{names[0]} and {names[1]} must have the same length (paired values); got {xv.shape[0]} and {yv.shape[0]}"
        )
    n = xv.shape[0]
    if n < 3:
        raise ValidationError(f"{names[0]} and {names[1]} need at least 3 pairs for a correlation with a p-value; got {n}")
    for v, name in ((xv, names[0]), (yv, names[1])):
        if np.all(v == v[0]):
            raise ValidationError(f"{name} is constant ({v[0]!r} everywhere); its correlation is undefined")
    return xv, yv


def _check_confidence(confidence: Any) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValidationError(f"confidence must be a number in (0, 1); got {confidence!r}")
    return float(confidence)


def _boot_coefficients(method: str, xb: np.ndarray, yb: np.ndarray) -> np.ndarray:
    """The coefficient of each row pair of (n_boot, n) resamples; NaN where a side is constant."""
    from scipy import stats

    if method == "pearson":
        return _rowwise_pearson(xb, yb)
    if method == "spearman":
        return _rowwise_pearson(stats.rankdata(xb, axis=1), stats.rankdata(yb, axis=1))
    return np.array([_kendall_or_nan(xb[i], yb[i]) for i in range(xb.shape[0])])


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def _permutation_statistics(method: str, xv: np.ndarray, yv: np.ndarray, perms: np.ndarray) -> tuple[float, np.ndarray]:
    """|statistic| of the observed pairing and of each permuted pairing y[perm].

    Only a monotone function of the coefficient is needed: Pearson and
    Spearman (Pearson of ranks) exactly; Kendall's tau-b as its numerator
    sum_{i<j} sign(dx) sign(dy), since the tie terms of its denominator do
    not change when y is permuted.
    """
    from scipy import stats

    if method in ("pearson", "spearman"):
        if method == "spearman":
            xv, yv = stats.rankdata(xv), stats.rankdata(yv)
        obs = float(_rowwise_pearson(xv[None], yv[None])[0])
        return abs(obs), np.abs(_rowwise_pearson(np.broadcast_to(xv, perms.shape), yv[perms]))
    sx = np.sign(xv[:, None] - xv[None, :])
    sy = np.sign(yv[:, None] - yv[None, :])
    obs = abs(float((sx * sy).sum()))
    out = np.empty(len(perms))
    step = max(1, (1 << 22) // (len(xv) ** 2))
    for s in range(0, len(perms), step):
        p = perms[s : s + step]
        out[s : s + step] = np.abs((sy[p[:, :, None], p[:, None, :]] * sx).sum(axis=(1, 2)))
    return obs, out


def permutation_p_value(
    x: Any, y: Any, method: str = "pearson", n_permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0
) -> dict[str, Any]:
    """Two-sided permutation p-value of a correlation: how often a random pairing correlates as strongly.

    p = P(|r(x, y[perm])| >= |r(x, y)|) under uniformly random permutations.
    With n! <= n_permutations every permutation is enumerated and p is exact
    (the identity included); otherwise n_permutations seeded random
    permutations give p = (1 + hits) / (1 + n_permutations) (Phipson & Smyth
    2010), which is never 0. It makes no normality assumption, unlike the
    t-based p of ``scipy.stats.pearsonr``, and is exact at the small n of an
    encoder sweep.

    Returns dict(p_value, exact, n_permutations) with the number of
    permutations actually scored.
    """
    _check_method(method)
    xv, yv = _check_paired(x, y)
    n_permutations = as_int(n_permutations, "n_permutations", low=1)
    seed = as_int(seed, "seed", low=0)
    n = xv.shape[0]
    exact = math.factorial(n) <= n_permutations
    if exact:
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        perms = np.argsort(rng.random((n_permutations, n)), axis=1)
    obs, stats_perm = _permutation_statistics(method, xv, yv, perms)
    # Ties with the observed value count as "as strong" (a relative tolerance absorbs rounding).
    hits = int(np.sum(stats_perm >= obs - 1e-12 * max(1.0, obs)))
    p = hits / len(perms) if exact else (1 + hits) / (1 + len(perms))
    return {"p_value": float(p), "exact": bool(exact), "n_permutations": int(len(perms))}


def _bootstrap_interval(method, xv, yv, n_boot, seed, confidence):
    """(ci_low, ci_high, ci_note, n_boot_valid) of the percentile bootstrap; no interval below
    MIN_INTERVAL_N pairs."""
    n = xv.shape[0]
    if n < MIN_INTERVAL_N:
        return None, None, TOO_FEW_FOR_INTERVALS, 0
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boot = _boot_coefficients(method, xv[idx], yv[idx])
    valid = boot[np.isfinite(boot)]
    if valid.size == 0:
        raise ValidationError(
            f"no bootstrap resample had a defined coefficient (n = {n} is too small or values barely vary)"
        )
    lo, hi = _percentiles(valid, confidence)
    return lo, hi, None, int(valid.size)


def correlate(
    x: Any,
    y: Any,
    method: str = "pearson",
    n_boot: int = 1000,
    seed: int = 0,
    *,
    confidence: float = 0.95,
    n_permutations: int = DEFAULT_PERMUTATIONS,
) -> dict[str, Any]:
    """Correlation coefficient with a percentile-bootstrap interval and a permutation p-value.

    Used to relate a vision-feature quality (k-NN accuracy, k-means NMI,
    linear-probe accuracy) to alignment across encoders (SAIL, Zhang et al.
    CVPR 2025, Sec. 3).

    Args:
        x, y: (n,) paired values, n >= 3, neither constant.
        method: "pearson" (linear), "spearman" (rank; ties averaged) or
            "kendall" (tau-b). Coefficient and ``p_value`` are scipy.stats'
            pearsonr / spearmanr / kendalltau (two-sided).
        n_boot: bootstrap resamples (>= 1). Pairs are resampled with
            replacement: ``np.random.default_rng(seed).integers(0, n, (n_boot, n))``.
        seed: seed of the resampling and of the permutations.
        confidence: central coverage of the interval, in (0, 1).
        n_permutations: permutations of ``permutation_p_value`` (exact below n = 8).

    Returns dict(coefficient, ci_low, ci_high, ci_note, p_value,
    p_permutation, p_permutation_exact, n, method, confidence, n_boot,
    n_boot_valid). Resamples with a constant side have no coefficient and are
    left out of the percentiles; ``n_boot_valid`` says how many remained.
    With n < MIN_INTERVAL_N (5) there is no interval: ci_low and ci_high are
    None and ``ci_note`` is TOO_FEW_FOR_INTERVALS. With small n the percentile
    interval under-covers; report n alongside it.
    """
    from scipy import stats  # deferred: heavy, and only this module needs it

    _check_method(method)
    xv, yv = _check_paired(x, y)
    n = xv.shape[0]
    n_boot = as_int(n_boot, "n_boot", low=1)
    seed = as_int(seed, "seed", low=0)
    confidence = _check_confidence(confidence)

    if method == "pearson":
        res = stats.pearsonr(xv, yv)
    elif method == "spearman":
        res = stats.spearmanr(xv, yv)
    else:
        res = stats.kendalltau(xv, yv)
    coefficient, p_value = float(res.statistic), float(res.pvalue)
    perm = permutation_p_value(xv, yv, method, n_permutations, seed)

    lo, hi, note, n_valid = _bootstrap_interval(method, xv, yv, n_boot, seed, confidence)
    return {
        "coefficient": coefficient,
        "ci_low": lo,
        "ci_high": hi,
        "ci_note": note,
        "p_value": p_value,
        "p_permutation": perm["p_value"],
        "p_permutation_exact": perm["exact"],
        "n": n,
        "method": method,
        "confidence": confidence,
        "n_boot": n_boot,
        "n_boot_valid": n_valid,
    }


def correlation_difference(
    x1: Any,
    x2: Any,
    y: Any,
    method: str = "pearson",
    n_boot: int = 1000,
    seed: int = 0,
    *,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """r(x1, y) - r(x2, y) over the same encoders, with a paired-bootstrap interval.

    Does predictor x1 (clustering quality) track y (alignment) better than
    x2 (linear separability)? Each resample draws encoders with replacement,
    ``np.random.default_rng(seed).integers(0, n, (n_boot, n))``, and scores
    both predictors on the *same* draw, so their shared noise cancels in the
    difference. An interval that excludes 0 says the two correlations
    differ at that confidence.

    Returns dict(difference, coefficient_1, coefficient_2, ci_low, ci_high,
    ci_note, n, method, confidence, n_boot, n_boot_valid); below
    MIN_INTERVAL_N encoders the interval is None with ``ci_note`` =
    TOO_FEW_FOR_INTERVALS. Resamples where either coefficient is undefined are dropped.
    """
    _check_method(method)
    x1v, yv = _check_paired(x1, y, ("x1", "y"))
    x2v, _ = _check_paired(x2, y, ("x2", "y"))
    n = yv.shape[0]
    n_boot = as_int(n_boot, "n_boot", low=1)
    seed = as_int(seed, "seed", low=0)
    confidence = _check_confidence(confidence)
    c1 = float(_boot_coefficients(method, x1v[None], yv[None])[0])
    c2 = float(_boot_coefficients(method, x2v[None], yv[None])[0])
    lo = hi = note = None
    n_valid = 0
    if n < MIN_INTERVAL_N:
        note = TOO_FEW_FOR_INTERVALS
    else:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        diff = _boot_coefficients(method, x1v[idx], yv[idx]) - _boot_coefficients(method, x2v[idx], yv[idx])
        valid = diff[np.isfinite(diff)]
        if valid.size == 0:
            raise ValidationError(f"no bootstrap resample had both coefficients defined (n = {n})")
        lo, hi = _percentiles(valid, confidence)
        n_valid = int(valid.size)
    return {
        "difference": c1 - c2,
        "coefficient_1": c1,
        "coefficient_2": c2,
        "ci_low": lo,
        "ci_high": hi,
        "ci_note": note,
        "n": n,
        "method": method,
        "confidence": confidence,
        "n_boot": n_boot,
        "n_boot_valid": n_valid,
    }


def _kendall_or_nan(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import stats

    if np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(stats.kendalltau(a, b).statistic)
