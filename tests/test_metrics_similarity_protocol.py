"""Similarity as platonic-rep measures it: normalised rows, unbiased CKA, a fixed sample, a null level."""
import itertools

import numpy as np
import pytest

from alignprobe.errors import ValidationError
from alignprobe.metrics import cka, cknna, mutual_knn
from alignprobe.metrics.similarity_protocol import null_score, similarity_sample, similarity_scores


def paired(n=200, da=12, db=20, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, da))
    b = a @ rng.standard_normal((da, db)) + noise * rng.standard_normal((n, db))
    return a, b


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def hsic_u_statistic(K, L):
    """Song et al. 2012 (JMLR 13), Theorem 2: HSIC_1 as the U-statistic over ordered distinct 4-tuples."""
    m = len(K)
    total = 0.0
    for i, j, q, r in itertools.permutations(range(m), 4):
        total += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2.0 * K[i, j] * L[i, q]
    return total / (m * (m - 1) * (m - 2) * (m - 3))


def hsic_eq5(K, L):
    """Song et al. 2012, eq. 5 (the closed form)."""
    m = len(K)
    Kt, Lt = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(m)
    v = np.trace(Kt @ Lt) + (one @ Kt @ one) * (one @ Lt @ one) / ((m - 1) * (m - 2)) \
        - 2.0 / (m - 2) * (one @ Kt @ Lt @ one)
    return v / (m * (m - 3))


def test_unbiased_cka_equals_the_song_2012_u_statistic():
    a, b = paired(n=9, da=3, db=4, noise=1.0, seed=4)
    K, L = unit(a) @ unit(a).T, unit(b) @ unit(b).T  # platonic-rep: linear kernel of L2-normalised rows
    ref = hsic_u_statistic(K, L) / np.sqrt(hsic_u_statistic(K, K) * hsic_u_statistic(L, L))
    assert cka(a, b, unbiased=True) == pytest.approx(ref, rel=1e-9)
    # the closed form agrees with the U-statistic, and with cka on a larger n
    assert hsic_eq5(K, L) == pytest.approx(hsic_u_statistic(K, L), rel=1e-9)
    a, b = paired(n=150, seed=5)
    K, L = unit(a) @ unit(a).T, unit(b) @ unit(b).T
    assert cka(a, b, unbiased=True) == pytest.approx(hsic_eq5(K, L) / np.sqrt(hsic_eq5(K, K) * hsic_eq5(L, L)),
                                                     rel=1e-9)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("kernel", ["linear", "rbf"])
def test_normalised_cka_is_invariant_to_rescaling_rows(unbiased, kernel):
    a, b = paired()
    scale = np.random.default_rng(1).uniform(0.05, 20.0, size=(len(a), 1))
    base = cka(a, b, kernel, unbiased)
    assert cka(a * scale, b, kernel, unbiased) == pytest.approx(base, rel=1e-9)
    assert cka(a, b / scale, kernel, unbiased) == pytest.approx(base, rel=1e-9)
    # without normalisation the rescaling does change the score: the invariance is the normalisation's doing
    raw = cka(a, b, kernel, unbiased, normalize=False)
    assert abs(cka(a * scale, b, kernel, unbiased, normalize=False) - raw) > 1e-3


def test_knn_metrics_see_normalised_rows():
    a, b = paired()
    scale = np.random.default_rng(2).uniform(0.1, 10.0, size=(len(a), 1))
    assert mutual_knn(a * scale, b, 10) == mutual_knn(a, b, 10)
    assert cknna(a * scale, b, 10) == pytest.approx(cknna(a, b, 10), rel=1e-5)


def test_sample_is_seeded_fixed_and_recorded():
    rows = similarity_sample(5000)
    assert len(rows) == 1024 and len(set(rows)) == 1024 and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, similarity_sample(5000, seed=0))
    assert not np.array_equal(rows, similarity_sample(5000, seed=1))
    expected = np.sort(np.random.default_rng(3).choice(5000, 100, replace=False))
    assert np.array_equal(similarity_sample(5000, 100, seed=3), expected)
    assert np.array_equal(similarity_sample(300), np.arange(300))
    assert np.array_equal(similarity_sample(300, None), np.arange(300))
    with pytest.raises(ValidationError, match="size must be >= 4"):
        similarity_sample(300, 2)


