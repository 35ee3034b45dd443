"""Data-dependent initialisation of the heads' input LayerNorm bias (``norm_bias_init="center"``).

The head's LayerNorm normalises each sample across its features; it does not remove what every
sample shares. Features whose per-dimension mean dwarfs their spread across samples (a mid-depth
ViT's residual stream: DINOv2-S block 4 has median |mean| 0.024 against a median std of 0.005)
come out of it as one constant vector plus a small varying part -- 99 % of the LayerNorm output's
energy is the constant there -- so every image lands on nearly the same direction after the
Linear and the L2 normalisation, and Lion's fixed-size steps do not cancel the constant within
the epochs the recipe allows (benchmarks/README.md, "probe_diagnose_layer.py").

Setting the LayerNorm bias to minus the mean of the (affine-free) LayerNorm output over the
*training* rows centres that output at the start: the architecture, the parameters, the saved
format and the export stay the reference's; only the bias's starting value differs from its
zeros. Ridge regression gets the same effect from its intercept.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignprobe.probe.training.streaming import EmbeddingStore

#: Rows read at a time: bounded memory on a memory-mapped cache of any size.
CHUNK_ROWS = 65536

#: ``norm_bias_init="auto"`` centres a side only where the training mean holds at least this share
#: of the LayerNorm output's energy. Measured on star heads (benchmarks/README.md,
#: "probe_diagnose_layer.py", 2026-12-08): at 98.9 % (DINOv2-S block 4) centring is what makes them
#: align; at 12.6 % (pixels), 54.3 % (MiniLM captions) and 57.9 % (EfficientNet-Lite0) the zeros start
#: was as good or better on the pooled features and far better on inputs of another mean (class
#: prompts: zero-shot top-1 0.997 against 0.425; patch tokens: mIoU 1.000 against 0.394).
AUTO_CENTER_SHARE = 0.9


@torch.no_grad()
def normalized_mean(store: EmbeddingStore, rows: np.ndarray, eps: float = 1e-5) -> torch.Tensor:
    """Mean over ``rows`` of ``LayerNorm(x)`` without affine, accumulated in fp64 (``(dim,)`` fp32)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))  # sorted reads are fastest on a cache
    total = torch.zeros(store.dim, dtype=torch.float64)
    for start in range(0, len(rows), CHUNK_ROWS):
        block = store.take(rows[start:start + CHUNK_ROWS]).to(torch.float64)
        total += F.layer_norm(block, (store.dim,), eps=eps).sum(0)
    return (total / max(1, len(rows))).to(torch.float32)


@torch.no_grad()
def center_norm_bias_(head: nn.Module, store: EmbeddingStore, rows: np.ndarray,
                      min_share: float = 0.0) -> tuple[float, bool] | None:
    """Set ``head.norm.bias`` to minus the training rows' mean LayerNorm output (gain left at one),
    when that mean holds at least ``min_share`` of the output's energy.

    Returns ``(share, centred)``: the share of the LayerNorm output's energy the mean holds (the
    constant part: near 1 is the failure this fixes) and whether the bias was set; None for a head
    without LayerNorm (identity)."""
    norm = getattr(head, "norm", None)
    if not isinstance(norm, nn.LayerNorm) or len(rows) == 0:
        return None
    mean = normalized_mean(store, rows, norm.eps)
    # E||LN(x)||^2 = dim (unit variance per sample, eps aside): the constant's share is ||mean||^2 / dim.
    share = float(mean.double().pow(2).sum() / store.dim)
    if share < min_share:
        return share, False
    norm.bias.copy_(-mean.to(norm.bias.device, norm.bias.dtype))
    return share, True
