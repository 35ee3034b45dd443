"""Zero-shot classification accuracy from image embeddings and prompt-template class embeddings."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from alignprobe.errors import ValidationError

from ._neighbors import unit_rows
from ._validation import as_chunk_size, as_int, as_ks, as_labels, as_matrix, same_cols
from .registry import register_metric
from .retrieval import recall_at_k


def build_class_embeddings(text_emb: Any, n_templates: int | None = None) -> torch.Tensor:
    """Class embeddings from prompt-template text embeddings (CLIP, Radford et al. 2021).

    Each class embedding is the L2-normalised mean of the L2-normalised
    embeddings of its prompts ("a photo of a {c}.", ...).

    Args:
        text_emb: (n_classes, n_templates, d), or (n_classes * n_templates, d)
            in class-major order (rows c * n_templates .. (c + 1) * n_templates - 1
            belong to class c) together with ``n_templates``.
        n_templates: prompts per class; required for the 2-D form, must match
            the 3-D form if given.

    Returns a float32 torch tensor (n_classes, d) with unit rows, on the input's device.
    """
    if isinstance(text_emb, torch.Tensor):
        t = text_emb.detach()
    else:
        t = torch.as_tensor(np.asarray(text_emb))
    if t.ndim == 3:
        if n_templates is not None and as_int(n_templates, "n_templates") != t.shape[1]:
            raise ValidationError(
                f"n_templates ({n_templates}) disagrees with text_emb's shape {tuple(t.shape)} (n_classes, n_templates, d)"
            )
        n_c, n_t, d = t.shape
        flat = as_matrix(t.reshape(n_c * n_t, d), "text_emb")
    elif t.ndim == 2:
        if n_templates is None:
            raise ValidationError(
                "n_templates is required for 2-D text_emb (n_classes * n_templates, d); "
                "or pass a 3-D array (n_classes, n_templates, d)"
            )
        n_t = as_int(n_templates, "n_templates")
        flat = as_matrix(t, "text_emb")
        if flat.shape[0] % n_t:
            raise ValidationError(
                f"text_emb has {flat.shape[0]} rows, not a multiple of n_templates = {n_t}"
            )
        n_c, d = flat.shape[0] // n_t, flat.shape[1]
    else:
        raise ValidationError(
            f"text_emb must be (n_classes, n_templates, d) or (n_classes * n_templates, d); got shape {tuple(t.shape)}"
        )
    mean = unit_rows(flat, "text_emb").reshape(n_c, n_t, d).mean(dim=1)
    return unit_rows(mean, "the mean of a class's prompt embeddings")


def zero_shot_accuracy(
    image_emb: Any,
    class_text_emb: Any,
    labels: Any,
    topk: int | Sequence[int] = (1, 5),
    *,
    chunk_size: int | None = None,
) -> dict[int, float]:
    """Zero-shot top-k classification accuracy (CLIP protocol).

    Each image is assigned the classes whose embedding has the highest cosine
    similarity with the image embedding; top-k accuracy is the fraction of
    images whose true class is among the k best. Ties are broken against the
    true class (a constant scorer gets no credit).

    Args:
        image_emb: (n_images, d) image embeddings in the shared space.
        class_text_emb: (n_classes, d) class embeddings, or (n_classes,
            n_templates, d) prompt embeddings, combined by ``build_class_embeddings``.
        labels: (n_images,) integer class indices in [0, n_classes).
        topk: one k or several, each <= n_classes.
        chunk_size: images per block.

    Returns {k: accuracy in [0, 1]}.
    """
    img = as_matrix(image_emb, "image_emb")
    cls_raw = class_text_emb.detach() if isinstance(class_text_emb, torch.Tensor) else np.asarray(class_text_emb)
    if cls_raw.ndim == 3:
        cls = build_class_embeddings(cls_raw)
    else:
        cls = unit_rows(as_matrix(cls_raw, "class_text_emb"), "class_text_emb")
    same_cols(img, cls, "image_emb", "class_text_emb")
    if img.device != cls.device:
        raise ValidationError(f"image_emb and class_text_emb must be on the same device; got {img.device} and {cls.device}")
    y = as_labels(labels, "labels", img.shape[0])
    n_classes = cls.shape[0]
    if y.min() < 0 or y.max() >= n_classes:
        bad = y[(y < 0) | (y >= n_classes)][0]
        raise ValidationError(f"labels must be class indices in [0, {n_classes}); got {int(bad)}")
    ks = as_ks(topk, "topk", high=n_classes, high_reason=f"there are only {n_classes} classes")
    chunk_size = as_chunk_size(chunk_size)
    img_u = unit_rows(img, "image_emb")
    return recall_at_k(lambda s, e: img_u[s:e] @ cls.T, y, ks, n_items=n_classes, chunk_size=chunk_size)


#: Zero-shot accuracies a record carries (CLIP / CLIP_benchmark report top-1 and top-5).
ZERO_SHOT_TOPK = (1, 5)


def reportable_topk(n_classes: int, topk: Sequence[int] = ZERO_SHOT_TOPK) -> tuple[int, ...]:
    """The ks of `topk` that `n_classes` classes allow (k <= n_classes): top-5 only with at least 5 classes.

    Clamping to top-min(k, C), as a pipeline might, would report a different
    metric under the top-5 name (with 3 classes, top-"5" is 1.0 by
    construction); CLIP_benchmark's ``zeroshot_classification.py`` likewise
    computes top-5 only when there are at least 5 classes.
    """
    n_classes = as_int(n_classes, "n_classes", low=1)
    return tuple(k for k in as_ks(topk, "topk", high=max(max(topk), 1)) if k <= n_classes)


@register_metric("zero_shot_top{k}", label="zero-shot top-{k}", higher_is_better=True, group="alignment",
                 description="zero-shot classification top-{k} through the aligned heads")
def zero_shot_scores(
    image_emb: Any,
    class_text_emb: Any,
    labels: Any,
    topk: Sequence[int] = ZERO_SHOT_TOPK,
    *,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """{"zero_shot_top1": ..., "zero_shot_top5": ...} for the ks of `topk` that the class count allows.

    The record-ready form of ``zero_shot_accuracy``: with fewer than 5
    classes there is no ``zero_shot_top5`` key at all (rather than a top-C
    accuracy under the top-5 name).
    """
    cls = class_text_emb.detach() if isinstance(class_text_emb, torch.Tensor) else np.asarray(class_text_emb)
    if cls.ndim not in (2, 3):
        raise ValidationError(
            f"class_text_emb must be (n_classes, d) or (n_classes, n_templates, d); got shape {tuple(cls.shape)}"
        )
    ks = reportable_topk(int(cls.shape[0]), topk)
    res = zero_shot_accuracy(image_emb, class_text_emb, labels, topk=ks, chunk_size=chunk_size)
    return {f"zero_shot_top{k}": float(res[k]) for k in ks}
