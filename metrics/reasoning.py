"""Compositional-reasoning scores from small similarity blocks: Winoground and MMVP-VLM.

Both follow SAIL's evaluation code (lezhang7/SAIL):

Winoground (``evaluation/winoground.py``; Thrush et al., CVPR 2022). Each example has two
captions and two images; ``s[c, i]`` is the similarity of caption ``c`` and image ``i``:

- text score: ``s[0,0] > s[1,0] and s[1,1] > s[0,1]`` (each image prefers its own caption);
- image score: ``s[0,0] > s[0,1] and s[1,1] > s[1,0]`` (each caption prefers its own image);
- group score: both; each reported as the fraction of examples (strict ``>``: a tie is wrong).

MMVP-VLM (``evaluation/mmvp.py``; Tong et al., CVPR 2024). Each pair has two statements and
two images; each statement is scored against the two images with a softmax, predicts image 0
when its probability exceeds 0.5 (for any positive logit scale: when ``s[j,0] > s[j,1]``;
a tie predicts image 1, as ``> 0.5`` does in the reference), and a pair is correct when both
statements pick their own image. Accuracy is per category, and the overall score is the plain
mean of the category accuracies. The reference assigns categories by position (15 pairs each,
in a fixed list) and divides by ``pairs // 9``; here the category comes from the data and each
category is divided by its own pair count, which is the same on the official 150-pair file.
The reference reports percentages; these functions return fractions.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from alignprobe.errors import ValidationError

from .registry import register_metric


def _blocks(similarities: Any, name: str) -> np.ndarray:
    if hasattr(similarities, "detach"):
        similarities = similarities.detach().cpu().numpy()
    s = np.asarray(similarities, dtype=np.float64)
    if s.ndim != 3 or s.shape[1:] != (2, 2):
        raise ValidationError(f"{name} must have shape (n, 2, 2), got {s.shape}")
    if len(s) == 0:
        raise ValidationError(f"{name} is empty; give at least one example")
    if not np.isfinite(s).all():
        raise ValidationError(f"{name} holds NaN or Inf similarities")
    return s


@register_metric("winoground_text", label="Winoground text", higher_is_better=True, group="alignment",
                 description="Winoground text score (fraction of examples)", reference="Thrush et al. CVPR 2022")
@register_metric("winoground_image", label="Winoground image", higher_is_better=True, group="alignment",
                 description="Winoground image score (fraction of examples)", reference="Thrush et al. CVPR 2022")
@register_metric("winoground_group", label="Winoground group", higher_is_better=True, group="alignment",
                 description="Winoground group score (fraction of examples)", reference="Thrush et al. CVPR 2022")
def winoground_scores(similarities: Any) -> dict:
    """Text, image and group scores from ``(n, 2, 2)`` blocks ``s[example, caption, image]``.

    Returns ``{"text", "image", "group"}`` as fractions of examples, plus the per-example
    boolean arrays ``text_correct``, ``image_correct``, ``group_correct``.
    """
    s = _blocks(similarities, "similarities")
    text = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    image = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    group = text & image
    return {
        "text": float(text.mean()),
        "image": float(image.mean()),
        "group": float(group.mean()),
        "text_correct": text,
        "image_correct": image,
        "group_correct": group,
    }


@register_metric("mmvp", label="MMVP-VLM", higher_is_better=True, group="alignment",
                 description="MMVP-VLM accuracy, mean over categories", reference="Tong et al. CVPR 2024")
@register_metric("mmvp_{name}", label="MMVP-VLM {name}", higher_is_better=True, group="alignment",
                 description="MMVP-VLM accuracy on the category {name}", reference="Tong et al. CVPR 2024")
def mmvp_scores(similarities: Any, targets: Any, categories: Sequence[str]) -> dict:
    """Per-category pair accuracy and their mean for MMVP-VLM.

    ``similarities``: ``(n_pairs, 2, 2)`` blocks ``s[pair, statement, image]``;
    ``targets``: ``(n_pairs, 2)`` the image (0 or 1) each statement describes (in the official
    data: 0 for the odd question id); ``categories``: one name per pair.
    Returns ``{"mean", "per_category": {name: accuracy} (first-seen order), "pair_correct",
    "predictions" (n_pairs, 2)}``.
    """
    s = _blocks(similarities, "similarities")
    t = np.asarray(targets.detach().cpu().numpy() if hasattr(targets, "detach") else targets)
    if t.shape != (len(s), 2) or not np.isin(t, (0, 1)).all():
        raise ValidationError(
            f"targets must be an ({len(s)}, 2) array of image indices 0/1, got shape {t.shape}")
    cats = [str(c) for c in categories]
    if len(cats) != len(s):
        raise ValidationError(f"{len(cats)} categories for {len(s)} pairs; give one per pair")
    # softmax over the two images, image 0 when p0 > 0.5, i.e. s[:, j, 0] > s[:, j, 1]
    pred = np.where(s[:, :, 0] > s[:, :, 1], 0, 1)
    correct = (pred == t).all(axis=1)
    per_category: dict[str, float] = {}
    for c in dict.fromkeys(cats):
        members = np.array([x == c for x in cats])
        per_category[c] = float(correct[members].mean())
    return {
        "mean": float(np.mean(list(per_category.values()))),
        "per_category": per_category,
        "pair_correct": correct,
        "predictions": pred,
    }
