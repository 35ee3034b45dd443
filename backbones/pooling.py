"""Poolers: token states in, one vector per item out. Pure functions on tensors, run in float32.

Vision token layout (transformers and timm ViTs): `[prefix tokens..., patch tokens...]`,
where the prefix is the CLS token (position 0) followed by any register tokens.
- `cls`: the CLS token.
- `mean`: the mean of the patch tokens only (CLS and registers excluded).
- `concat`: CLS ++ patch mean, 2 x hidden wide (SAIL's choice for DINOv2).
- `pooler`: the model's own pooled output (CLIP/SigLIP heads, timm's `forward_head`).
A 4-D feature map (CNNs) supports `mean` (spatial average) and `pooler`.

Text (hidden states `(n, T, d)` and a 0/1 attention mask `(n, T)`):
- `mean`: mask-weighted mean over tokens.
- `cls`: the first non-padding token of each row.
- `last`: the last non-padding token of each row, whatever the padding side.
"""

from __future__ import annotations

import torch

from alignprobe.errors import ValidationError


def pool_vision(
    tokens: torch.Tensor,
    pooling: str,
    *,
    num_prefix_tokens: int,
    has_cls: bool | None = None,
    pooler_output: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pool `(n, T, d)` tokens (or an `(n, C, H, W)` map) into `(n, d)` (`(n, 2d)` for concat)."""
    if pooling == "pooler":
        if pooler_output is None:
            raise ValidationError(
                "pooling 'pooler' needs a model with a pooled output; use 'cls', 'mean' or 'concat'"
            )
        return pooler_output.float().flatten(1)
    tokens = tokens.float()
    if tokens.ndim == 4:
        if pooling == "mean":
            return tokens.mean(dim=(2, 3))
        raise ValidationError(
            f"pooling {pooling!r} needs token outputs, but this model returns a feature map; use "
            "'mean'"
        )
    if tokens.ndim != 3:
        raise ValidationError(
            f"expected token states of shape (n, tokens, dim), got {tuple(tokens.shape)}"
        )
    if has_cls is None:
        has_cls = num_prefix_tokens >= 1
    if pooling in ("cls", "concat") and not has_cls:
        raise ValidationError(
            f"pooling {pooling!r} needs a CLS token, and this model has none; use 'mean'"
        )
    patches = tokens[:, num_prefix_tokens:]
    if pooling in ("mean", "concat") and patches.shape[1] == 0:
        raise ValidationError("no patch tokens left after removing the prefix tokens")
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "mean":
        return patches.mean(dim=1)
    if pooling == "concat":
        return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=-1)
    raise ValidationError(f"unknown vision pooling {pooling!r}; choose cls, mean, concat or pooler")


def _row_index(attention_mask: torch.Tensor, last: bool) -> torch.Tensor:
    mask = attention_mask.to(torch.int64)
    if last:
        return mask.shape[1] - 1 - mask.flip(dims=[1]).argmax(dim=1)
    return mask.argmax(dim=1)  # first position holding the maximum (1)


def pool_text(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool `(n, T, d)` hidden states with an `(n, T)` 0/1 mask into `(n, d)`."""
    if hidden.ndim != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValidationError(
            f"expected hidden (n, T, d) and mask (n, T), got {tuple(hidden.shape)} and "
            f"{tuple(attention_mask.shape)}"
        )
    hidden = hidden.float()
    if pooling == "mean":
        mask = attention_mask.to(hidden.device, torch.float32).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    if pooling in ("cls", "last"):
        idx = _row_index(attention_mask.to(hidden.device), last=pooling == "last")
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    raise ValidationError(
        f"unknown text pooling {pooling!r} for hidden states; choose mean, cls or last"
    )
