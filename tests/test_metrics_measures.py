"""The measure registry: every measure against an independent computation, its claimed invariances,
its value on identical and on independent inputs, and its permutation scorer against the plain function."""
import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.distance import pdist
from scipy.stats import ortho_group, spearmanr
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score

from alignprobe.errors import ValidationError
from alignprobe.metrics import (
    calibrate,
    cka,
    cknna,
    cycle_knn,
    get_measure,
    knn_jaccard,
    linear_r2,
    list_measures,
    mean_cca,
    mutual_knn,
    procrustes_similarity,
    pwcca,
    register_measure,
    rsa,
    rv_coefficient,
    svcca,
)
from alignprobe.metrics.measures import INVARIANCES, permutation_scorer

# small tensors: on a busy shared machine OpenMP spin-waits would cost more than the arithmetic
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ALL = [
    "mutual_knn", "knn_jaccard", "cycle_knn", "cknna", "cka", "cka_unbiased", "cka_rbf", "cka_rbf_unbiased",
    "rv_coefficient", "svcca", "mean_cca", "pwcca", "procrustes", "rsa", "linear_r2_xy", "linear_r2_yx",
]


def paired(n=80, da=12, db=14, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, da))
    b = a @ rng.standard_normal((da, db)) + noise * rng.standard_normal((n, db))
    return a, b


# ---- the registry ----

def test_registry_lists_every_measure_with_metadata():
    assert list_measures() == ALL
    for name in ALL:
        m = get_measure(name)
        assert m.name == name and m.reference and m.description
        assert m.invariances <= INVARIANCES
        lo, hi = m.bounds
        assert hi is None or lo < hi
        assert m.higher_is_better


def test_unknown_name_suggests_close_names():
    with pytest.raises(ValidationError, match="Did you mean 'mutual_knn'"):
        get_measure("mutual-knnn")
    assert get_measure("Mutual-KNN").name == "mutual_knn"
    with pytest.raises(ValidationError, match="Known measures"):
        get_measure("zzz")


def test_registering_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_measure("cka", bounds=(0, 1), reference="x", invariances=set(), description="x")(lambda x, y: 0.0)
    with pytest.raises(ValueError, match="unknown invariances"):
        register_measure("new_one", bounds=(0, 1), reference="x", invariances={"rotation"}, description="x")


def test_unknown_parameter_is_refused():
    a, b = paired()
    with pytest.raises(ValidationError, match="has no parameter 'kk'.*k"):
        calibrate(a, b, "mutual_knn", n_permutations=2, kk=3)


def test_registered_variants_call_the_right_function():
    a, b = paired()
    assert get_measure("cka")(a, b) == cka(a, b)
    assert get_measure("cka_unbiased")(a, b) == cka(a, b, unbiased=True)
    assert get_measure("cka_rbf")(a, b) == cka(a, b, kernel="rbf")
    assert get_measure("cka_rbf_unbiased")(a, b, sigma=0.7) == cka(a, b, kernel="rbf", unbiased=True, sigma=0.7)
    assert get_measure("mutual_knn")(a, b, k=5) == mutual_knn(a, b, k=5)
    assert get_measure("cknna")(a, b) == cknna(a, b)
    assert get_measure("svcca")(a, b, dim=4) == svcca(a, b, dim=4)
    assert get_measure("linear_r2_yx")(a, b) == linear_r2(b, a)


# ---- each measure against an independent computation ----

def centered(x):
    return x - x.mean(0)


def test_rv_coefficient_matches_its_formula():
    a, b = paired()
    K, L = centered(a) @ centered(a).T, centered(b) @ centered(b).T
    ref = np.trace(K @ L) / np.sqrt(np.trace(K @ K) * np.trace(L @ L))
    assert rv_coefficient(a, b) == pytest.approx(ref, rel=1e-10)


