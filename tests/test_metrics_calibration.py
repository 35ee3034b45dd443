"""Permutation calibration (Gröger, Wen & Brbić, ICML 2026): Algorithm 1 by hand, its level under the
null, its power under planted structure, and Algorithm 2 for the maximum over layer pairs."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import binom

from alignprobe.errors import ValidationError
from alignprobe.metrics import calibrate, calibrate_all, calibrate_max, get_measure, list_measures
from alignprobe.metrics.calibration import calibrate_scores, order_statistic_index

# small tensors: on a busy shared machine OpenMP spin-waits would cost more than the arithmetic
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Measures whose in-sample fit is exact once d reaches n - 1: permutations cannot move them, so they
# never reject there (p = 1), which is the right answer, but they cannot detect planted structure either.
# (At d = n / 2 they still detect it: tested at (96, 48).)
SATURATE_WHEN_WIDE = {"mean_cca", "pwcca", "linear_r2_xy", "linear_r2_yx"}


def first_column_corr(x, y):
    return float(np.corrcoef(x[:, 0], y[:, 0])[0, 1])


def hand_algorithm_1(obs, null, alpha, upper):
    K = len(null)
    combined = sorted([obs] + list(null))
    tau = combined[math.ceil((1 - alpha) * (K + 1)) - 1]  # the ceil((1 - alpha)(K + 1))-th, 1-based
    p = (1 + sum(v >= obs for v in null)) / (K + 1)
    if upper is None:
        cal = max(obs - tau, 0.0)
    else:
        cal = min(max((obs - tau) / (upper - tau), 0.0), 1.0)
    return tau, p, cal


def test_fixed_permutations_equal_a_hand_computation():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3))
    y = x + 1.5 * rng.standard_normal((10, 3))
    perms = np.stack([rng.permutation(10) for _ in range(19)])
    null = [first_column_corr(x, y[p]) for p in perms]
    obs = first_column_corr(x, y)
    for upper in (1.0, None):
        r = calibrate(x, y, first_column_corr, permutations=perms, alpha=0.05, upper=upper)
        tau, p, cal = hand_algorithm_1(obs, null, 0.05, upper)
        assert r.observed == pytest.approx(obs, abs=1e-12)
        assert r.null == pytest.approx(null, abs=1e-12)
        assert r.threshold == pytest.approx(tau, abs=1e-12)
        assert r.p_value == pytest.approx(p)
        assert r.calibrated == pytest.approx(cal, abs=1e-12)
        assert r.null_mean == pytest.approx(np.mean(null))
        assert r.n_permutations == 19 and r.alpha == 0.05 and r.upper == upper
        assert r.measure == "first_column_corr"


def test_registered_measure_with_fixed_permutations_equals_a_hand_computation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 6))
    y = x @ rng.standard_normal((6, 5)) + 3 * rng.standard_normal((40, 5))
    perms = np.stack([rng.permutation(40) for _ in range(9)])
    m = get_measure("cka")
    null = [m(x, y[p]) for p in perms]
    tau, p, cal = hand_algorithm_1(m(x, y), null, 0.2, 1.0)
    r = calibrate(x, y, "cka", permutations=perms, alpha=0.2)
    assert (r.threshold, r.p_value, r.calibrated) == pytest.approx((tau, p, cal), abs=1e-6)
    assert r.as_metrics() == {"cka": r.observed, "cka_calibrated": r.calibrated, "cka_p": r.p_value,
                              "cka_threshold": r.threshold, "cka_null": r.null_mean}


def test_order_statistic_is_exact_where_float_arithmetic_is_not():
    # (1 - 0.05) * 200 = 190 exactly; the threshold is the 190th of 200 (index 189)
    assert order_statistic_index(199, 0.05) == 189
    assert order_statistic_index(19, 0.05) == 18
    assert order_statistic_index(99, 0.01) == 98
    assert order_statistic_index(9, 0.05) == 9  # ceil(9.5) = 10: the largest, so nothing is ever above it
    assert order_statistic_index(1, 0.5) == 0


def test_ties_count_against_the_observed_score():
    r = calibrate_scores(1.0, [1.0 - 1e-13] * 9, alpha=0.05, upper=1.0)
    assert r["p_value"] == 1.0 and r["calibrated"] == 0.0
    r = calibrate_scores(0.5, [0.1, 0.2, 0.5, 0.3], alpha=0.25, upper=1.0)
    assert r["p_value"] == pytest.approx(2 / 5)


def test_matches_the_reference_implementation():
    cs = pytest.importorskip("calibrated_similarity")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 8))
    y = x @ rng.standard_normal((8, 8)) * 0.3 + rng.standard_normal((50, 8))
    perms = np.stack([rng.permutation(50) for _ in range(49)])
    it = iter(perms)
    m = get_measure("procrustes")
    ref_cal, ref_p, ref_tau = cs.calibrate(
        torch.from_numpy(x), torch.from_numpy(y), lambda a, b: m(a.numpy(), b.numpy()), K=49, alpha=0.05,
        smax=1.0, perm_fn=lambda n, device: torch.from_numpy(next(it)),
    )
    r = calibrate(x, y, "procrustes", permutations=perms)
    assert r.threshold == pytest.approx(float(ref_tau), abs=1e-6)
    assert r.p_value == pytest.approx(float(ref_p), abs=1e-6)
    assert r.calibrated == pytest.approx(float(ref_cal), abs=1e-5)


def test_seeded_and_reproducible():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
    a = calibrate(x, y, "mutual_knn", n_permutations=20, seed=7, k=3)
    b = calibrate(x, y, "mutual_knn", n_permutations=20, seed=7, k=3)
    c = calibrate(x, y, "mutual_knn", n_permutations=20, seed=8, k=3)
    assert a == b and a.null != c.null
    own = np.random.default_rng(7)
    perms = np.stack([own.permutation(30) for _ in range(20)])
    assert calibrate(x, y, "mutual_knn", permutations=perms, k=3) == a


def test_bad_arguments_are_refused():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 3)), rng.standard_normal((12, 3))
    with pytest.raises(ValidationError, match="alpha"):
        calibrate(x, y, "cka", alpha=1.0)
    with pytest.raises(ValidationError, match="same number of rows"):
        calibrate(x, y[:10], "cka")
    with pytest.raises(ValidationError, match="n_permutations"):
        calibrate(x, y, "cka", n_permutations=0)
    with pytest.raises(ValidationError, match="not a permutation"):
        calibrate(x, y, "cka", permutations=np.zeros((3, 12), dtype=int))
    with pytest.raises(ValidationError, match="shape"):
        calibrate(x, y, "cka", permutations=np.zeros((3, 11), dtype=int))
    with pytest.raises(ValidationError, match="Did you mean 'cka'"):
        calibrate(x, y, "ckaa")
    with pytest.raises(ValidationError, match="registered name"):
        calibrate(x, y, 3)
    with pytest.raises(ValidationError, match="finite"):
        calibrate(np.full((12, 3), np.nan), y, "cka")
    # the measure's own checks run before any permutation
    with pytest.raises(ValidationError, match="k must be <= 11"):
        calibrate(x, y, "cknna", k=12)
    with pytest.raises(ValidationError, match="at least 4 rows"):
        calibrate(x[:3], y[:3], "cka_unbiased")
    with pytest.raises(ValidationError, match="dim must be <= 3"):
        calibrate(x, y, "svcca")


def test_a_saturated_measure_gets_p_one_not_a_rounding_accident():
    """With d >= n - 1 the in-sample R² is 1 for any pairing: nothing is learnt and p must be 1."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 50)), rng.standard_normal((40, 6))
    r = calibrate(x, y, "linear_r2_xy", n_permutations=30)
    assert r.observed == pytest.approx(1.0)
    assert r.p_value == 1.0 and r.calibrated == 0.0


