"""Weighted k-nearest-neighbour classification accuracy on frozen features.

The protocol behind SAIL's clustering axis (Zhang et al., CVPR 2025): a
DINO-style weighted k-NN vote from an ImageNet-train bank to ImageNet-val,
cosine similarity on L2-normalised features, k in (10, 20, 100, 200) and
T = 0.07 (SAIL ``evaluation/eval_knn_aimv2.py`` / ``eval_knn_ijepa.py``
``knn_classifier``, itself DINO's ``eval_knn.py``).

The bank is streamed: it is read in row chunks (a ``np.memmap`` fp16 cache of
1.28M x 2,048 is never converted to fp32 as a whole), each chunk is
normalised on the compute device and merged into a running top-k of every
query. Memory is O(n_query * k_max + chunk * d + block * chunk).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from alignprobe.errors import ValidationError

from ._neighbors import unit_rows
from ._validation import as_chunk_size, as_ks, as_labels, as_matrix, as_positive_float, auto_chunk
from .registry import register_metric

#: SAIL evaluation/eval_knn_*.py `--nb_knn` default and `--temperature` default.
DEFAULT_KNN_K = (10, 20, 100, 200)
DEFAULT_KNN_TEMPERATURE = 0.07


def _bank_shape(x: Any, name: str) -> tuple[int, int]:
    """Shape of a 2-D numeric bank, checked without reading (or copying) its values."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is not None and dtype is None and callable(getattr(x, "rows", None)):
        dtype = np.float32  # an embedding-cache entry: `rows` hands out float32
    if shape is None or dtype is None:
        x = np.asarray(x)
        shape, dtype = x.shape, x.dtype
    if len(shape) != 2:
        raise ValidationError(f"{name} must be 2-D (n_samples, n_features); got shape {tuple(shape)}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValidationError(f"{name} must not be empty; got shape {tuple(shape)}")
    if isinstance(dtype, torch.dtype):
        ok = dtype.is_floating_point or not (dtype.is_complex or dtype == torch.bool)
    else:
        ok = np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)
    if not ok:
        raise ValidationError(f"{name} must hold real numbers; got dtype {dtype}")
    return int(shape[0]), int(shape[1])


def _bank_chunk(x: Any, rows: Any, device: torch.device, label: str) -> torch.Tensor:
    """Bank rows `rows` (a slice or an index array) as unit-norm float32 rows on `device`.

    Only these rows are read and copied: a memmap slice, a fancy-indexed
    memmap gather, or an embedding-cache entry's ``rows(...)``.
    """
    if callable(getattr(x, "rows", None)) and not isinstance(x, (np.ndarray, torch.Tensor)):
        part = x.rows(rows)
    else:
        part = x[rows] if isinstance(rows, slice) or not isinstance(x, torch.Tensor) else x[torch.as_tensor(rows)]
    if isinstance(part, torch.Tensor):
        part = part.to(device)
    else:
        # One chunk-sized float32 copy: a read-only memmap slice cannot back a tensor safely.
        part = torch.from_numpy(np.array(part, dtype=np.float32)).to(device)
    t = as_matrix(part, label)
    return unit_rows(t, label)


@register_metric("knn_top1@{k}", label="k-NN top-1 @{k}", higher_is_better=True, group="clustering",
                 description="weighted k-NN ({k} neighbours) top-1 accuracy", reference="DINO, Caron et al. 2021")
