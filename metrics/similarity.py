"""Representational-similarity alignment between paired features.

Definitions follow the Platonic Representation Hypothesis paper (Huh, Cheung,
Wang, Isola; ICML 2024) and its reference code (minyoungg/platonic-rep,
``metrics.py``); CKA is Kornblith et al. (ICML 2019), SVCCA is Raghu et al.
(NeurIPS 2017). ``a`` and ``b`` hold the same n samples in the same row order,
encoded by two models; their feature dimensions may differ.

Everything here avoids the n x n matrix where the definition allows it, so
100k samples fit in memory: the kNN metrics work on row blocks and keep only
n x k neighbour lists; linear CKA and SVCCA work on d x d feature Gram matrices.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from alignprobe.errors import ValidationError

from ._neighbors import intersection_entries, intersection_size, iter_topk, unit_rows
from ._validation import as_chunk_size, as_int, as_matrix, as_positive_float, same_rows

# The rbf kernel needs two dense n x n float64 matrices (0.5 GiB each at this size).
RBF_MAX_SAMPLES = 8192


def _paired(a: Any, b: Any, *, dtype: torch.dtype, min_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    ta = as_matrix(a, "a", dtype=dtype, min_rows=min_rows)
    tb = as_matrix(b, "b", dtype=dtype, min_rows=min_rows)
    same_rows(ta, tb, "a", "b")
    if ta.device != tb.device:
        raise ValidationError(f"a and b must be on the same device; got {ta.device} and {tb.device}")
    return ta, tb


def mutual_knn(a: Any, b: Any, k: int = 10, *, chunk_size: int | None = None) -> float:
    """Mutual k-nearest-neighbour alignment of two paired representations.

    Definition (Huh et al. 2024, "mutual_knn"): with N_a(i) the k nearest
    neighbours of sample i under cosine similarity of the rows of ``a``
    (excluding i itself), and N_b(i) likewise for ``b``,

        mutual_knn = mean_i |N_a(i) ∩ N_b(i)| / k      in [0, 1].

    1 for representations with identical neighbourhoods; about k / (n - 1) for
    independent ones.

    Args:
        a: (n, d_a) features of model A (numpy or torch).
        b: (n, d_b) features of model B for the same n samples, same order.
        k: neighbours per sample, 1 <= k <= n - 1 (the paper uses 10).
        chunk_size: query rows per block (default: sized to ~128 MiB per block).

    Exact top-k in row blocks; memory O(chunk * n + n * d), never n x n.
    Ties between equally similar neighbours are broken arbitrarily.
    """
    ta, tb = _paired(a, b, dtype=torch.float32, min_rows=2)
    n = ta.shape[0]
    k = as_int(k, "k", low=1, high=n - 1, high_reason=f"a sample has only n - 1 = {n - 1} other samples")
    chunk_size = as_chunk_size(chunk_size)
    ua, ub = unit_rows(ta, "a"), unit_rows(tb, "b")
    total = 0
    blocks_b = iter_topk(ub, ub, k, exclude_self=True, chunk_size=chunk_size)
    for (_, _, idx_a), (_, _, idx_b) in zip(
        iter_topk(ua, ua, k, exclude_self=True, chunk_size=chunk_size), blocks_b
    ):
        total += int(intersection_size(idx_a, idx_b).sum())
    return total / (n * k)


def _sparse_hsic_unbiased(
    n: int, rows: np.ndarray, cols: np.ndarray, kv: np.ndarray, lv: np.ndarray
) -> float:
    """Unbiased HSIC (Song et al. 2012, eq. 5) of two kernels that are zero outside given entries.

    The kernels are K~[rows, cols] = kv and L~[rows, cols] = lv (diagonal zero).
    The masked kernels need not be symmetric, so the trace term pairs each
    entry (i, j) of K~ with entry (j, i) of L~, exactly as tr(K~ L~) does.
    """
    keys = rows.astype(np.int64) * n + cols
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    reverse = cols.astype(np.int64) * n + rows
    pos = np.searchsorted(sorted_keys, reverse)
    pos_c = np.minimum(pos, len(sorted_keys) - 1)
    found = sorted_keys[pos_c] == reverse
    trace_kl = float(np.dot(kv[found], lv[order[pos_c[found]]]))
    sum_k, sum_l = float(kv.sum()), float(lv.sum())
    # 1^T K~ L~ 1 = (column sums of K~) . (row sums of L~)
    col_k = np.bincount(cols, weights=kv, minlength=n)
    row_l = np.bincount(rows, weights=lv, minlength=n)
    cross = float(np.dot(col_k, row_l))
    return (trace_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


def cknna(a: Any, b: Any, k: int = 10, *, chunk_size: int | None = None) -> float:
    """Centered kernel nearest-neighbour alignment (CKNNA) of two paired representations.

    Definition (Huh et al. 2024, Sec. A.2, as in their reference code): with
    cosine kernels K_ij = <a_i, a_j>, L_ij = <b_i, b_j> on L2-normalised rows
    and the mask M_ij = 1[j in N_a(i) and j in N_b(i)] (k nearest neighbours,
    self excluded),

        CKNNA = HSIC_u(M∘K, M∘L) / sqrt(HSIC_u(M_a∘K, M_a∘K) · HSIC_u(M_b∘L, M_b∘L))

    where HSIC_u is the unbiased HSIC estimator (Song et al. 2012) and M_a, M_b
    are the kNN masks of each side alone. It restricts CKA to pairs that are
    neighbours in both spaces; with k = n - 1 it equals unbiased linear CKA of
    the normalised features.

    Args:
        a: (n, d_a) features, n >= 4.  b: (n, d_b) features, same samples.
        k: neighbours per sample, 2 <= k <= n - 1 (the paper uses 10).
        chunk_size: query rows per block.

    The masked kernels are sparse (<= n*k entries), so memory is O(n * k),
    never n x n. Raises ValidationError when a self-alignment term is not
    positive (too few samples or neighbours for the estimator).
    """
    ta, tb = _paired(a, b, dtype=torch.float32, min_rows=4)
    n = ta.shape[0]
    k = as_int(k, "k", low=2, high=n - 1, high_reason=f"a sample has only n - 1 = {n - 1} other samples")
    chunk_size = as_chunk_size(chunk_size)
    ua, ub = unit_rows(ta, "a"), unit_rows(tb, "b")

    parts: dict[str, list[list[np.ndarray]]] = {"ab": [], "aa": [], "bb": []}
    for (start, va, ia), (_, vb, ib) in zip(
        iter_topk(ua, ua, k, exclude_self=True, chunk_size=chunk_size),
        iter_topk(ub, ub, k, exclude_self=True, chunk_size=chunk_size),
    ):
        row, col, kv, lv = intersection_entries(ia, va, ib, vb)
        parts["ab"].append([(row + start).cpu().numpy(), col.cpu().numpy(), kv.double().cpu().numpy(), lv.double().cpu().numpy()])
        block_rows = torch.arange(start, start + ia.shape[0], device=ia.device).repeat_interleave(k)
        for key, idx, val in (("aa", ia, va), ("bb", ib, vb)):
            v = val.reshape(-1).double().cpu().numpy()
            parts[key].append([block_rows.cpu().numpy(), idx.reshape(-1).cpu().numpy(), v, v])

    hsic = {}
    for key, blocks in parts.items():
        rows, cols, kv, lv = (np.concatenate([blk[i] for blk in blocks]) for i in range(4))
        hsic[key] = _sparse_hsic_unbiased(n, rows, cols, kv, lv) if len(rows) else 0.0
    for key, name in (("aa", "a"), ("bb", "b")):
        if not hsic[key] > 0:
            raise ValidationError(
                f"CKNNA is undefined here: the unbiased self-alignment estimate of {name} is "
                f"{hsic[key]:.3g} (must be > 0); use more samples (n = {n}) or a larger k (k = {k})"
            )
    return hsic["ab"] / float(np.sqrt(hsic["aa"] * hsic["bb"]))


def _center(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=0, keepdim=True)


def _hsic_from_linear(
    trace_kl: float, k_diag: torch.Tensor, l_diag: torch.Tensor, n: int, unbiased: bool
) -> float:
    """HSIC of linear kernels of *centered* features, from tr(KL) and the kernel diagonals.

    Centered features make K 1 = 0, so the unbiased estimator's row-sum terms
    reduce to the diagonals: sum(K~) = -sum(diag K), K~ 1 = -diag K. The biased
    estimator's 1/(n-1)^2 factor is dropped: it cancels in CKA.
    """
    if not unbiased:
        return trace_kl
    kl = float(torch.dot(k_diag, l_diag))
    sk, sl = float(k_diag.sum()), float(l_diag.sum())
    return (trace_kl - kl + sk * sl / ((n - 1) * (n - 2)) - 2.0 * kl / (n - 2)) / (n * (n - 3))


def _dense_hsic(K: torch.Tensor, L: torch.Tensor, unbiased: bool) -> float:
    n = K.shape[0]
    if unbiased:
        Kt = K.clone().fill_diagonal_(0)
        Lt = L.clone().fill_diagonal_(0)
        trace = float(torch.sum(Kt * Lt))  # K, L symmetric
        cross = float(Kt.sum(0) @ Lt.sum(1))
        return (trace + float(Kt.sum()) * float(Lt.sum()) / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (
            n * (n - 3)
        )
    Kc = K - K.mean(0, keepdim=True)
    Kc -= Kc.mean(1, keepdim=True)
    Lc = L - L.mean(0, keepdim=True)
    Lc -= Lc.mean(1, keepdim=True)
    return float(torch.sum(Kc * Lc))


def _rbf_kernel(x: torch.Tensor, sigma: float | None) -> torch.Tensor:
    sq = (x * x).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_(min=0)
    d2.fill_diagonal_(0)
    if sigma is None:
        n = x.shape[0]
        # Each distance appears twice off the diagonal, so the upper triangle
        # has the same median; averaging the two middle values matches numpy.
        iu = torch.triu_indices(n, n, offset=1, device=x.device)
        off = d2[iu[0], iu[1]]
        m = off.numel()
        lo = torch.kthvalue(off, (m + 1) // 2).values
        hi = torch.kthvalue(off, m // 2 + 1).values
        med = float((lo + hi) / 2)
        if med <= 0:
            raise ValidationError("rbf CKA: the median pairwise distance is 0 (most rows identical); pass sigma")
        sigma2 = med
    else:
        sigma2 = sigma * sigma
    return torch.exp(d2 / (-2.0 * sigma2))


def cka(
    a: Any,
    b: Any,
    kernel: str = "linear",
    unbiased: bool = False,
    *,
    sigma: float | None = None,
    normalize: bool = True,
) -> float:
    """Centered kernel alignment (CKA) between two paired representations.

        CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))      (Kornblith et al. 2019)

    with K, L the kernel matrices of the rows of ``a`` and ``b``; HSIC is the
    biased estimator tr(HKHL) (H the centering matrix) or, with
    ``unbiased=True``, the unbiased estimator of Song et al. (2012) as used by
    Huh et al. (2024) (platonic-rep ``metrics.py`` ``cka`` / ``unbiased_cka``).
    Linear CKA is invariant to orthogonal transforms and isotropic scaling of
    either side; with ``normalize`` (the default) rows are L2-normalised first,
    as platonic-rep's ``measure_alignment.compute_score(normalize=True)`` does,
    so the score is also invariant to rescaling individual rows.

    Args:
        a: (n, d_a) features.  b: (n, d_b) features, same samples, same order.
        kernel: "linear" (K = a a^T) or "rbf" (K_ij = exp(-|a_i - a_j|^2 / (2 sigma^2))).
        unbiased: use the unbiased HSIC estimator (needs n >= 4).
        normalize: L2-normalise each row of a and b first (a zero row is an error).
        sigma: rbf bandwidth; None uses the median-distance heuristic
            (sigma^2 = median squared distance between distinct rows, per side),
            which keeps rbf CKA invariant to isotropic scaling.

    Returns a float, 1 for identical representations (up to the invariances).
    Linear CKA uses d x d feature Gram matrices (or n x n when n is smaller),
    so it runs on 100k samples; rbf needs the n x n kernels and is limited to
    n <= RBF_MAX_SAMPLES (8192): subsample paired rows for larger sets.
    Computed in float64.
    """
    if kernel not in ("linear", "rbf"):
        raise ValidationError(f'kernel must be "linear" or "rbf"; got {kernel!r}')
    if not isinstance(unbiased, (bool, np.bool_)):
        raise ValidationError(f"unbiased must be True or False; got {unbiased!r}")
    if sigma is not None:
        if kernel != "rbf":
            raise ValidationError("sigma is only used with kernel='rbf'; leave it None for the linear kernel")
        sigma = as_positive_float(sigma, "sigma")
    if not isinstance(normalize, (bool, np.bool_)):
        raise ValidationError(f"normalize must be True or False; got {normalize!r}")
    ta, tb = _paired(a, b, dtype=torch.float64, min_rows=4 if unbiased else 2)
    n = ta.shape[0]
    if kernel == "rbf" and n > RBF_MAX_SAMPLES:
        raise ValidationError(
            f"rbf CKA needs two dense n x n kernels; n must be <= {RBF_MAX_SAMPLES}, got {n}. "
            "Subsample the same rows of a and b (e.g. idx = rng.choice(n, 8192, replace=False)) "
            "or use kernel='linear'."
        )
    if normalize:
        ta, tb = unit_rows(ta, "a"), unit_rows(tb, "b")

    if kernel == "rbf":
        K, L = _rbf_kernel(ta, sigma), _rbf_kernel(tb, sigma)
        h_ab, h_aa, h_bb = _dense_hsic(K, L, unbiased), _dense_hsic(K, K, unbiased), _dense_hsic(L, L, unbiased)
    else:
        A, B = _center(ta), _center(tb)
        da, db = A.shape[1], B.shape[1]
        # Same scalars either way; pick the cheaper Gram matrices.
        if n * n * (da + db) < n * (da * db + da * da + db * db):
            K, L = A @ A.T, B @ B.T
            t_ab, t_aa, t_bb = float(torch.sum(K * L)), float(torch.sum(K * K)), float(torch.sum(L * L))
        else:
            t_ab = float(torch.linalg.matrix_norm(A.T @ B) ** 2)
            t_aa = float(torch.linalg.matrix_norm(A.T @ A) ** 2)
            t_bb = float(torch.linalg.matrix_norm(B.T @ B) ** 2)
        ka, kb = (A * A).sum(1), (B * B).sum(1)
        h_ab = _hsic_from_linear(t_ab, ka, kb, n, unbiased)
        h_aa = _hsic_from_linear(t_aa, ka, ka, n, unbiased)
        h_bb = _hsic_from_linear(t_bb, kb, kb, n, unbiased)

    for h, name in ((h_aa, "a"), (h_bb, "b")):
        if not h > 0:
            raise ValidationError(
                f"CKA is undefined: HSIC({name}, {name}) = {h:.3g} (must be > 0). "
                f"{name} is constant across samples, or n = {n} is too small for the unbiased estimator."
            )
    return h_ab / float(np.sqrt(h_aa * h_bb))


def _top_subspace(x: torch.Tensor, dim: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`dim` right singular vectors V (d, dim) and singular values s of centered x.

    The left singular vectors are U = x V / s; SVCCA only needs U1^T U2, which
    these give through d x d products, so U (n x dim) is never formed when n > d.
    """
    n, d = x.shape
    if n > d:
        evals, evecs = torch.linalg.eigh(x.T @ x)
        evals, evecs = evals.flip(0)[:dim], evecs.flip(1)[:, :dim]
        s = evals.clamp(min=0).sqrt()
    else:
        _, s_all, vh = torch.linalg.svd(x, full_matrices=False)
        s, evecs = s_all[:dim], vh[:dim].T
    tol = float(s[0]) * max(n, d) * torch.finfo(x.dtype).eps if s.numel() else 0.0
    rank = int((s > tol).sum())
    if rank < dim:
        raise ValidationError(
            f"{name} spans only {rank} directions after centering and standardising, fewer than dim = {dim}; "
            f"lower dim to <= {rank}"
        )
    return evecs, s


