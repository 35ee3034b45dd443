"""Clustering quality of features: k-means, scored by NMI / ARI against class labels.

SAIL (Zhang et al., CVPR 2025) finds the k-means NMI of vision features a
better predictor of vision-language alignment than linear-probe accuracy.

Speed: the cost of scikit-learn's KMeans is mostly its k-means++ seeding on
all n points (k sequential passes over the data). Seeding quality is what
matters, not seeding on every point, so the seeds here come from greedy
k-means++ on a random subsample, done on a precomputed subsample Gram
matrix (one GEMM, then k cheap steps); faiss then runs Lloyd's iterations on
all points, which are GEMM-bound.

Why not `sklearn.cluster.kmeans_plusplus` on the same subsample: it computes
each step's candidate distances afresh (a skinny (trials x m) GEMM per seed).
Measured on a shared 2-core machine (load ~11, runs interleaved), 8,192 x 768
subsample, k = 1,000: 124-287 s against 6-24 s here, the same potential
(8188.2 vs 8188.5) and seed-assignment NMI (0.727 vs 0.726);
`benchmarks/metrics_speed.py` prints the comparison.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import numpy as np
import torch

from alignprobe.errors import ValidationError

from ._validation import as_int, as_labels, as_numpy_matrix
from .registry import register_metric

# Subsample Gram matrices above this many rows cost more memory than they save time.
_GRAM_MAX_ROWS = 8192


@contextlib.contextmanager
def _threads(n_threads: int | None) -> Iterator[None]:
    """Temporarily set faiss's OpenMP and torch's intra-op thread counts; restore on exit."""
    if n_threads is None:
        yield
        return
    import faiss

    old_faiss, old_torch = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(n_threads)
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old_faiss)
        torch.set_num_threads(old_torch)


def kmeanspp_seeds(x: Any, k: int, *, seed: int = 0, n_local_trials: int | None = None) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; greedy variant as in scikit-learn).

    Each new seed is the best, by resulting potential, of ``n_local_trials``
    candidates drawn with probability proportional to the squared distance to
    the nearest chosen seed (default 2 + ln k). x is (m, d); returns the row
    indices of x chosen as seeds, shape (k,). With m <= 8192 rows the squared distances come
    from one m x m Gram matrix, so each step reads a few rows instead of all of x.
    """
    x = as_numpy_matrix(x, "x")
    m = x.shape[0]
    k = as_int(k, "k", low=1, high=m, high_reason=f"x has only {m} rows")
    seed = as_int(seed, "seed", low=0)
    if n_local_trials is None:
        trials = 2 + int(math.log(k))
    else:
        trials = as_int(n_local_trials, "n_local_trials", low=1)
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    sq = (xt * xt).sum(1)
    gram = xt @ xt.T if m <= _GRAM_MAX_ROWS else None

    def sq_dist(rows: torch.Tensor) -> torch.Tensor:
        dots = gram[rows] if gram is not None else xt[rows] @ xt.T
        return (sq[rows, None] + sq[None, :] - 2.0 * dots).clamp_(min=0)

    chosen = torch.empty(k, dtype=torch.long)
    chosen[0] = torch.randint(m, (1,), generator=gen)
    closest = sq_dist(chosen[:1])[0]
    for i in range(1, k):
        # Sample candidates ∝ D^2 by inverting the cumulative potential (float64: m can be large).
        cum = torch.cumsum(closest.double(), 0)
        total = float(cum[-1])
        if total <= 0:  # fewer distinct points than k: the rest are duplicates
            cand = torch.randint(m, (trials,), generator=gen)
        else:
            r = torch.rand(trials, generator=gen, dtype=torch.float64) * total
            cand = torch.searchsorted(cum, r).clamp_(max=m - 1)
        d = torch.minimum(sq_dist(cand), closest[None, :])
        best = int(torch.argmin(d.double().sum(1)))
        closest = d[best]
        chosen[i] = cand[best]
    return chosen.numpy()