def knn_accuracy(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    k: int | Sequence[int] = DEFAULT_KNN_K,
    temperature: float = DEFAULT_KNN_TEMPERATURE,
    *,
    chunk_size: int | None = None,
    bank_chunk: int | None = None,
    device: str | torch.device | None = None,
    train_rows: Any = None,
) -> dict[int, float]:
    """Top-1 accuracy of the weighted k-NN classifier of DINO (Caron et al., ICCV 2021; Wu et al. 2018).

    For each test row, take its k most cosine-similar training rows s_1..s_k;
    each votes for its class with weight exp(s_j / temperature); the class
    with the largest summed weight is the prediction. Defaults follow SAIL
    ``evaluation/eval_knn_*.py``: k in (10, 20, 100, 200), T = 0.07.

    Args:
        train_x: (n_bank, d) bank features: numpy array, ``np.memmap`` (any
            float dtype, read chunk by chunk), torch tensor, or an embedding-cache
            entry (anything with ``shape`` and ``rows(index) -> float32 array``).
        train_y: (n_train,) integer labels of the bank rows used (all, or ``train_rows``).
        test_x: (n_test, d) query features.    test_y: (n_test,) integer labels.
        k: one k or several (each 1 <= k <= n_train); all share one neighbour search.
        temperature: > 0; DINO and SAIL use 0.07.
        chunk_size: test rows per similarity block (default: ~128 MiB of similarities per block).
        bank_chunk: bank rows read, converted to float32 and normalised at a
            time (default: ~128 MiB of float32 per chunk).
        device: where to compute (default: test_x's device for a tensor, else CPU);
            bank chunks are moved there one at a time.
        train_rows: optional (n_train,) bank row indices to use (e.g. the images
            that decoded); read chunk by chunk like the rest. Default: every row.

    Returns {k: top-1 accuracy in [0, 1]} for each k. Test labels absent from
    the training labels count as errors (they cannot be predicted). Exact
    search; the n_test x n_train matrix is never formed.
    """
    n_bank, d = _bank_shape(train_x, "train_x")
    if train_rows is not None:
        train_rows = as_labels(train_rows, "train_rows")
        if train_rows.min() < 0 or train_rows.max() >= n_bank:
            raise ValidationError(f"train_rows must be row indices in [0, {n_bank}); got {int(train_rows.max())}")
    n_train = n_bank if train_rows is None else len(train_rows)
    if device is None:
        device = test_x.device if isinstance(test_x, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    xte = as_matrix(test_x, "test_x").to(device)
    if xte.shape[1] != d:
        raise ValidationError(
            f"train_x and test_x must have the same feature dimension; got {d} and {xte.shape[1]}"
        )
    ytr = as_labels(train_y, "train_y", n_train)
    yte = as_labels(test_y, "test_y", xte.shape[0])
    ks = as_ks(k, "k", high=n_train, high_reason=f"there are only {n_train} training rows")
    temperature = as_positive_float(temperature, "temperature")
    chunk_size = as_chunk_size(chunk_size)
    bank_chunk = as_chunk_size(bank_chunk, "bank_chunk")
    bank_step = auto_chunk(n_train, d, bank_chunk)

    classes, ytr_idx = np.unique(ytr, return_inverse=True)
    # Unseen test classes map to -1, which no prediction equals.
    pos = np.searchsorted(classes, yte).clip(max=len(classes) - 1)
    yte_idx = np.where(classes[pos] == yte, pos, -1)

    queries = unit_rows(xte, "test_x")
    best_val, best_idx = streaming_top_k(queries, train_x, ks[-1], train_rows=train_rows, n_train=n_train,
                                         bank_step=bank_step, chunk_size=chunk_size)
    return weighted_vote_accuracy(best_val, best_idx, ytr_idx, yte_idx, len(classes), ks, temperature,
                                  chunk_size=chunk_size)


def streaming_top_k(queries: torch.Tensor, bank: Any, k: int, *, train_rows: Any = None, n_train: int,
                    bank_step: int, chunk_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)``, each ``(n_queries, min(k, n_train))``: every unit query's ``k`` most
    cosine-similar bank rows, best first, found by streaming the bank ``bank_step`` rows at a time
    and merging each chunk's top-k into a running one (the full similarity matrix is never formed).
    ``indices`` count rows of the bank as used (of ``train_rows`` when given)."""
    device = queries.device
    n_test = queries.shape[0]
    best_val = torch.full((n_test, 0), float("-inf"), device=device)
    best_idx = torch.zeros((n_test, 0), dtype=torch.long, device=device)
    for b_start in range(0, n_train, bank_step):
        b_stop = min(b_start + bank_step, n_train)
        sel = slice(b_start, b_stop) if train_rows is None else train_rows[b_start:b_stop]
        keys_t = _bank_chunk(bank, sel, device, f"train_x rows {b_start}:{b_stop}").T
        kk = min(k, b_stop - b_start)
        step = auto_chunk(n_test, b_stop - b_start, chunk_size)
        vals, idx = [], []
        for q_start in range(0, n_test, step):
            q_stop = min(q_start + step, n_test)
            v, i = torch.topk(queries[q_start:q_stop] @ keys_t, kk, dim=1)
            # Merge with the running top-k of these queries (already sorted, best first).
            v = torch.cat([best_val[q_start:q_stop], v], dim=1)
            i = torch.cat([best_idx[q_start:q_stop], i + b_start], dim=1)
            v, order = torch.topk(v, min(k, v.shape[1]), dim=1)
            vals.append(v)
            idx.append(torch.gather(i, 1, order))
        best_val, best_idx = torch.cat(vals), torch.cat(idx)
    return best_val, best_idx


def weighted_vote_accuracy(best_val: torch.Tensor, best_idx: torch.Tensor, train_class: np.ndarray,
                           test_class: np.ndarray, n_classes: int, ks: Sequence[int], temperature: float, *,
                           chunk_size: int | None = None) -> dict[int, float]:
    """DINO's weighted vote: each of a test row's first ``k`` neighbours votes for its class
    (``train_class``, indices into ``0..n_classes-1``) with weight ``exp(s / temperature)``;
    ``{k: fraction of test rows whose top-voted class is test_class}`` (-1 never matches)."""
    device = best_val.device
    n_test = best_val.shape[0]
    ytr_t = torch.from_numpy(train_class).to(device)
    yte_t = torch.from_numpy(test_class).to(device)
    correct = dict.fromkeys(ks, 0)
    step = auto_chunk(n_test, max(n_classes, max(ks)), chunk_size)
    for start in range(0, n_test, step):
        stop = min(start + step, n_test)
        weights = torch.exp(best_val[start:stop] / temperature)
        labels = ytr_t[best_idx[start:stop]]
        truth = yte_t[start:stop]
        for kk in ks:
            votes = torch.zeros(stop - start, n_classes, dtype=weights.dtype, device=device)
            votes.scatter_add_(1, labels[:, :kk], weights[:, :kk])
            correct[kk] += int((votes.argmax(dim=1) == truth).sum())
    return {kk: correct[kk] / n_test for kk in ks}
