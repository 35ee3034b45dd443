"""Training-free baselines against brute-force fits on planted data, scored by the toolkit's retrieval code."""
import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.stats import ortho_group

from alignprobe.errors import NotFittedError, ValidationError
from alignprobe.metrics import retrieval_metrics
from alignprobe.metrics.baselines import BASELINES, fit_baseline

# small tensors: on a busy shared machine OpenMP spin-waits would cost more than the arithmetic
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def r_at(model, x, y, k=1):
    r = retrieval_metrics(model.transform_image(x), model.transform_text(y), np.arange(len(x)), ks=(k,))
    return r["i2t"][k], r["t2i"][k]


def split(x, y, n_train):
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def planted_rotation(n=600, d=24, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) + 2.0
    rot = ortho_group.rvs(d, random_state=seed)
    return x, x @ rot + noise * rng.standard_normal((n, d)) - 1.0, rot


def test_names():
    assert set(BASELINES) == {"procrustes", "ridge", "cca", "asif"}


def test_procrustes_recovers_a_planted_orthogonal_map():
    x, y, rot = planted_rotation()
    xtr, ytr, xte, yte = split(x, y, 500)
    model = fit_baseline("procrustes", xtr, ytr, normalize=False)
    assert np.abs(model.rotation_.numpy() - rot).max() < 0.1
    ref, _ = orthogonal_procrustes(xtr - xtr.mean(0), ytr - ytr.mean(0))
    np.testing.assert_allclose(model.rotation_.numpy(), ref, atol=1e-10)
    i2t, t2i = r_at(model, xte, yte)
    assert i2t >= 0.95 and t2i >= 0.95
    # the raw features, compared directly, do not match: the map is what aligns them
    raw = retrieval_metrics(xte, yte, np.arange(100), ks=(1,))
    assert raw["i2t"][1] < 0.2


def test_procrustes_with_different_widths_pads_the_narrower_side():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 16))
    rot = ortho_group.rvs(24, random_state=1)
    y = np.hstack([x, np.zeros((600, 8))]) @ rot + 0.2 * rng.standard_normal((600, 24))
    xtr, ytr, xte, yte = split(x, y, 500)
    model = fit_baseline("procrustes", xtr, ytr, normalize=False)
    r = model.rotation_.numpy()
    assert r.shape == (16, 24)
    np.testing.assert_allclose(r @ r.T, np.eye(16), atol=1e-10)
    np.testing.assert_allclose(r, rot[:16], atol=0.1)
    assert min(r_at(model, xte, yte)) >= 0.95
    wide = fit_baseline("procrustes", ytr, xtr, normalize=False).rotation_.numpy()  # 24 -> 16
    np.testing.assert_allclose(wide.T @ wide, np.eye(16), atol=1e-10)


def test_whitened_procrustes_aligns_differently_scaled_axes():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((600, 12)) * np.linspace(0.2, 5, 12)
    y = (x / np.linspace(0.2, 5, 12)) @ ortho_group.rvs(12, random_state=2) + 0.2 * rng.standard_normal((600, 12))
    xtr, ytr, xte, yte = split(x, y, 500)
    whitened = fit_baseline("procrustes", xtr, ytr, whiten=True, normalize=False)
    rigid = fit_baseline("procrustes", xtr, ytr, normalize=False)
    assert r_at(whitened, xte, yte)[0] >= 0.9
    assert r_at(whitened, xte, yte)[0] > r_at(rigid, xte, yte)[0]


def test_ridge_equals_the_closed_form_and_recovers_a_planted_linear_map():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((600, 20))
    w = rng.standard_normal((20, 30))
    y = x @ w + 0.5 * rng.standard_normal((600, 30))
    xtr, ytr, xte, yte = split(x, y, 500)
    model = fit_baseline("ridge", xtr, ytr, alpha=0.1, normalize=False)
    xc, yc = xtr - xtr.mean(0), ytr - ytr.mean(0)
    gram = xc.T @ xc
    ref = np.linalg.solve(gram + 0.1 * np.trace(gram) / 20 * np.eye(20), xc.T @ yc)
    np.testing.assert_allclose(model.coef_.numpy(), ref, rtol=1e-8, atol=1e-10)
    free = fit_baseline("ridge", xtr, ytr, alpha=0, normalize=False)
    np.testing.assert_allclose(free.coef_.numpy(), np.linalg.lstsq(xc, yc, rcond=None)[0], atol=1e-8)
    np.testing.assert_allclose(free.coef_.numpy(), w, atol=0.15)
    assert min(r_at(model, xte, yte)) >= 0.95


