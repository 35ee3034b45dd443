"""Weighted k-nearest-neighbour classification accuracy on frozen features."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ._neighbors import iter_topk, unit_rows
from ._validation import as_chunk_size, as_ks, as_labels, as_matrix, as_positive_float, same_cols


def knn_accuracy(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    k: int | Sequence[int] = (10, 20, 100, 200),
    temperature: float = 0.07,
    *,
    chunk_size: int | None = None,
) -> dict[int, float]:
    """Top-1 accuracy of the weighted k-NN classifier of DINO (Caron et al., ICCV 2021; Wu et al. 2018).

    For each test row, take its k most cosine-similar training rows s_1..s_k;
    each votes for its class with weight exp(s_j / temperature); the class
    with the largest summed weight is the prediction.

    Args:
        train_x: (n_train, d) features.  train_y: (n_train,) integer labels.
        test_x: (n_test, d) features.    test_y: (n_test,) integer labels.
        k: one k or several (each 1 <= k <= n_train); all share one neighbour search.
        temperature: > 0; DINO uses 0.07.
        chunk_size: test rows per block (default: ~128 MiB of similarities per block).

    Returns {k: top-1 accuracy in [0, 1]} for each k. Test labels absent from
    the training labels count as errors (they cannot be predicted). Exact
    search in blocks of test rows; the n_test x n_train matrix is never formed.
    """
    xtr = as_matrix(train_x, "train_x")
    xte = as_matrix(test_x, "test_x")
    same_cols(xtr, xte, "train_x", "test_x")
    ytr = as_labels(train_y, "train_y", xtr.shape[0])
    yte = as_labels(test_y, "test_y", xte.shape[0])
    ks = as_ks(k, "k", high=xtr.shape[0], high_reason=f"there are only {xtr.shape[0]} training rows")
    temperature = as_positive_float(temperature, "temperature")
    chunk_size = as_chunk_size(chunk_size)

    classes, ytr_idx = np.unique(ytr, return_inverse=True)
    # Unseen test classes map to -1, which no prediction equals.
    pos = np.searchsorted(classes, yte).clip(max=len(classes) - 1)
    yte_idx = np.where(classes[pos] == yte, pos, -1)

    device = xtr.device
    ytr_t = torch.from_numpy(ytr_idx).to(device)
    yte_t = torch.from_numpy(yte_idx).to(device)
    n_classes = len(classes)
    correct = dict.fromkeys(ks, 0)
    for start, sims, idx in iter_topk(
        unit_rows(xte, "test_x"), unit_rows(xtr, "train_x"), ks[-1], exclude_self=False, chunk_size=chunk_size
    ):
        weights = torch.exp(sims / temperature)
        labels = ytr_t[idx]
        truth = yte_t[start : start + idx.shape[0]]
        for kk in ks:
            votes = torch.zeros(idx.shape[0], n_classes, dtype=weights.dtype, device=device)
            votes.scatter_add_(1, labels[:, :kk], weights[:, :kk])
            correct[kk] += int((votes.argmax(dim=1) == truth).sum())
    return {kk: correct[kk] / xte.shape[0] for kk in ks}