# ---- level under the null, power under planted structure ----

def draw(n, d, rng, shared=0.0):
    """x, y with d features each; with shared > 0 both carry the same 8-dim latent (planted structure)."""
    z = rng.standard_normal((n, 8))
    x = rng.standard_normal((n, d)) + shared * z @ rng.standard_normal((8, d))
    y = rng.standard_normal((n, d)) + shared * z @ rng.standard_normal((8, d))
    return x, y


def params_for(name, d):
    return {"dim": min(10, d)} if name == "svcca" else {}


def rejection_counts(n, d, repeats, K, seed, shared=0.0):
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(list_measures(), 0)
    for r in range(repeats):
        x, y = draw(n, d, rng, shared)
        results = calibrate_all(x, y, list(counts), n_permutations=K, seed=r, params={"svcca": params_for("svcca", d)})
        for name, res in results.items():
            counts[name] += res.p_value <= 0.05
            assert (res.calibrated > 0) == (res.observed > res.threshold)
    return counts


def assert_level(counts, repeats):
    # K = 19: p <= 0.05 exactly when the observed score beats all 19 permuted ones (probability 1/20 under
    # the null). Per measure, allow the binomial 99.9% upper quantile. The measures see the same draws, so
    # their rejections are correlated: the average over measures gets the tolerance of `repeats` trials.
    per = binom.ppf(0.999, repeats, 0.05)
    for name, c in counts.items():
        assert c <= per, f"{name} rejected {c} / {repeats} independent draws"
    mean_rate = sum(counts.values()) / (repeats * len(counts))
    assert mean_rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / repeats)


