"""correlate() against scipy.stats and a naive bootstrap loop; permutation p-values against exact
enumeration, paired-bootstrap differences of correlations, and the small-n rule."""
import itertools

import numpy as np
import pytest
from scipy import stats

from alignprobe.errors import ValidationError
from alignprobe.metrics.correlation import (
    MIN_INTERVAL_N,
    TOO_FEW_FOR_INTERVALS,
    correlate,
    correlation_difference,
    permutation_p_value,
)

SCIPY = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}


def sample(n=25, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    return x, 0.6 * x + 0.8 * rng.standard_normal(n)


@pytest.mark.parametrize("method", ["pearson", "spearman", "kendall"])
def test_coefficient_p_value_and_bootstrap_match_references(method):
    x, y = sample()
    res = correlate(x, y, method=method, n_boot=300, seed=7)
    ref = SCIPY[method](x, y)
    assert res["coefficient"] == pytest.approx(ref.statistic, abs=1e-12)
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    # the documented resampling, one scipy call per resample
    idx = np.random.default_rng(7).integers(0, len(x), size=(300, len(x)))
    boot = np.array([SCIPY[method](x[i], y[i]).statistic for i in idx])
    lo, hi = np.percentile(boot, [2.5, 97.5])
    assert res["ci_low"] == pytest.approx(lo, abs=1e-10) and res["ci_high"] == pytest.approx(hi, abs=1e-10)
    assert res["n"] == 25 and res["n_boot_valid"] == 300
    assert -1 <= res["ci_low"] <= res["coefficient"] <= res["ci_high"] <= 1


def test_ci_close_to_scipy_bootstrap():
    x, y = sample(n=60, seed=3)
    res = correlate(x, y, n_boot=4000, seed=1)
    ref = stats.bootstrap((x, y), lambda a, b: stats.pearsonr(a, b).statistic, paired=True, vectorized=False,
                          n_resamples=4000, method="percentile", random_state=2)
    assert res["ci_low"] == pytest.approx(ref.confidence_interval.low, abs=0.04)
    assert res["ci_high"] == pytest.approx(ref.confidence_interval.high, abs=0.04)


def test_constant_resamples_are_dropped():
    x = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    y = np.array([0.1, 0.3, 0.2, 0.4, 2.0])
    res = correlate(x, y, n_boot=500)
    assert 0 < res["n_boot_valid"] < 500


@pytest.mark.parametrize(
    "x, y, kwargs, match",
    [
        ([1, 2, 3], [1, 2], {}, "same length"),
        ([1, 2], [1, 2], {}, "at least 3 pairs"),
        ([1, 1, 1], [1, 2, 3], {}, "x is constant"),
        ([1, np.nan, 3], [1, 2, 3], {}, "x must be finite"),
        ([1, 2, 3], [1, 2, 4], {"method": "cosine"}, "method must be one of"),
        ([1, 2, 3], [1, 2, 4], {"n_boot": 0}, "n_boot must be >= 1"),
        ([1, 2, 3], [1, 2, 4], {"confidence": 95}, r"confidence must be a number in \(0, 1\)"),
        ([[1, 2, 3]], [1, 2, 4], {}, "x must be 1-D"),
    ],
)
def test_errors(x, y, kwargs, match):
    with pytest.raises(ValidationError, match=match):
        correlate(x, y, **kwargs)


# --------------------------------------------------------------------------- permutation p-values, differences, small n
def exact_p(x, y, method):
    """All 720 pairings of n = 6, each scored by scipy: the fraction at least as strong as observed."""
    obs = abs(SCIPY[method](x, y).statistic)
    hits = [abs(SCIPY[method](x, np.array(p)).statistic) >= obs - 1e-12 for p in itertools.permutations(y)]
    return np.mean(hits)


@pytest.mark.parametrize("method", ["pearson", "spearman", "kendall"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permutation_p_equals_exact_enumeration_on_n6(method, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(6)
    y = 0.8 * x + 0.6 * rng.standard_normal(6)
    res = permutation_p_value(x, y, method)
    assert res["exact"] and res["n_permutations"] == 720
    assert res["p_value"] == pytest.approx(exact_p(x, y, method), abs=1e-12)
    # Monte Carlo (fewer permutations than 6!) estimates the same p
    mc = permutation_p_value(x, y, method, n_permutations=600, seed=seed)
    assert not mc["exact"] and mc["p_value"] == pytest.approx(res["p_value"], abs=0.06)


def test_permutation_p_with_ties_and_monte_carlo_floor():
    x = np.array([1.0, 1.0, 2.0, 3.0, 3.0, 4.0])
    y = np.array([0.5, 0.7, 0.7, 2.0, 1.0, 3.0])
    for method in ("spearman", "kendall"):
        assert permutation_p_value(x, y, method)["p_value"] == pytest.approx(exact_p(x, y, method), abs=1e-12)
    x = np.arange(40.0)
    res = permutation_p_value(x, x ** 2, "pearson", n_permutations=999)
    assert res["p_value"] == pytest.approx(1 / 1000)  # (1 + 0 hits) / (1 + B), never 0


def test_correlate_reports_the_permutation_p_beside_the_interval():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(6)
    y = x + 0.5 * rng.standard_normal(6)
    res = correlate(x, y, method="spearman", n_boot=200)
    assert res["p_permutation"] == pytest.approx(exact_p(x, y, "spearman"))
    assert res["p_permutation_exact"] is True
    assert res["ci_note"] is None and -1.0 <= res["ci_low"] <= res["coefficient"] <= res["ci_high"] <= 1.0


@pytest.mark.parametrize("n", [3, 4])
def test_below_five_encoders_no_intervals(n):
    x = np.arange(float(n))
    y = x + np.array([0.1, -0.2, 0.05, 0.3])[:n]
    res = correlate(x, y, n_boot=100)
    assert res["ci_low"] is None and res["ci_high"] is None and res["n_boot_valid"] == 0
    assert res["ci_note"] == TOO_FEW_FOR_INTERVALS == "too few encoders for intervals"
    assert res["coefficient"] == pytest.approx(stats.pearsonr(x, y).statistic)
    diff = correlation_difference(x, y, y, n_boot=100)
    assert diff["ci_low"] is None and diff["ci_note"] == TOO_FEW_FOR_INTERVALS
    x5 = np.arange(float(MIN_INTERVAL_N))
    five = correlate(x5, x5 ** 1.5 + np.array([0, .2, -.1, .3, 0]), n_boot=100)
    assert five["ci_note"] is None and five["n_boot_valid"] > 0
    assert -1.0 <= five["ci_low"] <= five["coefficient"] <= five["ci_high"] <= 1.0


def test_difference_of_identical_predictors_contains_zero():
    rng = np.random.default_rng(0)
    y = rng.standard_normal(12)
    x = y + rng.standard_normal(12)
    for method in ("pearson", "spearman", "kendall"):
        res = correlation_difference(x, x.copy(), y, method=method, n_boot=500, seed=1)
        assert res["difference"] == 0.0
        assert res["ci_low"] <= 0.0 <= res["ci_high"]


def test_difference_matches_a_naive_paired_loop_and_separates_a_better_predictor():
    rng = np.random.default_rng(2)
    y = rng.standard_normal(30)
    good = y + 0.2 * rng.standard_normal(30)
    poor = y + 2.0 * rng.standard_normal(30)
    res = correlation_difference(good, poor, y, method="spearman", n_boot=400, seed=5)
    idx = np.random.default_rng(5).integers(0, 30, size=(400, 30))
    naive = [stats.spearmanr(good[i], y[i]).statistic - stats.spearmanr(poor[i], y[i]).statistic for i in idx]
    lo, hi = np.percentile(naive, [2.5, 97.5])
    assert res["ci_low"] == pytest.approx(lo, abs=1e-10) and res["ci_high"] == pytest.approx(hi, abs=1e-10)
    assert res["difference"] == pytest.approx(stats.spearmanr(good, y).statistic - stats.spearmanr(poor, y).statistic)
    assert res["ci_low"] > 0  # the better predictor is better, with confidence
    swapped = correlation_difference(poor, good, y, method="spearman", n_boot=400, seed=5)
    assert swapped["ci_high"] < 0


def test_errors_name_the_argument():
    y = np.arange(6.0)
    with pytest.raises(ValidationError, match="x2 and y must have the same length"):
        correlation_difference(y, y[:-1], y)
    with pytest.raises(ValidationError, match="x1 is constant"):
        correlation_difference(np.ones(6), y, y)
    with pytest.raises(ValidationError, match="n_permutations must be >= 1"):
        permutation_p_value(y, y, n_permutations=0)
    with pytest.raises(ValidationError, match="method must be one of"):
        permutation_p_value(y, y, method="cosine")
