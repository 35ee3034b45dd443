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
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np

from alignprobe.errors import ValidationError

from ._validation import as_int
from .similarity import cka, cknna, mutual_knn

log = logging.getLogger(__name__)

#: Held-out pairs the similarity metrics are measured on (platonic-rep measures a fixed 1,024-sample set).
DEFAULT_SIMILARITY_SAMPLES = 1024
#: Random pairings averaged for the null (chance) level of each score.
DEFAULT_NULL_PERMUTATIONS = 10

_METRICS: dict[str, Callable[..., float]] = {"mutual_knn": mutual_knn, "cka": cka, "cknna": cknna}


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
    chance alone gives these features. `metric`: "mutual_knn", "cka",
    "cknna" or any callable (a, b, **kwargs) -> float.
    """
    fn = _METRICS.get(metric) if isinstance(metric, str) else metric
    if fn is None or not callable(fn):
        raise ValidationError(f"metric must be one of {', '.join(_METRICS)} or a callable; got {metric!r}")
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
) -> dict[str, dict[str, Any]]:
    """mutual-kNN, CKA and CKNNA of paired rows on a fixed seeded sample, each with its null level.

    Rows are L2-normalised by every metric (platonic-rep ``compute_score``
    with ``normalize=True``); CKA is the biased linear CKA of platonic-rep's
    ``cka``. k is capped at sample - 1.

    Returns {"metrics": {mutual_knn, cka, cknna, mutual_knn_null, cka_null,
    cknna_null}, "details": {similarity_n, similarity_seed, similarity_k,
    similarity_null_permutations}}: the metrics go into a run record's
    ``metrics``, the details (what the numbers were measured on) into its ``details``.
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
    metrics: dict[str, Any] = {}
    for name, kwargs in (("mutual_knn", {"k": k}), ("cka", {}), ("cknna", {"k": k})):
        metrics[name] = float(_METRICS[name](a_s, b_s, **kwargs))
        metrics[f"{name}_null"] = null_score(name, a_s, b_s, n_null, seed, **kwargs)
    details = {"similarity_n": int(len(rows)), "similarity_seed": int(seed), "similarity_k": int(k),
               "similarity_null_permutations": int(n_null)}
    return {"metrics": metrics, "details": details}
