"""Evaluation of trained alignment heads: zero-shot classification and image-text retrieval.

The same metric names as the probe records of `alignprobe run`
(``zero_shot_top1``, ``zero_shot_top5``, ``i2t_r1/5/10``, ``t2i_r1/5/10``), so
probe and SAIL results sit side by side in one report. The metrics themselves
are the pure functions of `alignprobe.metrics`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from alignprobe.errors import DataError
from alignprobe import metrics as M

RETRIEVAL_KS = (1, 5, 10)
ZERO_SHOT_KS = (1, 5)


@dataclass
class ZeroShotData:
    """A labelled image set and its class prompts, as embeddings of the frozen encoders.

    ``prompts`` is ``(n_classes * n_templates, d_txt)``, class-major (the
    order of `alignprobe.probe.data.datasets.class_prompts`).
    """

    images: Any
    labels: np.ndarray
    prompts: Any
    n_classes: int
    name: str = "labelled"


@dataclass
class RetrievalData:
    """A captioned image set: ``caption_image[j]`` is the image row of caption ``j``."""

    images: Any
    captions: Any
    caption_image: np.ndarray
    name: str = "retrieval"


def half_dtype(precision: str) -> torch.dtype | None:
    """The half-precision dtype of a ``precision`` setting (None for fp32)."""
    return None if precision == "fp32" else torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast on the device (a no-op for fp32)."""
    dtype = half_dtype(precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def project(head: torch.nn.Module, x, device: torch.device, batch_size: int = 8192,
            precision: str = "fp32") -> np.ndarray:
    """``(n, d_in)`` embeddings through ``head`` -> L2-normalised ``(n, d_out)`` fp32 numpy."""
    if torch.is_tensor(x):
        x = x.detach().cpu()
    n = len(x)
    out = None
    for start in range(0, n, batch_size):
        # a memory-mapped cache entry is read one block at a time, never whole
        block = x.rows(slice(start, start + batch_size)) if hasattr(x, "manifest") else x[start : start + batch_size]
        block = block if torch.is_tensor(block) else torch.from_numpy(np.asarray(block, dtype=np.float32))
        with autocast(device, precision):
            z = head(block.to(device=device, dtype=torch.float32))
        # normalised in fp32: a bf16 norm would perturb cosine scores
        z = F.normalize(z.float(), dim=-1).cpu().numpy()
        if out is None:
            out = np.empty((n, z.shape[1]), dtype=np.float32)
        out[start : start + len(z)] = z
    return out


def _value(result: dict, k: int) -> float:
    """Accept both ``{k: v}`` and ``{"top{k}": v}`` forms of a top-k result."""
    for key in (k, str(k), f"top{k}", f"r{k}", f"R@{k}"):
        if key in result:
            return float(result[key])
    raise KeyError(k)


def zero_shot_metrics(image_z: np.ndarray, prompt_z: np.ndarray, labels: np.ndarray, n_classes: int) -> dict:
    """Top-1/top-5 zero-shot accuracy from projected images and class prompts."""
    if len(prompt_z) % n_classes:
        raise DataError(f"{len(prompt_z)} prompts are not a whole number of templates for {n_classes} classes")
    class_emb = prompt_z.reshape(n_classes, -1, prompt_z.shape[-1])
    ks = tuple(k for k in ZERO_SHOT_KS if k <= n_classes)
    res = M.zero_shot_accuracy(image_z, class_emb, np.asarray(labels), topk=ks)
    return {f"zero_shot_top{k}": _value(res, k) for k in ks}


def retrieval_scores(image_z: np.ndarray, caption_z: np.ndarray, caption_image: np.ndarray) -> dict:
    """I2T and T2I recall@1/5/10 (images without a caption are left out)."""
    caption_image = np.asarray(caption_image, dtype=np.int64)
    has_caption = np.zeros(len(image_z), dtype=bool)
    has_caption[caption_image] = True
    remap = np.cumsum(has_caption) - 1
    image_z = image_z[has_caption]
    ks = tuple(k for k in RETRIEVAL_KS if k <= min(len(image_z), len(caption_z)))
    res = M.retrieval_metrics(image_z, caption_z, remap[caption_image], ks=ks)
    out = {}
    for direction in ("i2t", "t2i"):
        part = res.get(direction) if isinstance(res, dict) else None
        for k in ks:
            if isinstance(part, dict):
                out[f"{direction}_r{k}"] = _value(part, k)
            else:  # a flat {"i2t_r1": ...} form
                out[f"{direction}_r{k}"] = float(res[f"{direction}_r{k}"])
    return out


def evaluate(transform_image: Callable[[Any], np.ndarray], transform_text: Callable[[Any], np.ndarray],
             zero_shot: ZeroShotData | None = None, retrieval: RetrievalData | None = None) -> dict[str, float]:
    """Zero-shot and retrieval metrics through the given projections (None sets are skipped)."""
    out: dict[str, float] = {}
    if zero_shot is not None:
        out.update(zero_shot_metrics(transform_image(zero_shot.images), transform_text(zero_shot.prompts),
                                     zero_shot.labels, zero_shot.n_classes))
    if retrieval is not None:
        out.update(retrieval_scores(transform_image(retrieval.images), transform_text(retrieval.captions),
                                    retrieval.caption_image))
    return out