def test_null_level_small():
    assert_level(rejection_counts(48, 24, repeats=6, K=19, seed=11), 6)


@pytest.mark.slow
@pytest.mark.parametrize("n,d", [(96, 48), (96, 192), (128, 384)])
def test_null_level_at_and_beyond_width_n(n, d):
    assert_level(rejection_counts(n, d, repeats=40, K=19, seed=n + d), 40)


@pytest.mark.slow
@pytest.mark.parametrize("n,d", [(96, 48), (96, 192), (128, 384)])
def test_planted_structure_is_detected(n, d):
    repeats = 10
    counts = rejection_counts(n, d, repeats=repeats, K=19, seed=1000 + d, shared=1.0)
    for name, c in counts.items():
        if name in SATURATE_WHEN_WIDE and d >= n - 1:
            continue  # every pairing fits exactly: the canonical correlations and R² are all 1
        assert c >= repeats - 1, f"{name} detected planted structure in only {c} / {repeats} draws"


def test_planted_structure_is_detected_small():
    counts = rejection_counts(64, 16, repeats=2, K=19, seed=5, shared=1.0)
    assert all(c == 2 for c in counts.values()), counts


# ---- Algorithm 2: the maximum over layer pairs ----

def test_max_over_12_by_12_independent_layers_is_not_significant():
    # Under the null p is uniform: 1 data seed in 20 gives p <= 0.05 (seed 0 does, with p = 0.02).
    rng = np.random.default_rng(1)
    n = 64
    xs = [rng.standard_normal((n, 16)) for _ in range(12)]
    ys = [rng.standard_normal((n, 16)) for _ in range(12)]
    r = calibrate_max(xs, ys, "mutual_knn", n_permutations=99, k=5)
    single = calibrate(xs[0], ys[0], "mutual_knn", n_permutations=99, k=5)
    # the raw maximum looks like alignment against one pair's chance level (k / (n - 1) = 0.079)...
    assert r.observed > 1.5 * single.null_mean and r.observed > single.null_mean + 3 * single.null_std
    assert r.observed > single.threshold
    # ...and the best pair alone, tested as if it had not been picked, often looks significant
    assert r.pair_p_values.min() <= 0.05
    # but calibrated for the search, it is chance
    assert r.p_value > 0.05 and r.calibrated == 0.0
    assert r.scores.shape == (12, 12) and r.scores[r.argmax] == r.observed
    assert r.null_mean > single.null_mean + 2 * single.null_std  # the maximum's own chance level is higher


