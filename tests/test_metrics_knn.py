"""Weighted k-NN accuracy against a naive per-sample loop."""
import numpy as np
import pytest
import torch

from alignprobe.errors import ValidationError
from alignprobe.metrics import knn_accuracy


def data(n_train=300, n_test=80, d=12, k=6, noise=1.2, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((k, d))
    ytr, yte = rng.integers(0, k, n_train), rng.integers(0, k, n_test)
    xtr = c[ytr] + noise * rng.standard_normal((n_train, d))
    xte = c[yte] + noise * rng.standard_normal((n_test, d))
    return xtr, ytr, xte, yte


def naive(xtr, ytr, xte, yte, k, T):
    correct = 0
    for x, y in zip(xte, yte):
        sims = [float(x @ t / (np.linalg.norm(x) * np.linalg.norm(t))) for t in xtr]
        order = sorted(range(len(xtr)), key=lambda j: -sims[j])[:k]
        votes = {}
        for j in order:
            votes[ytr[j]] = votes.get(ytr[j], 0.0) + np.exp(sims[j] / T)
        correct += max(votes, key=votes.get) == y
    return correct / len(xte)


@pytest.mark.parametrize("T", [0.07, 0.5])
def test_matches_naive_loop(T):
    xtr, ytr, xte, yte = data()
    got = knn_accuracy(xtr, ytr, xte, yte, k=(1, 5, 20, 300), temperature=T)
    for k in (1, 5, 20, 300):
        assert got[k] == pytest.approx(naive(xtr, ytr, xte, yte, k, T)), k
    assert set(got) == {1, 5, 20, 300}


def test_blocks_labels_and_torch_inputs():
    xtr, ytr, xte, yte = data(seed=1)
    ref = knn_accuracy(xtr, ytr, xte, yte, k=10)
    assert knn_accuracy(xtr, ytr, xte, yte, k=10, chunk_size=7) == ref
    # arbitrary label values, torch tensors
    got = knn_accuracy(torch.from_numpy(xtr), torch.from_numpy(ytr * 7 - 3), torch.from_numpy(xte),
                       torch.from_numpy(yte * 7 - 3), k=10)
    assert got == ref


def test_unseen_test_classes_count_as_errors():
    xtr, ytr, xte, yte = data(seed=2)
    base = knn_accuracy(xtr, ytr, xte, yte, k=5)[5]
    yte2 = yte.copy()
    yte2[:10] = 99
    got = knn_accuracy(xtr, ytr, xte, yte2, k=5)[5]
    assert got <= base and 0 <= got <= 1


def test_separable_is_perfect():
    xtr, ytr, xte, yte = data(noise=0.01)
    assert knn_accuracy(xtr, ytr, xte, yte, k=(10, 20)) == {10: 1.0, 20: 1.0}


def test_errors():
    xtr, ytr, xte, yte = data(n_train=50)
    with pytest.raises(ValidationError, match="k must be <= 50"):
        knn_accuracy(xtr, ytr, xte, yte, k=(10, 200))
    with pytest.raises(ValidationError, match="temperature must be a positive"):
        knn_accuracy(xtr, ytr, xte, yte, k=5, temperature=0)
    with pytest.raises(ValidationError, match="same feature dimension"):
        knn_accuracy(xtr, ytr, xte[:, :5], yte, k=5)
    with pytest.raises(ValidationError, match="train_y must have one label per row"):
        knn_accuracy(xtr, ytr[:-1], xte, yte, k=5)
    bad = xte.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValidationError, match="test_x must contain only finite"):
        knn_accuracy(xtr, ytr, bad, yte, k=5)
    with pytest.raises(ValidationError, match="k must be an integer"):
        knn_accuracy(xtr, ytr, xte, yte, k=2.5)
