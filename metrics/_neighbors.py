"""Blocked exact cosine nearest neighbours, shared by the kNN-based metrics.

The n x n similarity matrix is never materialised: queries are processed in
row blocks, each block's similarities are reduced to its top-k at once.
"""
from __future__ import annotations

from typing import Iterator

import torch

from alignprobe.errors import ValidationError

from ._validation import auto_chunk


def unit_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """L2-normalise rows; a zero row has no direction, so cosine is undefined for it."""
    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    zero = norms.squeeze(1) == 0
    if bool(zero.any()):
        first = int(torch.nonzero(zero)[0])
        raise ValidationError(
            f"{name} has {int(zero.sum())} all-zero rows (first: row {first}); cosine similarity is "
            "undefined for them. Drop those samples or fix the features."
        )
    return x / norms


def iter_topk(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    exclude_self: bool,
    chunk_size: int | None = None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (start, values, indices) of the top-k inner products for each block of query rows.

    With `exclude_self`, `queries` and `keys` are the same rows and a sample is
    never its own neighbour (its self-similarity is set to -inf before top-k).
    values and indices have shape (block, k); order within a row is by score.
    """
    n_q, n_k = queries.shape[0], keys.shape[0]
    step = auto_chunk(n_q, n_k, chunk_size)
    keys_t = keys.T
    for start in range(0, n_q, step):
        stop = min(start + step, n_q)
        sims = queries[start:stop] @ keys_t
        if exclude_self:
            rows = torch.arange(stop - start, device=sims.device)
            sims[rows, rows + start] = float("-inf")
        vals, idx = torch.topk(sims, k, dim=1)
        yield start, vals, idx


def intersection_size(idx_a: torch.Tensor, idx_b: torch.Tensor) -> torch.Tensor:
    """Per row, |set(idx_a[i]) & set(idx_b[i])| for rows of distinct indices.

    Sorting the concatenation puts shared indices next to each other; this keeps
    memory at O(rows * k) where a pairwise comparison would need O(rows * k^2).
    """
    s, _ = torch.sort(torch.cat([idx_a, idx_b], dim=1), dim=1)
    return (s[:, 1:] == s[:, :-1]).sum(dim=1)


def intersection_entries(
    idx_a: torch.Tensor, val_a: torch.Tensor, idx_b: torch.Tensor, val_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shared neighbours of each row with both sides' values.

    Returns (row, col, value_from_a, value_from_b), one entry per (row, shared
    index); `row` counts from 0 within the block.
    """
    k = idx_a.shape[1]
    cat_idx = torch.cat([idx_a, idx_b], dim=1)
    cat_val = torch.cat([val_a, val_b], dim=1)
    s, perm = torch.sort(cat_idx, dim=1)
    sv = torch.gather(cat_val, 1, perm)
    equal = s[:, 1:] == s[:, :-1]
    row, pos = torch.nonzero(equal, as_tuple=True)
    first_from_a = perm[row, pos] < k
    v_first, v_second = sv[row, pos], sv[row, pos + 1]
    va = torch.where(first_from_a, v_first, v_second)
    vb = torch.where(first_from_a, v_second, v_first)
    return row, s[row, pos], va, vb
