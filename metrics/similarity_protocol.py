"""How similarity scores are measured so that they can be compared: a fixed sample size and a chance level.

mutual-kNN, CKA and CKNNA depend on the number of samples n (chance
mutual-kNN is about k / (n - 1); biased CKA of independent features is far
above 0 when n is small against the dimension). platonic-rep (Huh et al.
2024, ``measure_alignment.py``) therefore measures every pair on the same
fixed set of samples. This module adds the two things a reader needs to
trust a number:

- ``similarity_sample``: the same seeded subset of rows for every encoder
  pair (default 1,024 held-out pairs; the size actually used is recorded);
- ``null_score``: the mean score of the same features under random pairings
  (rows of ``b`` shuffled), i.e. what "no alignment" looks like at that n and
  dimension; reported beside each score as ``<metric>_null``.

With ``n_permutations``, ``similarity_scores`` goes one step further and
calibrates every score (``calibration.calibrate``, Gröger, Wen & Brbić, ICML
2026): ``<metric>_calibrated``, ``<metric>_p`` and ``<metric>_threshold`` join
the score, and ``<metric>_null`` becomes the mean of those same permutations.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from alignprobe.errors import ValidationError

from ._validation import as_int
from .calibration import calibrate_all
from .measures import get_measure, list_measures

log = logging.getLogger(__name__)

#: Held-out pairs the similarity metrics are measured on (platonic-rep measures a fixed 1,024-sample set).
DEFAULT_SIMILARITY_SAMPLES = 1024
#: Random pairings averaged for the null (chance) level of each score.
DEFAULT_NULL_PERMUTATIONS = 10

#: What ``similarity_scores`` measures unless told otherwise (platonic-rep's measures).
DEFAULT_SIMILARITY_MEASURES = ("mutual_knn", "cka", "cknna")


def similarity_sample(n: int, size: int | None = DEFAULT_SIMILARITY_SAMPLES, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a seeded sample of `size` of `n` rows (all rows when n <= size or size is None).

    The sample depends only on (n, size, seed): every encoder pair measured on
    the same held-out pairs gets the same rows. Drawn without replacement
    with ``np.random.default_rng(seed).choice(n, size, replace=False)``.
    """
    n = as_int(n, "n", low=1)
    seed = as_int(seed, "seed", low=0)
    if size is None:
        return np.arange(n)
    size = as_int(size, "size", low=4)
    if n <= size:
        if n < size:
            log.info("similarity: %d pairs available, fewer than the sample size %d; all are used", n, size)
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def null_score(
    metric: str | Callable[..., float],
    a: Any,
    b: Any,
    n_permutations: int = DEFAULT_NULL_PERMUTATIONS,
    seed: int = 0,
    **kwargs: Any,
) -> float:
    """Mean of `metric(a, b[perm], **kwargs)` over `n_permutations` seeded random permutations of b's rows.

    A random pairing keeps each side's own geometry (n, dimension,
    spectrum) and destroys the correspondence, so this is the score that
    chance alone gives these features. `metric`: a registered measure
    (``list_measures()``: "mutual_knn", "cka", "cknna", ...) or any callable
    (a, b, **kwargs) -> float.
    """
    if isinstance(metric, str):
        try:
            fn: Any = get_measure(metric)
        except ValidationError as exc:
            raise ValidationError(
                f"metric must be one of {', '.join(list_measures())} or a callable; got {metric!r}"
            ) from exc
    else:
        fn = metric
    if not callable(fn):
        raise ValidationError(f"metric must be one of {', '.join(list_measures())} or a callable; got {metric!r}")
    n_permutations = as_int(n_permutations, "n_permutations", low=1)
    seed = as_int(seed, "seed", low=0)
    b_arr = b if hasattr(b, "shape") else np.asarray(b)
    n = int(b_arr.shape[0])
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(n_permutations):
        perm = rng.permutation(n)
        scores.append(float(fn(a, b_arr[perm], **kwargs)))
    return float(np.mean(scores))


def similarity_scores(
    a: Any,
    b: Any,
    k: int = 10,
    *,
    sample_size: int | None = DEFAULT_SIMILARITY_SAMPLES,
    seed: int = 0,
    n_null: int = DEFAULT_NULL_PERMUTATIONS,
    measures: Sequence[str] = DEFAULT_SIMILARITY_MEASURES,
    n_permutations: int | None = None,
    alpha: float = 0.05,
) -> dict[str, dict[str, Any]]:
    """Similarity measures of paired rows on a fixed seeded sample, each with its null level (or calibrated).

    By default mutual-kNN, CKA and CKNNA: rows are L2-normalised by every
    metric (platonic-rep ``compute_score`` with ``normalize=True``); CKA is the
    biased linear CKA of platonic-rep's ``cka``. k is capped at sample - 1 and
    goes to every measure that has a ``k``.

    Args:
        measures: registered measure names (``list_measures()``).
        n_null: permutations averaged for ``<metric>_null`` when not calibrating.
        n_permutations: calibrate each score with this many seeded permutations
            (Algorithm 1 of Gröger, Wen & Brbić 2026; the same permutations for
            every measure); None (the default) reports only the null mean.
        alpha: the calibration's level.

    Returns {"metrics": {<m>, <m>_null [, <m>_calibrated, <m>_p, <m>_threshold]
    for each measure m}, "details": {similarity_n, similarity_seed,
    similarity_k, similarity_null_permutations [, similarity_alpha]}}: the
    metrics go into a run record's ``metrics``, the details (what the numbers
    were measured on) into its ``details``.
    """
    n_a = int(a.shape[0]) if hasattr(a, "shape") else len(a)
    n_b = int(b.shape[0]) if hasattr(b, "shape") else len(b)
    if n_a != n_b:
        raise ValidationError(f"a and b must have the same number of rows (paired); got {n_a} and {n_b}")
    rows = similarity_sample(n_a, sample_size, seed)
    if len(rows) < 4:
        raise ValidationError(f"the similarity metrics need at least 4 pairs; got {len(rows)}")
    a_s, b_s = a[rows], b[rows]
    k = min(as_int(k, "k", low=2), len(rows) - 1)
    if isinstance(measures, str):
        measures = (measures,)
    chosen = [get_measure(m) for m in measures]
    if not chosen:
        raise ValidationError("measures must name at least one similarity measure; see list_measures()")
    metrics: dict[str, Any] = {}
    params = {m.name: ({"k": k} if "k" in m.params() else {}) for m in chosen}
    if n_permutations is None:
        for m in chosen:
            metrics[m.name] = m(a_s, b_s, **params[m.name])
            metrics[f"{m.name}_null"] = null_score(m.name, a_s, b_s, n_null, seed, **params[m.name])
    else:
        results = calibrate_all(a_s, b_s, [m.name for m in chosen], n_permutations, alpha, seed, params=params)
        for r in results.values():
            metrics.update(r.as_metrics())
    details = {"similarity_n": int(len(rows)), "similarity_seed": int(seed), "similarity_k": int(k),
               "similarity_null_permutations": int(n_null if n_permutations is None else n_permutations)}
    if n_permutations is not None:
        details["similarity_alpha"] = float(alpha)
    return {"metrics": metrics, "details": details}
