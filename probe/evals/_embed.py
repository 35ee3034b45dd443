"""Batched encoding into the shared space, shared by the evaluations."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from alignprobe.errors import ValidationError
from alignprobe.console import progress as tqdm

Projection = Callable[[torch.Tensor], torch.Tensor]


def to_space(project: Projection, feats: torch.Tensor, what: str) -> torch.Tensor:
    """Apply a projection; the result is re-normalised (cosine similarity whatever it returns)."""
    z = project(feats)
    z = torch.as_tensor(z).float().cpu()
    if z.ndim != 2 or len(z) != len(feats):
        raise ValidationError(f"{what}_to_space returned shape {tuple(z.shape)} for "
                              f"{len(feats)} embeddings; it must return (n, d)")
    return F.normalize(z, dim=-1)


def embed_texts(encoder, project: Projection, texts: Sequence[str], *, batch_size: int = 256,
                progress: bool = True, desc: str = "encoding texts") -> torch.Tensor:
    texts = list(texts)
    parts = []
    starts = range(0, len(texts), batch_size)
    for s in tqdm(starts, desc=desc, unit="batch", disable=None if progress else True,
                  leave=False):
        parts.append(to_space(project, encoder.encode(texts[s:s + batch_size]), "text"))
    if not parts:
        raise ValidationError("no texts to encode")
    return torch.cat(parts)


def embed_images(encoder, project: Projection, loaders: Sequence[Callable[[], object]], *,
                 batch_size: int = 64, progress: bool = True,
                 desc: str = "encoding images") -> torch.Tensor:
    """`loaders[i]()` returns image i (loaded lazily, a batch at a time)."""
    parts = []
    starts = range(0, len(loaders), batch_size)
    for s in tqdm(starts, desc=desc, unit="batch", disable=None if progress else True,
                  leave=False):
        images = [load() for load in loaders[s:s + batch_size]]
        parts.append(to_space(project, encoder.encode(images), "image"))
    if not parts:
        raise ValidationError("no images to encode")
    return torch.cat(parts)