def canonical_correlations(a, b):
    A, B = a - a.mean(0), b - b.mean(0)
    M = np.linalg.solve(A.T @ A, A.T @ B) @ np.linalg.solve(B.T @ B, B.T @ A)
    return np.sqrt(np.clip(np.sort(np.linalg.eigvals(M).real)[::-1], 0, 1))


def planted_latent(n=700, dx=20, dy=28, latent=6, noise=1.0, seed=4):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent))
    x = z @ rng.standard_normal((latent, dx)) + noise * rng.standard_normal((n, dx))
    y = z @ rng.standard_normal((latent, dy)) + noise * rng.standard_normal((n, dy))
    return x, y


def test_cca_matches_the_eigenproblem_and_aligns_a_shared_latent():
    x, y = planted_latent()
    xtr, ytr, xte, yte = split(x, y, 600)
    model = fit_baseline("cca", xtr, ytr, reg=0, normalize=False)
    ref = canonical_correlations(xtr, ytr)[:20]
    np.testing.assert_allclose(model.correlations_.numpy(), ref, atol=1e-8)
    # the canonical variates of the training data have unit variance and correlate as stated
    u, v = model.transform_image(xtr).astype(float), model.transform_text(ytr).astype(float)
    np.testing.assert_allclose(u.std(0, ddof=1), 1, atol=1e-4)
    np.testing.assert_allclose([np.corrcoef(u[:, i], v[:, i])[0, 1] for i in range(3)], ref[:3], atol=1e-4)
    top = fit_baseline("cca", xtr, ytr, n_components=6, normalize=False)
    assert top.transform_image(xte).shape == (100, 6)
    assert min(r_at(top, xte, yte, k=5)) >= 0.6  # chance: 0.05
    assert min(r_at(top, xte, yte, k=5)) > min(r_at(model, xte, yte, k=5))  # noise directions dilute the cosine


def test_asif_beats_chance_on_planted_pairs():
    x, y = planted_latent(n=1100, noise=0.5, seed=5)
    xtr, ytr, xte, yte = split(x, y, 1000)
    model = fit_baseline("asif", xtr, ytr, k=100, p=4)
    emb = model.transform_image(xte)
    assert emb.shape == (100, 1000)
    assert (emb >= 0).all() and ((emb > 0).sum(1) <= 100).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    i2t, t2i = r_at(model, xte, yte, k=5)
    assert i2t > 0.3 and t2i > 0.3  # chance: 0.05


def test_asif_uses_only_the_top_k_anchors_of_each_modality():
    rng = np.random.default_rng(6)
    xtr, ytr = rng.standard_normal((50, 4)), rng.standard_normal((50, 6))
    model = fit_baseline("asif", xtr, ytr, k=3, p=2)
    q = rng.standard_normal((2, 4))
    u = q / np.linalg.norm(q, axis=1, keepdims=True)
    a = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    sims = u @ a.T
    ref = np.zeros_like(sims)
    for i in range(2):
        top = np.argsort(-sims[i])[:3]
        ref[i, top] = np.clip(sims[i, top], 0, None) ** 2
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(model.transform_image(q), ref, atol=1e-6)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_independent_data_stays_near_chance(name):
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((600, 16)), rng.standard_normal((600, 16))
    model = fit_baseline(name, x[:500], y[:500], **({"k": 50} if name == "asif" else {}))
    assert max(r_at(model, x[500:], y[500:], k=5)) < 0.2  # chance: 0.05


def test_errors():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 4)), rng.standard_normal((20, 5))
    with pytest.raises(ValidationError, match="unknown baseline 'pca'.*procrustes"):
        fit_baseline("pca", x, y)
    with pytest.raises(ValidationError, match="unexpected keyword"):
        fit_baseline("ridge", x, y, whiten=True)
    with pytest.raises(ValidationError, match="same number of rows"):
        fit_baseline("ridge", x, y[:10])
    with pytest.raises(NotFittedError):
        BASELINES["cca"]().transform_image(x)
    model = fit_baseline("cca", x, y, n_components=2)
    with pytest.raises(ValidationError, match="must have 5 features"):
        model.transform_text(x)
    with pytest.raises(ValidationError, match="n_components"):
        fit_baseline("cca", x, y, n_components=9)
    with pytest.raises(ValidationError, match="p must be"):
        fit_baseline("asif", x, y, p=-1)
