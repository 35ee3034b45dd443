"""k-means NMI / ARI: scores against scikit-learn, clustering quality against sklearn KMeans."""
import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from alignprobe.errors import ValidationError
from alignprobe.metrics import kmeans, kmeans_nmi, kmeanspp_seeds


def blobs(n=1500, d=24, k=15, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d))
    y = rng.integers(0, k, n)
    x = centers[y] + noise * rng.standard_normal((n, d))
    return x.astype(np.float32), y


def test_scores_equal_sklearn_on_the_same_assignment():
    x, y = blobs(noise=1.2)
    res = kmeans_nmi(x, y, seed=3)
    assign = kmeans(x, 15, seed=3, n_init=3)["assignment"]  # kmeans_nmi's default restarts
    assert res["nmi"] == pytest.approx(normalized_mutual_info_score(y, assign), abs=1e-12)
    assert res["ari"] == pytest.approx(adjusted_rand_score(y, assign), abs=1e-12)
    assert res["n_clusters"] == res["n_classes"] == 15
    assert 0 < res["nmi"] < 1 and -0.5 <= res["ari"] <= 1


def test_separated_clusters_are_recovered_exactly():
    x, y = blobs(noise=0.05)
    res = kmeans_nmi(x, y)
    assert res["nmi"] == pytest.approx(1.0) and res["ari"] == pytest.approx(1.0)


def test_invariant_to_label_permutation():
    x, y = blobs(noise=1.2)
    perm = np.random.default_rng(1).permutation(15) + 100
    a, b = kmeans_nmi(x, y, seed=0), kmeans_nmi(x, perm[y], seed=0)
    assert a["nmi"] == pytest.approx(b["nmi"]) and a["ari"] == pytest.approx(b["ari"])


def test_quality_matches_sklearn_kmeans():
    # Overlapping clusters, where the seeding matters: at least as good as
    # scikit-learn's default k-means++ (full data) up to a small margin.
    x, y = blobs(n=3000, d=32, k=30, noise=1.6, seed=2)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    ours = [kmeans_nmi(x, y, seed=s) for s in range(3)]
    ref = [KMeans(30, random_state=s).fit(xn) for s in range(3)]
    ref_nmi = np.mean([normalized_mutual_info_score(y, r.labels_) for r in ref])
    assert np.mean([o["nmi"] for o in ours]) >= ref_nmi - 0.02
    assert np.mean([o["inertia"] for o in ours]) <= np.mean([r.inertia_ for r in ref]) * 1.02


def test_inertia_is_the_sum_of_squared_distances_and_assignment_is_nearest():
    x, _ = blobs(noise=1.0)
    res = kmeans(x, 10, normalize=False)
    c, a = res["centroids"], res["assignment"]
    d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    assert np.array_equal(a, d2.argmin(1)) or (d2[np.arange(len(x)), a] - d2.min(1)).max() < 1e-4
    assert res["inertia"] == pytest.approx(d2.min(1).sum(), rel=1e-4)


def test_more_restarts_never_increase_inertia_and_seed_is_deterministic():
    x, _ = blobs(noise=1.5)
    one, three = kmeans(x, 15, seed=5, n_init=1), kmeans(x, 15, seed=5, n_init=3)
    assert three["inertia"] <= one["inertia"] + 1e-6
    again = kmeans(x, 15, seed=5, n_init=1)
    assert np.array_equal(one["assignment"], again["assignment"])


def test_torch_input_and_explicit_k():
    x, y = blobs(noise=0.05)
    res = kmeans_nmi(torch.from_numpy(x), torch.from_numpy(y), n_clusters=30)
    assert res["n_clusters"] == 30 and res["nmi"] > 0.8


def test_kmeanspp_seeds_hit_every_tight_cluster():
    x, y = blobs(n=600, k=12, noise=0.01)
    seeds = kmeanspp_seeds(x, 12, seed=0)
    assert len(set(seeds.tolist())) == 12
    assert len(set(y[seeds].tolist())) == 12


@pytest.mark.parametrize(
    "features, labels, kwargs, match",
    [
        (np.full((5, 3), np.nan), np.arange(5), {}, "features must contain only finite"),
        (np.ones((5, 3)), np.arange(4), {}, "labels must have one label per row"),
        (np.zeros((0, 3)), np.zeros(0, int), {}, "features must not be empty"),
        (np.random.rand(5, 3), np.arange(5), {"n_clusters": 6}, "n_clusters must be <= 5"),
        (np.random.rand(5, 3), np.arange(5) * 0.5, {}, "labels must hold integer"),
        (np.random.rand(5), np.arange(5), {}, "features must be 2-D"),
        (np.vstack([np.zeros(3), np.ones((4, 3))]), np.arange(5), {}, "all-zero rows"),
    ],
)
def test_bad_inputs_raise_clear_errors(features, labels, kwargs, match):
    with pytest.raises(ValidationError, match=match):
        kmeans_nmi(features, labels, **kwargs)


def test_bad_options():
    x, y = blobs(n=100, k=3)
    with pytest.raises(ValidationError, match="tol"):
        kmeans(x, 3, tol=2.0)
    with pytest.raises(ValidationError, match="init_sample_size must be >= 3"):
        kmeans(x, 3, init_sample_size=2)
    with pytest.raises(ValidationError, match="n_init must be >= 1"):
        kmeans(x, 3, n_init=0)