def _lloyd(
    x: np.ndarray, init: np.ndarray, max_iter: int, tol: float, seed: int
) -> tuple[np.ndarray, np.ndarray, float, int, list[float]]:
    """faiss Lloyd iterations from `init`; returns (centroids, assignment, inertia, n_iter, seconds per iteration)."""
    import faiss  # deferred: a heavy import most metric users never need
    n, d = x.shape
    k = init.shape[0]
    cp = faiss.ClusteringParameters()
    cp.niter = max_iter
    cp.seed = seed
    cp.max_points_per_centroid = max(1, -(-n // k)) + 1  # never subsample: use every point
    cp.min_points_per_centroid = 1
    cp.early_stop_threshold = tol
    clus = faiss.Clustering(d, k, cp)
    clus.centroids.resize(0)
    faiss.copy_array_to_vector(np.ascontiguousarray(init, dtype=np.float32).ravel(), clus.centroids)
    index = faiss.IndexFlatL2(d)
    clus.train(x, index)
    stats = clus.iteration_stats
    times = [stats.at(i).time for i in range(stats.size())]
    per_iter = [t1 - t0 for t0, t1 in zip([0.0] + times[:-1], times)]
    centroids = faiss.vector_to_array(clus.centroids).reshape(k, d)
    # Final E-step, so every point is labelled by its nearest final centroid.
    index.reset()
    index.add(centroids)
    dist, assign = index.search(x, 1)
    return centroids, assign[:, 0].astype(np.int64), float(dist.sum(dtype=np.float64)), len(times), per_iter


def kmeans(
    features: Any,
    n_clusters: int,
    *,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-5,
    init_sample_size: int | None = None,
    normalize: bool = True,
    n_threads: int | None = None,
) -> dict[str, Any]:
    """k-means clustering: greedy k-means++ seeds from a subsample, then faiss Lloyd on all points.

    Minimises the inertia sum_i ||x_i - c_{a(i)}||^2 (Lloyd 1982). Each of
    ``n_init`` restarts seeds with greedy k-means++ on a random subsample
    (``init_sample_size`` rows, default min(n, max(8192, 4k))), then
    iterates Lloyd's algorithm (faiss) on every row until the relative change
    of the inertia falls below ``tol`` or ``max_iter`` iterations ran; the
    restart with the lowest inertia is kept.

    Args:
        features: (n, d) features.
        n_clusters: k, 1 <= k <= n.
        seed: seeds the subsample, the seeding and faiss (deterministic for a
            fixed thread count).
        n_init: restarts (>= 1).
        max_iter: Lloyd iterations per restart.
        tol: relative inertia change that stops Lloyd, in [0, 1).
        init_sample_size: rows used for seeding, k <= size <= n.
        normalize: L2-normalise rows first (cosine geometry, as for NMI in SAIL).
        n_threads: faiss/torch threads for this call (default: leave as set).

    Returns dict(assignment (n,) int64, centroids (k, d) float32, inertia,
    n_iter, n_init).
    """
    x = as_numpy_matrix(features, "features")
    n = x.shape[0]
    k = as_int(n_clusters, "n_clusters", low=1, high=n, high_reason=f"there are only {n} samples")
    seed = as_int(seed, "seed", low=0)
    n_init = as_int(n_init, "n_init", low=1)
    max_iter = as_int(max_iter, "max_iter", low=1)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1:
        raise ValidationError(f"tol must be a number in [0, 1); got {tol!r}")
    if init_sample_size is None:
        m = min(n, max(_GRAM_MAX_ROWS, 4 * k))
    else:
        m = as_int(init_sample_size, "init_sample_size", low=k, high=n,
                   high_reason=f"there are only {n} samples")
    if n_threads is not None:
        n_threads = as_int(n_threads, "n_threads", low=1)
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise ValidationError(
                f"features has {int((norms == 0).sum())} all-zero rows, which cannot be L2-normalised; "
                "drop them or pass normalize=False"
            )
        x = x / norms

    best: dict[str, Any] | None = None
    rng = np.random.default_rng(seed)
    with _threads(n_threads):
        for run in range(n_init):
            run_seed = int(rng.integers(2**31 - 1))
            sub = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
            xs = np.ascontiguousarray(x[sub])
            init = xs[kmeanspp_seeds(xs, k, seed=run_seed)]
            centroids, assign, inertia, n_iter, _ = _lloyd(x, init, max_iter, tol, run_seed)
            if best is None or inertia < best["inertia"]:
                best = {"assignment": assign, "centroids": centroids, "inertia": inertia, "n_iter": n_iter}
    assert best is not None
    best["n_init"] = n_init
    return best


@register_metric("kmeans_nmi", label="k-means NMI", higher_is_better=True, group="clustering",
                 description="k-means NMI against the labels (clustering quality)",
                 reference="Strehl & Ghosh 2002; SAIL, Zhang et al. CVPR 2025")
@register_metric("kmeans_ari", label="k-means ARI", higher_is_better=True, group="clustering",
                 description="k-means adjusted Rand index against the labels", reference="Hubert & Arabie 1985")
def kmeans_nmi(
    features: Any,
    labels: Any,
    n_clusters: int | None = None,
    seed: int = 0,
    n_init: int = 3,
    **kmeans_kwargs: Any,
) -> dict[str, Any]:
    """Clustering quality of features: k-means against class labels, scored by NMI and ARI.

    Clusters the L2-normalised features with ``kmeans`` into k clusters
    (default: the number of distinct labels), then compares the cluster
    assignment with the labels by normalized mutual information (arithmetic
    normalisation; Strehl & Ghosh 2002) and the adjusted Rand index (Hubert &
    Arabie 1985), both from scikit-learn. This is SAIL's (Zhang et al., CVPR
    2025) clustering-quality measure of a vision encoder.

    Args:
        features: (n, d) features.  labels: (n,) integer class labels.
        n_clusters: k; default the number of classes in ``labels``.
        seed, n_init: see ``kmeans``; by default the best (lowest inertia) of 3
            restarts, so the score does not hinge on one unlucky seeding
            (``n_init=1`` is one run, as scikit-learn's default KMeans).
        **kmeans_kwargs: max_iter, tol, init_sample_size, normalize, n_threads.

    Returns dict(nmi in [0, 1], ari in [-0.5, 1], n_clusters, n_classes,
    inertia, n_iter, n_init). Invariant to renaming the labels.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    x = as_numpy_matrix(features, "features")
    y = as_labels(labels, "labels", x.shape[0])
    n_classes = int(np.unique(y).size)
    k = n_classes if n_clusters is None else n_clusters
    res = kmeans(x, k, seed=seed, n_init=n_init, **kmeans_kwargs)
    return {
        "nmi": float(normalized_mutual_info_score(y, res["assignment"])),
        "ari": float(adjusted_rand_score(y, res["assignment"])),
        "n_clusters": int(res["centroids"].shape[0]),
        "n_classes": n_classes,
        "inertia": res["inertia"],
        "n_iter": res["n_iter"],
        "n_init": res["n_init"],
    }
