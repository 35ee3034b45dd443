"""Linear probe against scikit-learn's LogisticRegression and the search protocol's guarantees."""
import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from alignprobe.errors import ValidationError
from alignprobe.metrics import linear_probe_accuracy
from alignprobe.metrics.linear_probe import _stratified_split


def data(n_train=600, n_test=300, d=20, k=8, noise=1.5, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((k, d))
    ytr, yte = rng.integers(0, k, n_train), rng.integers(0, k, n_test)
    scale = rng.uniform(0.5, 3.0, d)  # uneven feature scales, as in real embeddings
    xtr = (c[ytr] + noise * rng.standard_normal((n_train, d))) * scale + 2.0
    xte = (c[yte] + noise * rng.standard_normal((n_test, d))) * scale + 2.0
    return xtr.astype(np.float32), ytr, xte.astype(np.float32), yte


def standardise(tr, te):
    m, s = tr.mean(0), tr.std(0, ddof=1)
    return (tr - m) / s, (te - m) / s


@pytest.mark.parametrize("l2", [1e-3, 3e-2])
def test_single_strength_matches_sklearn(l2):
    xtr, ytr, xte, yte = data()
    res = linear_probe_accuracy(xtr, ytr, xte, yte, l2_grid=[l2], tol=1e-5, max_iter=500)
    s_tr, s_te = standardise(xtr.astype(np.float64), xte.astype(np.float64))
    ref = LogisticRegression(C=1.0 / (l2 * len(xtr)), tol=1e-8, max_iter=5000).fit(s_tr, ytr)
    ref_top1 = (ref.predict(s_te) == yte).mean()
    proba = ref.predict_proba(s_te)
    ranks = (proba >= proba[np.arange(len(yte)), yte][:, None]).sum(1) - 1
    assert res["top1"] == pytest.approx(ref_top1, abs=1 / len(yte) + 1e-9)
    assert res["top5"] == pytest.approx((ranks < 5).mean(), abs=1 / len(yte) + 1e-9)
    assert res["l2"] == l2


def test_search_picks_the_best_validation_strength_and_ignores_test_labels():
    xtr, ytr, xte, yte = data(seed=1)
    grid = np.logspace(-5, 0, 6)
    res = linear_probe_accuracy(xtr, ytr, xte, yte, l2_grid=grid)
    assert set(res["val_accuracy"]) == set(float(v) for v in grid)
    best = max(res["val_accuracy"].values())
    assert res["val_accuracy"][res["l2"]] == best
    assert res["l2"] == max(v for v, a in res["val_accuracy"].items() if a == best)  # ties -> stronger
    shuffled = np.random.default_rng(0).permutation(yte)
    other = linear_probe_accuracy(xtr, ytr, xte, shuffled, l2_grid=grid)
    assert other["l2"] == res["l2"] and other["val_accuracy"] == res["val_accuracy"]
    assert 0 <= res["top1"] <= res["top5"] <= 1


def test_search_accuracy_close_to_sklearn_search():
    xtr, ytr, xte, yte = data(seed=2, noise=2.0)
    grid = np.logspace(-5, 0, 6)
    res = linear_probe_accuracy(xtr, ytr, xte, yte, l2_grid=grid, seed=0)
    fit, val = _stratified_split(ytr, 0.2, 0)
    s_fit, s_val = standardise(xtr[fit], xtr[val])
    best, best_acc = None, -1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for l2 in sorted(grid, reverse=True):
            m = LogisticRegression(C=1.0 / (l2 * len(fit)), max_iter=1000).fit(s_fit, ytr[fit])
            acc = (m.predict(s_val) == ytr[val]).mean()
            if acc > best_acc:
                best, best_acc = l2, acc
        s_tr, s_te = standardise(xtr, xte)
        ref = LogisticRegression(C=1.0 / (best * len(xtr)), max_iter=1000).fit(s_tr, ytr)
    assert res["top1"] == pytest.approx((ref.predict(s_te) == yte).mean(), abs=0.02)


def test_stratified_split_keeps_every_class_in_fit():
    y = np.array([0] * 10 + [1] * 5 + [2])
    fit, val = _stratified_split(y, 0.2, seed=0)
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(len(y)))
    assert set(y[fit]) == {0, 1, 2}
    assert (y[val] == 0).sum() == 2 and (y[val] == 1).sum() == 1 and (y[val] == 2).sum() == 0


def test_unseen_test_class_is_an_error_not_a_crash():
    xtr, ytr, xte, yte = data()
    yte = yte.copy()
    yte[:30] = 42
    res = linear_probe_accuracy(xtr, ytr, xte, yte, l2_grid=[1e-2])
    assert res["top1"] <= 270 / 300


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"l2_grid": []}, "l2_grid must hold at least one positive"),
        ({"l2_grid": [1e-3, -1.0]}, "l2_grid must hold at least one positive"),
        ({"val_fraction": 1.0}, r"val_fraction must be a number in \(0, 1\)"),
        ({"max_iter": 0}, "max_iter must be >= 1"),
    ],
)
def test_bad_options(kwargs, match):
    xtr, ytr, xte, yte = data(n_train=100, n_test=20)
    with pytest.raises(ValidationError, match=match):
        linear_probe_accuracy(xtr, ytr, xte, yte, **kwargs)


def test_bad_data():
    xtr, ytr, xte, yte = data(n_train=100, n_test=20)
    with pytest.raises(ValidationError, match="at least 2 classes"):
        linear_probe_accuracy(xtr, np.zeros_like(ytr), xte, yte)
    with pytest.raises(ValidationError, match="same feature dimension"):
        linear_probe_accuracy(xtr, ytr, xte[:, :3], yte)
    with pytest.raises(ValidationError, match="leaves no validation rows"):
        linear_probe_accuracy(xtr[:4], np.array([0, 1, 2, 3]), xte, yte)
    nan = xtr.copy()
    nan[5, 1] = np.nan
    with pytest.raises(ValidationError, match="train_x must contain only finite"):
        linear_probe_accuracy(nan, ytr, xte, yte)


def test_path_lbfgs_solves_a_regularised_quadratic_path():
    # f(x) = 0.5 x'Ax - b'x + l2/2 |x[:-1]|^2 has the closed-form minimiser (A + l2 P)^-1 b.
    import torch

    from alignprobe.metrics._lbfgs import PathLBFGS

    rng = np.random.default_rng(0)
    q = rng.standard_normal((30, 30))
    A = torch.tensor(q @ q.T / 30 + 0.01 * np.eye(30))
    b = torch.tensor(rng.standard_normal(30))
    mask = torch.ones(30, 1, dtype=torch.float64)
    mask[-1] = 0

    def fn(theta, l2):
        x = theta[:, 0]
        grad = A @ x - b + l2 * mask[:, 0] * x
        return float(0.5 * x @ A @ x - b @ x + 0.5 * l2 * (mask[:, 0] * x) @ x), grad[:, None]

    opt = PathLBFGS(fn, mask, history=8)
    theta = torch.zeros(30, 1, dtype=torch.float64)
    for l2 in (1.0, 0.1, 0.01):
        opt.set_l2(l2)
        theta, _, g, _ = opt.minimize(theta, 500, 1e-9)
        exact = torch.linalg.solve(A + l2 * torch.diag(mask[:, 0]), b)
        # float64 resolves f, hence the line search, down to |grad| ~ 1e-7 here
        assert float(g.abs().max()) < 1e-6
        assert torch.allclose(theta[:, 0], exact, atol=1e-4)
