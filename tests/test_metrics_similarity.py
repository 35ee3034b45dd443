"""mutual-kNN, CKA, CKNNA, SVCCA against full-matrix implementations written from the definitions."""
import numpy as np
import pytest
import torch

from alignprobe.errors import ValidationError
from alignprobe.metrics import cka, cknna, mutual_knn, svcca


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def paired(n=120, da=16, db=24, noise=0.7, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, da))
    b = a @ rng.standard_normal((da, db)) + noise * rng.standard_normal((n, db))
    return a, b


# ---- references (dense n x n, straight from the definitions) ----

def knn_sets(x, k):
    s = unit(x) @ unit(x).T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def ref_mutual_knn(a, b, k):
    na, nb = knn_sets(a, k), knn_sets(b, k)
    return np.mean([len(set(na[i]) & set(nb[i])) / k for i in range(len(a))])


def hsic_biased(K, L):
    n = K.shape[0]
    H = np.eye(n) - 1.0 / n
    return np.trace(K @ H @ L @ H)


def hsic_unbiased(K, L):
    # Song et al. 2012, eq. 5, as written in platonic-rep's metrics.py
    m = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0)
    np.fill_diagonal(Lt, 0)
    v = np.sum(Kt * Lt.T) + Kt.sum() * Lt.sum() / ((m - 1) * (m - 2)) - 2 * np.sum(Kt @ Lt) / (m - 2)
    return v / (m * (m - 3))


def ref_cka(K, L, unbiased):
    h = hsic_unbiased if unbiased else hsic_biased
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def rbf(x, sigma=None):
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    if sigma is None:
        sigma2 = np.median(d2[~np.eye(len(x), dtype=bool)])
    else:
        sigma2 = sigma**2
    return np.exp(-d2 / (2 * sigma2))


def ref_cknna(a, b, k):
    n = len(a)
    K, L = unit(a) @ unit(a).T, unit(b) @ unit(b).T

    def mask(S):
        S = S.copy()
        np.fill_diagonal(S, -np.inf)
        M = np.zeros((n, n))
        np.put_along_axis(M, np.argsort(-S, axis=1)[:, :k], 1.0, axis=1)
        return M

    MK, ML = mask(K), mask(L)
    M = MK * ML
    kl = hsic_unbiased(M * K, M * L)
    kk = hsic_unbiased(MK * K, MK * K)
    ll = hsic_unbiased(ML * L, ML * L)
    return kl / np.sqrt(kk * ll)


def ref_svcca(a, b, dim):
    def top(x):
        x = x - x.mean(0)
        x = x / x.std(0, ddof=1)
        u, _, _ = np.linalg.svd(x, full_matrices=False)
        return u[:, :dim]

    qa, qb = top(a), top(b)
    return np.linalg.svd(qa.T @ qb, compute_uv=False).mean()


# ---- mutual kNN ----

@pytest.mark.parametrize("k", [1, 5, 20])
def test_mutual_knn_matches_dense_reference(k):
    a, b = paired()
    assert mutual_knn(a, b, k) == pytest.approx(ref_mutual_knn(a, b, k), abs=1e-12)


def test_mutual_knn_blocks_do_not_change_the_result():
    a, b = paired(n=90)
    assert mutual_knn(a, b, 7, chunk_size=8) == mutual_knn(a, b, 7)


def test_mutual_knn_identical_is_one_and_independent_is_near_chance():
    a, _ = paired(n=1500)
    assert mutual_knn(a, a * 3.0, 10) == 1.0
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((1500, 32)), rng.standard_normal((1500, 48))
    score = mutual_knn(x, y, 10)
    chance = 10 / 1499
    assert 0 <= score < 3 * chance


def test_mutual_knn_accepts_torch_and_different_dims():
    a, b = paired(da=8, db=40)
    assert mutual_knn(torch.from_numpy(a), torch.from_numpy(b), 5) == pytest.approx(ref_mutual_knn(a, b, 5))


# ---- CKA ----

@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("shape", [(120, 16, 24), (30, 40, 50)])  # feature-space and sample-space paths
def test_linear_cka_matches_dense_reference(unbiased, shape):
    n, da, db = shape
    a, b = paired(n=n, da=da, db=db)
    expected = ref_cka(a @ a.T, b @ b.T, unbiased)
    assert cka(a, b, unbiased=unbiased, normalize=False) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("sigma", [None, 2.5])