def canonical_correlations(a, b):
    """Canonical correlations from the eigenproblem Cxx^-1 Cxy Cyy^-1 Cyx a = rho^2 a, and the a-side directions."""
    A, B = centered(a), centered(b)
    cxx, cyy, cxy = A.T @ A, B.T @ B, A.T @ B
    M = np.linalg.solve(cxx, cxy) @ np.linalg.solve(cyy, cxy.T)
    ev, vec = np.linalg.eig(M)
    order = np.argsort(-ev.real)
    p = min(a.shape[1], b.shape[1])
    return np.sqrt(np.clip(ev.real[order][:p], 0, 1)), vec.real[:, order][:, :p]


def test_mean_cca_matches_the_eigenproblem_and_sklearn():
    from sklearn.cross_decomposition import CCA

    a, b = paired(n=200, da=6, db=9)
    rho, _ = canonical_correlations(a, b)
    assert mean_cca(a, b) == pytest.approx(rho.mean(), abs=1e-8)
    u, v = CCA(n_components=1, max_iter=5000, tol=1e-12, scale=False).fit(a, b).transform(a, b)
    assert rho[0] == pytest.approx(abs(np.corrcoef(u[:, 0], v[:, 0])[0, 1]), abs=1e-4)


def test_pwcca_matches_morcos_weights():
    a, b = paired(n=200, da=6, db=9)
    rho, dirs = canonical_correlations(a, b)  # a has fewer features, so a gives the weights
    A = centered(a)
    h = A @ dirs
    h /= np.linalg.norm(h, axis=0)
    alpha = np.abs(h.T @ A).sum(axis=1)
    assert pwcca(a, b) == pytest.approx(np.sum(alpha * rho) / alpha.sum(), abs=1e-8)
    # the side with fewer features weighs: swapping the arguments swaps the weighting side too
    assert pwcca(b, a) == pytest.approx(pwcca(a, b), abs=1e-8)


def test_procrustes_matches_scipy():
    a, b = paired(da=10, db=10)
    A, B = centered(a), centered(b)
    A, B = A / np.linalg.norm(A), B / np.linalg.norm(B)
    R, scale = orthogonal_procrustes(A, B)
    assert procrustes_similarity(a, b) == pytest.approx(scale, rel=1e-10)
    assert procrustes_similarity(a, b) == pytest.approx(1 - np.linalg.norm(A @ R - B) ** 2 / 2, rel=1e-10)


def test_procrustes_pads_different_widths():
    a, b = paired(da=6, db=10)
    padded = np.hstack([a, np.zeros((len(a), 4))])
    assert procrustes_similarity(a, b) == pytest.approx(procrustes_similarity(padded, b), rel=1e-10)


@pytest.mark.parametrize("distance", ["euclidean", "correlation"])
def test_rsa_matches_scipy(distance):
    a, b = paired(n=50)
    ref = spearmanr(pdist(a, distance), pdist(b, distance)).statistic
    assert rsa(a, b, distance) == pytest.approx(ref, abs=1e-10)


def cosine_knn(x, k):
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)
    return [set(row) for row in np.argsort(-s, axis=1)[:, :k]]


def test_knn_jaccard_and_cycle_knn_match_brute_force():
    a, b = paired(n=60, noise=2.0)
    k = 5
    na, nb = cosine_knn(a, k), cosine_knn(b, k)
    jac = np.mean([len(na[i] & nb[i]) / len(na[i] | nb[i]) for i in range(60)])
    cyc = np.mean([any(i in na[j] for j in nb[i]) for i in range(60)])
    assert knn_jaccard(a, b, k) == pytest.approx(jac, abs=1e-12)
    assert cycle_knn(a, b, k) == pytest.approx(cyc, abs=1e-12)


