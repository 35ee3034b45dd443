"""k-NN from a streamed train bank to a val set, against a naive full-matrix weighted vote."""
import numpy as np
import pytest
import torch

from alignprobe.errors import ValidationError
from alignprobe.metrics import knn_accuracy


def data(n_train=500, n_test=70, d=16, n_classes=7, noise=1.3, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((n_classes, d))
    ytr, yte = rng.integers(0, n_classes, n_train), rng.integers(0, n_classes, n_test)
    xtr = c[ytr] + noise * rng.standard_normal((n_train, d))
    xte = c[yte] + noise * rng.standard_normal((n_test, d))
    return xtr, ytr, xte, yte


def full_matrix_vote(xtr, ytr, xte, yte, k, T):
    """The whole n_test x n_train cosine matrix at once, argsort, one-hot weighted vote (DINO eval_knn)."""
    a = xte / np.linalg.norm(xte, axis=1, keepdims=True)
    b = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    sims = a @ b.T
    top = np.argsort(-sims, axis=1)[:, :k]
    n_classes = int(ytr.max()) + 1
    onehot = np.eye(n_classes)[ytr[top]]  # (n_test, k, C)
    w = np.exp(np.take_along_axis(sims, top, axis=1) / T)
    pred = (onehot * w[:, :, None]).sum(1).argmax(1)
    return float((pred == yte).mean())


class RecordingBank:
    """A read-only array-like that records the row slices read from it."""

    def __init__(self, arr):
        self.arr, self.reads = arr, []
        self.shape, self.dtype = arr.shape, arr.dtype

    def __getitem__(self, sl):
        assert isinstance(sl, slice), "the bank must be read by row slices only"
        self.reads.append((sl.start, sl.stop))
        return self.arr[sl]


@pytest.mark.parametrize("bank_chunk", [None, 1, 37, 499, 500])
def test_streamed_bank_equals_full_matrix_vote(bank_chunk):
    xtr, ytr, xte, yte = data()
    got = knn_accuracy(xtr, ytr, xte, yte, k=(1, 10, 20, 100, 200), bank_chunk=bank_chunk, chunk_size=13)
    for k in (1, 10, 20, 100, 200):
        assert got[k] == pytest.approx(full_matrix_vote(xtr, ytr, xte, yte, k, 0.07)), k


def test_defaults_are_the_sail_protocol():
    xtr, ytr, xte, yte = data(seed=3)
    got = knn_accuracy(xtr, ytr, xte, yte)
    assert set(got) == {10, 20, 100, 200}
    assert got[20] == pytest.approx(full_matrix_vote(xtr, ytr, xte, yte, 20, 0.07))


def test_fp16_memmap_bank_is_read_chunk_by_chunk(tmp_path):
    xtr, ytr, xte, yte = data(n_train=400, seed=1)
    path = tmp_path / "bank.f16"
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=xtr.shape)
    mm[:] = xtr
    mm.flush()
    bank = RecordingBank(np.memmap(path, dtype=np.float16, mode="r", shape=xtr.shape))
    got = knn_accuracy(bank, ytr, xte, yte, k=(10, 20), bank_chunk=64)
    assert max(stop - start for start, stop in bank.reads) <= 64
    assert sorted(bank.reads) == [(s, min(s + 64, 400)) for s in range(0, 400, 64)]
    ref = xtr.astype(np.float16).astype(np.float64)  # what the bank really holds
    for k in (10, 20):
        assert got[k] == pytest.approx(full_matrix_vote(ref, ytr, xte, yte, k, 0.07))


def test_torch_bank_and_device_argument():
    xtr, ytr, xte, yte = data(seed=2)
    ref = knn_accuracy(xtr, ytr, xte, yte, k=10)
    assert knn_accuracy(torch.from_numpy(xtr).half(), ytr, xte, yte, k=10, device="cpu", bank_chunk=50)[10] == \
        pytest.approx(full_matrix_vote(torch.from_numpy(xtr).half().double().numpy(), ytr, xte, yte, 10, 0.07))
    assert knn_accuracy(torch.from_numpy(xtr), ytr, torch.from_numpy(xte), yte, k=10, bank_chunk=11) == ref


def test_bad_bank_chunks_are_named():
    xtr, ytr, xte, yte = data(n_train=100)
    xtr[70] = 0.0
    with pytest.raises(ValidationError, match=r"train_x rows 64:96 has 1 all-zero rows"):
        knn_accuracy(xtr, ytr, xte, yte, k=5, bank_chunk=32)
    xtr[70] = np.nan
    with pytest.raises(ValidationError, match="train_x rows 64:96 must contain only finite"):
        knn_accuracy(xtr, ytr, xte, yte, k=5, bank_chunk=32)
    with pytest.raises(ValidationError, match="train_x must be 2-D"):
        knn_accuracy(xtr[:, 0], ytr, xte, yte, k=5)
    with pytest.raises(ValidationError, match="bank_chunk must be >= 1"):
        knn_accuracy(xtr, ytr, xte, yte, k=5, bank_chunk=0)


class CacheLike:
    """The embedding cache's interface: `shape` and `rows(index) -> float32`, no numpy protocol."""

    def __init__(self, arr):
        self.arr, self.shape, self.requests = arr, arr.shape, []

    def rows(self, index):
        self.requests.append(index)
        return np.asarray(self.arr[index], dtype=np.float32)


def test_cache_entry_bank_with_a_row_subset():
    xtr, ytr, xte, yte = data(n_train=300, seed=4)
    keep = np.flatnonzero(np.arange(300) % 7 != 3)  # e.g. the images that decoded
    bank = CacheLike(xtr.astype(np.float16))
    got = knn_accuracy(bank, ytr[keep], xte, yte, k=(10, 20), bank_chunk=40, train_rows=keep)
    ref = xtr.astype(np.float16).astype(np.float64)[keep]
    for k in (10, 20):
        assert got[k] == pytest.approx(full_matrix_vote(ref, ytr[keep], xte, yte, k, 0.07))
    assert all(len(r) <= 40 for r in bank.requests) and sum(len(r) for r in bank.requests) == len(keep)
    mm_got = knn_accuracy(xtr, ytr[keep], xte, yte, k=(10, 20), train_rows=keep, bank_chunk=33)
    assert mm_got == knn_accuracy(xtr[keep], ytr[keep], xte, yte, k=(10, 20))
    with pytest.raises(ValidationError, match="train_rows must be row indices"):
        knn_accuracy(xtr, ytr, xte, yte, k=5, train_rows=np.array([0, 300]))
    with pytest.raises(ValidationError, match="train_y must have one label per row"):
        knn_accuracy(xtr, ytr, xte, yte, k=5, train_rows=keep)