def test_rbf_cka_matches_dense_reference(unbiased, sigma):
    a, b = paired(n=80)
    Ka = rbf(a, sigma)
    Kb = rbf(b, sigma)
    assert cka(a, b, kernel="rbf", unbiased=unbiased, sigma=sigma, normalize=False) == pytest.approx(
        ref_cka(Ka, Kb, unbiased), rel=1e-8
    )


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_invariant_to_orthogonal_transform_and_isotropic_scaling(kernel, unbiased):
    a, b = paired(n=100)
    q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((24, 24)))
    base = cka(a, b, kernel, unbiased)
    assert cka(a, 7.5 * (b @ q), kernel, unbiased) == pytest.approx(base, rel=1e-7)
    assert cka(0.01 * a, b, kernel, unbiased) == pytest.approx(base, rel=1e-7)


def test_cka_range_and_identity():
    a, b = paired()
    assert cka(a, a) == pytest.approx(1.0)
    assert cka(a, a, unbiased=True) == pytest.approx(1.0)
    assert 0.0 <= cka(a, b) <= 1.0
    rng = np.random.default_rng(0)
    assert cka(rng.standard_normal((2000, 8)), rng.standard_normal((2000, 8)), unbiased=True) == pytest.approx(0, abs=0.02)


def test_cka_errors():
    a, b = paired()
    with pytest.raises(ValidationError, match='kernel must be "linear" or "rbf"'):
        cka(a, b, kernel="poly")
    with pytest.raises(ValidationError, match="sigma is only used"):
        cka(a, b, sigma=1.0)
    with pytest.raises(ValidationError, match="a is constant"):
        cka(np.ones_like(a), b)
    with pytest.raises(ValidationError, match="at least 4 rows"):
        cka(a[:3], b[:3], unbiased=True)
    big = np.zeros((9000, 2))
    with pytest.raises(ValidationError, match="n must be <= 8192"):
        cka(big, big, kernel="rbf")


# ---- CKNNA ----

@pytest.mark.parametrize("k", [2, 10, 40])
def test_cknna_matches_dense_reference(k):
    a, b = paired(n=100)
    assert cknna(a, b, k) == pytest.approx(ref_cknna(a, b, k), rel=1e-5)


def test_cknna_blocks_identity_and_full_k():
    a, b = paired(n=60)
    assert cknna(a, b, 10, chunk_size=7) == pytest.approx(cknna(a, b, 10), rel=1e-6)
    assert cknna(a, a, 10) == pytest.approx(1.0)
    # With every other sample a neighbour, CKNNA is unbiased linear CKA of the unit rows.
    assert cknna(a, b, 59) == pytest.approx(cka(unit(a), unit(b), unbiased=True), rel=1e-5)


def test_cknna_k_bounds():
    a, b = paired(n=30)
    with pytest.raises(ValidationError, match="k must be >= 2"):
        cknna(a, b, 1)
    with pytest.raises(ValidationError, match="k must be <= 29"):
        cknna(a, b, 30)


# ---- SVCCA ----

@pytest.mark.parametrize("dim", [1, 5, 16])
def test_svcca_matches_reference(dim):
    a, b = paired(n=150)
    assert svcca(a, b, dim) == pytest.approx(ref_svcca(a, b, dim), rel=1e-8)


def test_svcca_small_n_path_and_range():
    a, b = paired(n=20, da=30, db=40)
    assert svcca(a, b, 10) == pytest.approx(ref_svcca(a, b, 10), rel=1e-8)
    assert svcca(a, a, 10) == pytest.approx(1.0)
    assert 0 <= svcca(a, b, 10) <= 1


def test_svcca_rank_error():
    a, b = paired(n=50)
    low = a[:, :2] @ np.ones((2, 16))
    with pytest.raises(ValidationError, match="spans only"):
        svcca(low, b, 5)


# ---- shared validation ----

@pytest.mark.parametrize("fn", [mutual_knn, cknna, cka, svcca])
def test_paired_input_errors(fn):
    a, b = paired(n=40)
    with pytest.raises(ValidationError, match="same number of rows"):
        fn(a, b[:-1])
    bad = a.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValidationError, match="a must contain only finite values"):
        fn(bad, b)
    with pytest.raises(ValidationError, match="a must not be empty"):
        fn(a[:0], b[:0])


def test_knn_k_larger_than_n():
    a, b = paired(n=10)
    with pytest.raises(ValidationError, match="k must be <= 9"):
        mutual_knn(a, b, 10)


def test_zero_rows_are_refused_for_cosine_metrics():
    a, b = paired(n=20)
    a[4] = 0
    with pytest.raises(ValidationError, match="all-zero rows"):
        mutual_knn(a, b, 3)