def test_max_finds_a_planted_pair():
    rng = np.random.default_rng(1)
    n = 64
    xs = [rng.standard_normal((n, 16)) for _ in range(4)]
    ys = [rng.standard_normal((n, 16)) for _ in range(3)]
    ys[1] = xs[2] @ rng.standard_normal((16, 16)) + 0.5 * rng.standard_normal((n, 16))
    r = calibrate_max(xs, ys, "cka", n_permutations=49)
    assert r.argmax == (2, 1)
    assert r.p_value == pytest.approx(1 / 50) and r.calibrated > 0.5
    assert r.pair_calibrated[2, 1] > 0.5 and r.pair_p_values[2, 1] == pytest.approx(1 / 50)


def test_max_over_one_pair_is_algorithm_1_with_the_same_permutations():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((30, 5))
    one = calibrate(x, y, "rsa", n_permutations=25, seed=4)
    mx = calibrate_max([x], [y], "rsa", n_permutations=25, seed=4)
    assert (mx.observed, mx.threshold, mx.p_value, mx.calibrated, mx.null_mean) == pytest.approx(
        (one.observed, one.threshold, one.p_value, one.calibrated, one.null_mean)
    )
    assert mx.null_max == pytest.approx(one.null)


def test_the_same_permutation_goes_to_every_layer():
    """Two identical y layers must score identically in every permuted round."""
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
    seen = []

    def spy(a, b):
        seen.append(b[:, 0].copy())
        return float(np.corrcoef(a[:, 0], b[:, 0])[0, 1])

    r = calibrate_max([x], [y, y.copy()], spy, n_permutations=5, upper=1.0)
    assert np.allclose(r.scores[0, 0], r.scores[0, 1])
    rounds = np.array(seen).reshape(6, 2, -1)
    assert all(np.array_equal(a, b) for a, b in rounds)


def test_max_refuses_mismatched_layers():
    rng = np.random.default_rng(0)
    with pytest.raises(ValidationError, match="same n"):
        calibrate_max([rng.standard_normal((10, 2))], [rng.standard_normal((9, 2))], "cka", n_permutations=3)
    with pytest.raises(ValidationError, match="lists"):
        calibrate_max(rng.standard_normal((10, 2)), [rng.standard_normal((10, 2))], "cka")
    with pytest.raises(ValidationError, match="at least one layer"):
        calibrate_max([], [rng.standard_normal((10, 2))], "cka")


def test_calibrate_all_equals_calibrate_per_measure():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((40, 12))
    y = x @ rng.standard_normal((12, 10)) + 2 * rng.standard_normal((40, 10))
    out = calibrate_all(x, y, ["mutual_knn", "cknna", "mean_cca", "rsa"], n_permutations=15, seed=2,
                        params={"mutual_knn": {"k": 4}})
    assert list(out) == ["mutual_knn", "cknna", "mean_cca", "rsa"]
    assert out["mutual_knn"] == calibrate(x, y, "mutual_knn", 15, seed=2, k=4)
    assert out["rsa"] == calibrate(x, y, "rsa", 15, seed=2)
    assert set(calibrate_all(x, y, n_permutations=2, params={"svcca": {"dim": 5}})) == set(list_measures())
    with pytest.raises(ValidationError, match="not being calibrated: cka"):
        calibrate_all(x, y, ["rsa"], n_permutations=2, params={"cka": {}})


def test_max_matches_the_reference_implementation():
    cs = pytest.importorskip("calibrated_similarity")
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((30, 6)) for _ in range(3)]
    ys = [rng.standard_normal((30, 5)) for _ in range(2)]
    perms = np.stack([rng.permutation(30) for _ in range(19)])
    it = iter(perms)
    m = get_measure("cka")
    ref_cal, ref_p, ref_tau = cs.calibrate_layers(
        [torch.from_numpy(x) for x in xs], [torch.from_numpy(y) for y in ys], lambda a, b: m(a.numpy(), b.numpy()),
        agg="max", K=19, alpha=0.05, smax=1.0, perm_fn=lambda n, device: torch.from_numpy(next(it)),
    )
    r = calibrate_max(xs, ys, "cka", permutations=perms)
    assert (r.threshold, r.p_value, r.calibrated) == pytest.approx(
        (float(ref_tau), float(ref_p), float(ref_cal)), abs=1e-5)