def svcca(a: Any, b: Any, dim: int = 10) -> float:
    """Singular vector canonical correlation analysis (SVCCA) similarity.

    Definition (Raghu et al. 2017; as used by Huh et al. 2024): center and
    standardise each feature, keep each side's top-``dim`` singular directions
    (SVD), then return the mean of the ``dim`` canonical correlations between
    the two reduced representations, in [0, 1].

    Args:
        a: (n, d_a) features.  b: (n, d_b) features, same samples.
        dim: directions kept per side, 1 <= dim <= min(d_a, d_b, n - 1) (PRH uses 10).

    Exact: full SVD / eigendecomposition and canonical correlations as the
    singular values of U_a^T U_b (the PRH reference uses a randomised SVD and
    scikit-learn's iterative CCA, which approximate these). Constant features
    are dropped by the standardisation (they carry no variance). float64.
    """
    ta, tb = _paired(a, b, dtype=torch.float64, min_rows=2)
    n = ta.shape[0]
    dim = as_int(
        dim, "dim", low=1, high=min(ta.shape[1], tb.shape[1], n - 1),
        high_reason=f"min(d_a, d_b, n - 1) = min({ta.shape[1]}, {tb.shape[1]}, {n - 1})",
    )

    def standardise(x: torch.Tensor) -> torch.Tensor:
        x = _center(x)
        std = x.std(dim=0, keepdim=True)
        return x / torch.where(std > 0, std, torch.ones_like(std))

    A, B = standardise(ta), standardise(tb)
    va, sa = _top_subspace(A, dim, "a")
    vb, sb = _top_subspace(B, dim, "b")
    if n > A.shape[1] and n > B.shape[1]:
        cross = (va.T @ (A.T @ B) @ vb) / sa[:, None] / sb[None, :]
    else:
        ua = (A @ va) / sa
        ub = (B @ vb) / sb
        cross = ua.T @ ub
    rho = torch.linalg.svdvals(cross).clamp(max=1.0)
    return float(rho.mean())