def test_linear_r2_matches_sklearn_both_directions():
    a, b = paired(n=100, da=5, db=7)
    for x, y, name in ((a, b, "linear_r2_xy"), (b, a, "linear_r2_yx")):
        pred = LinearRegression().fit(x, y).predict(x)
        ref = r2_score(y, pred, multioutput="variance_weighted")
        assert get_measure(name)(a, b) == pytest.approx(ref, abs=1e-10)


# ---- the permutation scorer computes the same function ----

@pytest.mark.parametrize("name", ALL)
def test_permutation_scorer_equals_the_measure(name):
    a, b = paired(n=60)
    score, _, _ = permutation_scorer(name, a, b)
    m = get_measure(name)
    perm = np.random.default_rng(1).permutation(60)
    assert score(None) == pytest.approx(m(a, b), abs=1e-6)
    assert score(perm) == pytest.approx(m(a, b[perm]), abs=1e-6)


# ---- invariances, identical inputs, independent inputs ----

def transform(x, kind, rng):
    d = x.shape[1]
    if kind == "orthogonal":
        return x @ ortho_group.rvs(d, random_state=rng)
    if kind == "isotropic_scaling":
        return 3.7 * x
    if kind == "permutation":
        return x[:, rng.permutation(d)]
    if kind == "translation":
        return x + rng.standard_normal(d) * 5
    if kind == "invertible_linear":
        return x @ (rng.standard_normal((d, d)) + 3 * np.eye(d))
    raise AssertionError(kind)


@pytest.mark.parametrize("name", ALL)
def test_claimed_invariances_hold(name):
    m = get_measure(name)
    a, b = paired(n=70, noise=1.5, seed=3)
    base = m(a, b)
    rng = np.random.default_rng(0)
    for kind in sorted(m.invariances):
        for side in ("x", "y"):
            ta, tb = (transform(a, kind, rng), b) if side == "x" else (a, transform(b, kind, rng))
            assert m(ta, tb) == pytest.approx(base, abs=1e-6), f"{name} changed under {kind} of {side}"


@pytest.mark.parametrize("name", ["svcca", "pwcca"])
def test_measures_that_do_not_claim_rotations_do_change(name):
    a, b = paired(n=70, noise=1.5, seed=3)
    rot = a @ ortho_group.rvs(a.shape[1], random_state=0)
    assert abs(get_measure(name)(rot, b) - get_measure(name)(a, b)) > 1e-4


@pytest.mark.parametrize("name", ALL)
def test_identical_inputs_reach_the_maximum(name):
    m = get_measure(name)
    a, _ = paired(n=70)
    if name == "cycle_knn":  # kNN is not symmetric: a sample may be in none of its neighbours' lists
        assert m(a, a) >= 0.9
    else:
        assert m(a, a) == pytest.approx(m.upper, abs=1e-7)


@pytest.mark.parametrize("name", ALL)
def test_independent_inputs_score_at_chance(name):
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((120, 12)), rng.standard_normal((120, 16))
    r = calibrate(a, b, name, n_permutations=60, seed=1)
    assert abs(r.observed - r.null_mean) < 4 * r.null_std + 1e-9
    assert r.p_value > 0.01


def test_width_inflates_chance_scores():
    """Gröger et al.'s point: at d near n, independent features already score high (CKA, R²)."""
    rng = np.random.default_rng(0)
    narrow = calibrate(rng.standard_normal((96, 4)), rng.standard_normal((96, 4)), "cka", n_permutations=30)
    wide = calibrate(rng.standard_normal((96, 192)), rng.standard_normal((96, 192)), "cka", n_permutations=30)
    assert wide.null_mean > 3 * narrow.null_mean
    assert wide.calibrated == 0.0 or wide.p_value > 0.05


def test_rank_deficient_inputs_fail_clearly():
    a = np.ones((20, 3))
    b = np.random.default_rng(0).standard_normal((20, 3))
    with pytest.raises(ValidationError, match="constant"):
        mean_cca(a, b)
    with pytest.raises(ValidationError, match="rows"):
        rsa(b, b[:10])
