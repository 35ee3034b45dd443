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


def sparse_hsic_unbiased(
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
        hsic[key] = sparse_hsic_unbiased(n, rows, cols, kv, lv) if len(rows) else 0.0
    for key, name in (("aa", "a"), ("bb", "b")):
        if not hsic[key] > 0:
            raise ValidationError(
                f"CKNNA is undefined here: the unbiased self-alignment estimate of {name} is "
                f"{hsic[key]:.3g} (must be > 0); use more samples (n = {n}) or a larger k (k = {k})"
            )
    return hsic["ab"] / float(np.sqrt(hsic["aa"] * hsic["bb"]))


def center_columns(x: torch.Tensor) -> torch.Tensor:
    """Each feature (column) minus its mean over the samples; the measures in `measures.py` share it."""
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


def rbf_kernel(x: torch.Tensor, sigma: float | None) -> torch.Tensor:
    """The n x n Gaussian kernel of the rows of ``x``; ``sigma`` None: the median-distance bandwidth."""
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


def _linear_hsics(ta: torch.Tensor, tb: torch.Tensor, unbiased: bool) -> tuple[float, float, float]:
    """HSIC(a, b), HSIC(a, a), HSIC(b, b) of linear kernels, from whichever Gram matrices are cheaper."""
    n = ta.shape[0]
    A, B = center_columns(ta), center_columns(tb)
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
    return (_hsic_from_linear(t_ab, ka, kb, n, unbiased), _hsic_from_linear(t_aa, ka, ka, n, unbiased),
            _hsic_from_linear(t_bb, kb, kb, n, unbiased))


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
        K, L = rbf_kernel(ta, sigma), rbf_kernel(tb, sigma)
        h_ab, h_aa, h_bb = _dense_hsic(K, L, unbiased), _dense_hsic(K, K, unbiased), _dense_hsic(L, L, unbiased)
    else:
        h_ab, h_aa, h_bb = _linear_hsics(ta, tb, unbiased)

    for h, name in ((h_aa, "a"), (h_bb, "b")):
        if not h > 0:
            raise ValidationError(
                f"CKA is undefined: HSIC({name}, {name}) = {h:.3g} (must be > 0). "
                f"{name} is constant across samples, or n = {n} is too small for the unbiased estimator."
            )
    return h_ab / float(np.sqrt(h_aa * h_bb))


def top_subspace(x: torch.Tensor, dim: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
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
        x = center_columns(x)
        std = x.std(dim=0, keepdim=True)
        return x / torch.where(std > 0, std, torch.ones_like(std))

    A, B = standardise(ta), standardise(tb)
    va, sa = top_subspace(A, dim, "a")
    vb, sb = top_subspace(B, dim, "b")
    if n > A.shape[1] and n > B.shape[1]:
        cross = (va.T @ (A.T @ B) @ vb) / sa[:, None] / sb[None, :]
    else:
        ua = (A @ va) / sa
        ub = (B @ vb) / sb
        cross = ua.T @ ub
    rho = torch.linalg.svdvals(cross).clamp(max=1.0)
    return float(rho.mean())


# ---- more measures (Gröger, Wen & Brbić 2026 compare these under permutation calibration) ----


def rv_coefficient(a: Any, b: Any) -> float:
    """RV coefficient (Robert & Escoufier 1976) of two paired representations, in [0, 1].

        RV = tr(A A^T B B^T) / sqrt(tr((A A^T)^2) tr((B B^T)^2))

    with A, B the column-centred features (rows are *not* normalised). This
    is biased linear CKA without row normalisation (Kornblith et al. 2019,
    Sec. 3): invariant to orthogonal transforms, isotropic scaling and
    translation of either side.

    Args:
        a: (n, d_a) features.  b: (n, d_b) features, same samples, same order.
    """
    return cka(a, b, kernel="linear", unbiased=False, normalize=False)


def _centered64(a: Any, b: Any, min_rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    ta, tb = _paired(a, b, dtype=torch.float64, min_rows=min_rows)
    return center_columns(ta), center_columns(tb)


def orthonormal_basis(xc: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q, s, Vh) of the thin SVD xc = Q diag(s) Vh, truncated to the numerical rank.

    Q (n, r) is an orthonormal basis of xc's column space (the span of its
    features over the samples): what CCA and least squares see of xc.
    """
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)
    tol = float(s[0]) * max(xc.shape) * torch.finfo(xc.dtype).eps if s.numel() else 0.0
    r = int((s > tol).sum())
    if r == 0:
        raise ValidationError(f"{name} is constant across samples (rank 0 after centring); it has no variance to compare")
    return u[:, :r], s[:r], vh[:r]


def mean_cca(a: Any, b: Any) -> float:
    """Mean canonical correlation (CCA; Hotelling 1936), in [0, 1].

    With Q_a, Q_b orthonormal bases of the column-centred features (thin SVD,
    truncated at the numerical rank r_a, r_b), the canonical correlations are
    the singular values rho_1 >= ... >= rho_p of Q_a^T Q_b, p = min(r_a, r_b);
    the score is their mean (Kornblith et al. 2019's rho-bar_CCA). Exact, no
    ridge. Invariant to any invertible linear map (hence orthogonal
    transforms, scaling, feature permutation) and translation of either side.

    Needs n well above d_a + d_b: when r_a + r_b > n - 1 the two spans must
    share at least r_a + r_b - (n - 1) directions, so that many correlations
    are 1 whatever the data (with d >= n - 1 the score is 1 for anything).
    The permutation calibration (``calibrate``) sees this and returns p = 1,
    but such a score measures nothing: use ``svcca`` or fewer dimensions.

    Args:
        a: (n, d_a) features.  b: (n, d_b) features, same samples, same order.
    """
    A, B = _centered64(a, b)
    qa, _, _ = orthonormal_basis(A, "a")
    qb, _, _ = orthonormal_basis(B, "b")
    return float(torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0).mean())


def pwcca(a: Any, b: Any) -> float:
    """Projection-weighted CCA (Morcos, Raghu, Bengio; NeurIPS 2018), in [0, 1].

        PWCCA = sum_i alpha_i rho_i / sum_i alpha_i,   alpha_i = sum_j |<h_i, x_j>|

    rho_i are the canonical correlations (as in ``mean_cca``), h_i the
    unit-norm canonical variates (n-vectors) of the weighting side and x_j
    its centred feature columns: canonical directions that account for more
    of the representation weigh more. As in Morcos et al.'s ``compute_pwcca``
    the weighting side is the one with fewer features (``a`` on a tie), so
    the measure is not symmetric when d_a != d_b. Invariant to isotropic
    scaling, feature permutation and translation; not to general orthogonal
    transforms (the L1 sum over features is basis-dependent). The same
    n >> d_a + d_b caveat as ``mean_cca`` applies.

    Args:
        a: (n, d_a) features.  b: (n, d_b) features, same samples, same order.
    """
    A, B = _centered64(a, b)
    qa, _, _ = orthonormal_basis(A, "a")
    qb, _, _ = orthonormal_basis(B, "b")
    u, rho, vh = torch.linalg.svd(qa.T @ qb, full_matrices=False)
    rho = rho.clamp(max=1.0)
    if A.shape[1] <= B.shape[1]:
        h, feats = qa @ u, A
    else:
        h, feats = qb @ vh.T, B
    alpha = (h.T @ feats).abs().sum(dim=1)
    return float((alpha * rho).sum() / alpha.sum())


def procrustes_similarity(a: Any, b: Any) -> float:
    """Orthogonal-Procrustes similarity, in [0, 1].

    With A, B column-centred and scaled to unit Frobenius norm, the
    orthogonal Procrustes distance is min_R ||A R - B||_F^2 = 2 - 2 ||A^T B||_*
    (Ding, Denain, Steinhardt, NeurIPS 2021; Williams et al., NeurIPS 2021;
    different widths are zero-padded, which leaves ||A^T B||_* unchanged). The
    similarity is the nuclear norm ||A^T B||_* (sum of singular values):
    1 when B is a rotation of A, invariant to orthogonal transforms,
    isotropic scaling and translation of either side.

    Args:
        a: (n, d_a) features.  b: (n, d_b) features, same samples, same order.
    """
    A, B = _centered64(a, b)
    pa, pb = procrustes_factor(A, "a"), procrustes_factor(B, "b")
    return float(torch.linalg.svdvals(pa.T @ pb).sum())


def procrustes_factor(xc: torch.Tensor, name: str) -> torch.Tensor:
    """U diag(s) / ||s|| (n, r) of centred xc: same Gram matrix as xc / ||xc||_F, at most n columns."""
    q, s, _ = orthonormal_basis(xc, name)
    return q * (s / torch.linalg.vector_norm(s))


def rsa_ranks(x: torch.Tensor, distance: str) -> torch.Tensor:
    """(n, n) symmetric matrix of the standardised ranks of x's pairwise distances (zero diagonal).

    The upper-triangle entries (distances d(x_i, x_j), i < j) are ranked with
    average ranks for ties, then standardised to mean 0 and variance 1 over
    the n(n-1)/2 pairs, so the Spearman correlation of two such matrices is
    sum(Z_a * Z_b) / (n (n - 1)).
    """
    from scipy.stats import rankdata

    n = x.shape[0]
    if distance == "euclidean":
        sq = (x * x).sum(1)
        d = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_(min=0).sqrt_()
    else:  # correlation distance: 1 - Pearson correlation of the two samples' feature vectors
        xc = x - x.mean(dim=1, keepdim=True)
        nrm = torch.linalg.vector_norm(xc, dim=1, keepdim=True)
        if bool((nrm == 0).any()):
            raise ValidationError("rsa with distance='correlation': a sample has all features equal; use 'euclidean'")
        u = xc / nrm
        d = 1.0 - u @ u.T
    iu = torch.triu_indices(n, n, offset=1)
    r = torch.from_numpy(rankdata(d[iu[0], iu[1]].cpu().numpy(), method="average")).to(torch.float64)
    r = r - r.mean()
    sd = torch.sqrt((r * r).mean())
    if not sd > 0:
        raise ValidationError("rsa: all pairwise distances are equal on one side; the rank correlation is undefined")
    z = torch.zeros(n, n, dtype=torch.float64)
    z[iu[0], iu[1]] = r / sd
    return z + z.T


def rsa(a: Any, b: Any, distance: str = "euclidean") -> float:
    """Representational similarity analysis (Kriegeskorte, Mur, Bandettini 2008), in [-1, 1].

    The Spearman rank correlation between the upper triangles of the two
    representational dissimilarity matrices (RDMs): RDM_a[i, j] = d(a_i, a_j).

    Args:
        a: (n, d_a) features.  b: (n, d_b) features, same samples, n >= 3.
        distance: "euclidean" (the default, as in Gröger et al.'s reference
            code; invariant to orthogonal transforms, isotropic scaling and
            translation) or "correlation" (1 - Pearson correlation of two
            samples' feature vectors, Kriegeskorte's usual choice; invariant to
            scaling and feature permutation, not to rotations).

    Needs the n x n distance matrices: n <= RBF_MAX_SAMPLES.
    """
    if distance not in ("euclidean", "correlation"):
        raise ValidationError(f'distance must be "euclidean" or "correlation"; got {distance!r}')
    ta, tb = _paired(a, b, dtype=torch.float64, min_rows=3)
    n = ta.shape[0]
    if n > RBF_MAX_SAMPLES:
        raise ValidationError(f"rsa needs n x n distance matrices; n must be <= {RBF_MAX_SAMPLES}, got {n}: subsample rows")
    za, zb = rsa_ranks(ta.cpu(), distance), rsa_ranks(tb.cpu(), distance)
    return float((za * zb).sum()) / (n * (n - 1))


def knn_lists(x: Any, k: int, name: str, chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices), each (n, k): the k nearest neighbours of every row under cosine similarity, self excluded.

    Computed exactly as ``mutual_knn`` does (float32, blocked), so measures
    built on these lists see the same neighbours.
    """
    t = as_matrix(x, name, dtype=torch.float32, min_rows=2)
    u = unit_rows(t, name)
    vals, idx = [], []
    for _, v, i in iter_topk(u, u, k, exclude_self=True, chunk_size=as_chunk_size(chunk_size)):
        vals.append(v)
        idx.append(i)
    return torch.cat(vals), torch.cat(idx)


def _checked_k(a: Any, b: Any, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    ta, tb = _paired(a, b, dtype=torch.float32, min_rows=2)
    n = ta.shape[0]
    k = as_int(k, "k", low=1, high=n - 1, high_reason=f"a sample has only n - 1 = {n - 1} other samples")
    return ta, tb, k


def knn_jaccard(a: Any, b: Any, k: int = 10, *, chunk_size: int | None = None) -> float:
    """k-NN Jaccard overlap of two paired representations, in [0, 1].

        knn_jaccard = mean_i |N_a(i) ∩ N_b(i)| / |N_a(i) ∪ N_b(i)|

    with N_a(i), N_b(i) the k nearest neighbours of sample i under cosine
    similarity (self excluded), as in ``mutual_knn`` (which divides by k
    instead of the union). Invariant to orthogonal transforms and scaling.

    Args:
        a: (n, d_a) features.  b: (n, d_b) features, same samples.
        k: neighbours per sample, 1 <= k <= n - 1.
    """
    ta, tb, k = _checked_k(a, b, k)
    _, ia = knn_lists(ta, k, "a", chunk_size)
    _, ib = knn_lists(tb, k, "b", chunk_size)
    m = intersection_size(ia, ib).double()
    return float((m / (2 * k - m)).mean())


def cycle_knn(a: Any, b: Any, k: int = 10, *, chunk_size: int | None = None) -> float:
    """Cycle-kNN accuracy of two paired representations, in [0, 1] (not symmetric in a, b).

        cycle_knn = mean_i 1[ exists j in N_b(i) with i in N_a(j) ]

    Going from sample i to one of its k nearest neighbours in b and back
    through a's k nearest neighbours returns to i (platonic-rep
    ``metrics.cycle_knn``, Huh et al. 2024: ``knn_A[knn_B]``). Cosine
    neighbours, self excluded. cycle_knn(a, a) is below 1 when some sample is
    not among the k nearest neighbours of any of its own neighbours.

    Args:
        a: (n, d_a) features.  b: (n, d_b) features, same samples.
        k: neighbours per sample, 1 <= k <= n - 1.
    """
    ta, tb, k = _checked_k(a, b, k)
    _, ia = knn_lists(ta, k, "a", chunk_size)
    _, ib = knn_lists(tb, k, "b", chunk_size)
    n = ia.shape[0]
    back = ia[ib]  # (n, k, k): a-neighbours of each b-neighbour of i
    hit = (back == torch.arange(n, device=ia.device).view(n, 1, 1)).flatten(1).any(dim=1)
    return float(hit.double().mean())


def linear_r2(a: Any, b: Any) -> float:
    """R² of the least-squares linear regression of b on a (with intercept), in [0, 1].

        R²(a -> b) = 1 - ||B - A W||_F^2 / ||B||_F^2

    with A, B column-centred (the intercept) and W the minimum-norm least
    squares solution (pseudo-inverse, no ridge): the fraction of b's total
    variance inside the span of a's features, ||Q_a^T B||_F^2 / ||B||_F^2
    (Q_a an orthonormal basis of A, rank-truncated). This is scikit-learn's
    ``r2_score(..., multioutput="variance_weighted")`` of an in-sample
    ``LinearRegression``. Invariant to any invertible linear map of a and to
    orthogonal transforms and isotropic scaling of b.

    In-sample: with d_a >= n - 1 every b is fitted exactly (R² = 1). The
    permutation calibration returns p = 1 then; the score measures nothing.

    Args:
        a: (n, d_a) predictor features.  b: (n, d_b) target features, same samples.
    """
    A, B = _centered64(a, b)
    qa, _, _ = orthonormal_basis(A, "a")
    total = float((B * B).sum())
    if not total > 0:
        raise ValidationError("linear_r2: b is constant across samples; R² is undefined")
    return float(torch.linalg.matrix_norm(qa.T @ B) ** 2) / total