def test_null_is_the_mean_over_the_documented_permutations():
    a, b = paired(n=120)
    rng = np.random.default_rng(7)
    manual = np.mean([mutual_knn(a, b[rng.permutation(120)], 5) for _ in range(4)])
    assert null_score("mutual_knn", a, b, 4, seed=7, k=5) == pytest.approx(manual)
    assert null_score(lambda x, y: float(np.sum(x[:, 0] * y[:, 0])), a, b, 3) == pytest.approx(
        np.mean([np.sum(a[:, 0] * b[p, 0]) for p in (lambda r: [r.permutation(120) for _ in range(3)])(
            np.random.default_rng(0))]))
    with pytest.raises(ValidationError, match="metric must be one of"):
        null_score("svd", a, b)


def test_null_levels_show_chance_at_this_n_and_dimension():
    a, b = paired(n=400, noise=0.3)
    out = similarity_scores(a, b, k=10, sample_size=300, seed=0)
    m = out["metrics"]
    # mutual-kNN of random pairings is about k / (n - 1)
    assert m["mutual_knn_null"] == pytest.approx(10 / 299, abs=0.01)
    # biased CKA of unrelated features is far from 0 when n is small against d: the null says so
    small = similarity_scores(*paired(n=40, da=30, db=30, seed=2), k=5, n_null=20)["metrics"]
    assert small["cka_null"] > 0.3
    for name in ("mutual_knn", "cka", "cknna"):
        assert m[name] > m[f"{name}_null"] + 0.2, name


def test_similarity_scores_use_the_sample_and_record_it():
    a, b = paired(n=1500)
    out = similarity_scores(a, b, k=10)
    rows = similarity_sample(1500)
    assert out["details"] == {"similarity_n": 1024, "similarity_seed": 0, "similarity_k": 10,
                              "similarity_null_permutations": 10}
    assert out["metrics"]["mutual_knn"] == mutual_knn(a[rows], b[rows], 10)
    assert out["metrics"]["cka"] == pytest.approx(cka(a[rows], b[rows]))
    assert out["metrics"]["cknna"] == pytest.approx(cknna(a[rows], b[rows], 10))
    assert set(out["metrics"]) == {"mutual_knn", "cka", "cknna", "mutual_knn_null", "cka_null", "cknna_null"}
    small = similarity_scores(a[:8], b[:8], k=10)
    assert small["details"]["similarity_n"] == 8 and small["details"]["similarity_k"] == 7
    with pytest.raises(ValidationError, match="same number of rows"):
        similarity_scores(a, b[:-1])


def test_similarity_scores_can_pick_measures_and_calibrate_them():
    from alignprobe.metrics import calibrate

    a, b = paired(n=300, noise=2.0)
    out = similarity_scores(a, b, k=5, sample_size=120, seed=3, measures=("mutual_knn", "rsa"), n_permutations=30)
    rows = similarity_sample(300, 120, seed=3)
    m = out["metrics"]
    assert set(m) == {f"{name}{suffix}" for name in ("mutual_knn", "rsa")
                      for suffix in ("", "_calibrated", "_p", "_threshold", "_null")}
    ref = calibrate(a[rows], b[rows], "mutual_knn", 30, seed=3, k=5)
    assert (m["mutual_knn"], m["mutual_knn_null"], m["mutual_knn_p"]) == (ref.observed, ref.null_mean, ref.p_value)
    assert m["rsa_p"] == pytest.approx(1 / 31) and 0 < m["rsa_calibrated"] <= 1
    assert out["details"] == {"similarity_n": 120, "similarity_seed": 3, "similarity_k": 5,
                              "similarity_null_permutations": 30, "similarity_alpha": 0.05}
    plain = similarity_scores(a, b, k=5, sample_size=120, seed=3, measures=["procrustes"])["metrics"]
    assert set(plain) == {"procrustes", "procrustes_null"}
    with pytest.raises(ValidationError, match="Did you mean 'cknna'"):
        similarity_scores(a, b, measures=["ckna"])


def test_null_score_takes_any_registered_measure():
    a, b = paired(n=80)
    rng = np.random.default_rng(0)
    from alignprobe.metrics import rsa
    manual = np.mean([rsa(a, b[rng.permutation(80)]) for _ in range(3)])
    assert null_score("rsa", a, b, 3) == pytest.approx(manual)
