"""correlate() against scipy.stats and a naive bootstrap loop."""
import numpy as np
import pytest
from scipy import stats

from alignprobe.errors import ValidationError
from alignprobe.metrics import correlate

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
