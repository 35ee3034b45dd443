"""Semantic-segmentation scores: mIoU, per-class IoU and pixel accuracy over a whole set.

Definitions follow mmsegmentation's ``IoUMetric`` (``mmseg/evaluation/metrics/iou_metric.py``),
which SAIL's open-vocabulary segmentation evaluation uses (lezhang7/SAIL
``evaluation/seg_configs/base_config.py``: ``test_evaluator = dict(type='IoUMetric')``):

- pixels whose target is ``ignore_index`` are dropped from prediction and target alike;
- per class ``c``: intersection ``I_c`` = pixels predicted ``c`` whose target is ``c``,
  union ``U_c`` = predicted ``c`` + target ``c`` - ``I_c``, each **summed over the whole set**
  before dividing (not averaged per image);
- ``IoU_c = I_c / U_c``; a class with ``U_c = 0`` (neither predicted nor present anywhere) has
  no IoU (NaN) and is left out of the mean: ``mIoU`` is the mean over the classes that occur
  (in the targets or the predictions);
- ``pixel_acc`` (mmseg's ``aAcc``) = sum of ``I_c`` / number of non-ignored pixels.

Everything comes from one ``(num_classes, num_classes)`` confusion matrix, so a set can be
streamed image by image (`SegmentationAccumulator`) with the same result.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from alignprobe.errors import ValidationError

from .registry import register_metric


def _as_label_map(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValidationError(
            f"{name} must hold integer class indices, got dtype {arr.dtype}; take the argmax of "
            "the scores first")
    return arr


class SegmentationAccumulator:
    """Streams `(pred, target)` label maps into one confusion matrix; `scores()` at the end."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
                or num_classes < 1:
            raise ValidationError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        # confusion[t, p]: pixels of target class t predicted as class p
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> "SegmentationAccumulator":
        """Add one label map (or a batch of them with the same shape)."""
        p = _as_label_map(pred, "pred")
        t = _as_label_map(target, "target")
        if p.shape != t.shape:
            raise ValidationError(
                f"pred and target must have the same shape, got {p.shape} and {t.shape}; upsample "
                "the prediction to the label map's size")
        keep = t != self.ignore_index if self.ignore_index is not None else np.ones(t.shape, bool)
        p, t = p[keep].astype(np.int64), t[keep].astype(np.int64)
        k = self.num_classes
        for arr, name in ((t, "target"), (p, "pred")):
            bad = (arr < 0) | (arr >= k)
            if bad.any():
                raise ValidationError(
                    f"{name} holds class index {int(arr[bad][0])}, outside 0..{k - 1} "
                    f"(num_classes={k}, ignore_index={self.ignore_index}); pass the right "
                    "num_classes or mark unlabelled pixels with the ignore index")
        self.confusion += np.bincount(t * k + p, minlength=k * k).reshape(k, k)
        return self

    def scores(self) -> dict:
        """``{"miou", "pixel_acc", "iou": (num_classes,) with NaN for absent classes,
        "intersection", "union", "target_area", "pred_area", "pixels"}``."""
        cm = self.confusion
        pixels = int(cm.sum())
        if pixels == 0:
            raise ValidationError(
                "no labelled pixels to score: every target pixel is the ignore index (or nothing "
                "was added)")
        inter = np.diag(cm).astype(np.int64)
        target_area = cm.sum(axis=1)
        pred_area = cm.sum(axis=0)
        union = target_area + pred_area - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
        return {
            "miou": float(np.nanmean(iou)),
            "pixel_acc": float(inter.sum() / pixels),
            "iou": iou,
            "intersection": inter,
            "union": union,
            "target_area": target_area,
            "pred_area": pred_area,
            "pixels": pixels,
        }


@register_metric("miou", label="mIoU", higher_is_better=True, group="alignment",
                 description="open-vocabulary segmentation mIoU")
@register_metric("pixel_acc", label="pixel acc.", higher_is_better=True, group="alignment",
                 description="open-vocabulary segmentation pixel accuracy")
@register_metric("iou_{name}", label="IoU {name}", higher_is_better=True, group="alignment",
                 description="open-vocabulary segmentation IoU of the class {name}")
def segmentation_scores(pred: Any, target: Any, num_classes: int,
                        ignore_index: int | None = 255) -> dict:
    """mIoU, per-class IoU and pixel accuracy of predicted label maps against targets.

    ``pred`` / ``target``: one ``(H, W)`` integer map, a stack ``(n, H, W)``, or equal-length
    sequences of maps of any sizes (each pred the size of its target). Returns the dict of
    `SegmentationAccumulator.scores` (``miou``, ``pixel_acc``, ``iou`` per class, the areas).
    """
    acc = SegmentationAccumulator(num_classes, ignore_index)
    preds, targets = _pairs(pred, target)
    for p, t in zip(preds, targets):
        acc.update(p, t)
    return acc.scores()


def _pairs(pred: Any, target: Any) -> tuple[list, list]:
    def seq(x: Any) -> list | None:
        if isinstance(x, (list, tuple)):
            return list(x)
        return None

    ps, ts = seq(pred), seq(target)
    if ps is None and ts is None:
        return [pred], [target]
    if ps is None or ts is None:
        raise ValidationError("pred and target must both be arrays or both be sequences of maps")
    if len(ps) != len(ts):
        raise ValidationError(f"{len(ps)} predicted maps for {len(ts)} targets")
    if not ps:
        raise ValidationError("pred and target are empty; give at least one label map")
    return ps, ts


def iou_columns(iou: Iterable[float], class_names: list[str]) -> dict[str, float]:
    """``{"iou_<class>": value}`` for the classes that occur (NaN ones are left out)."""
    out = {}
    for name, value in zip(class_names, iou):
        if not np.isnan(value):
            out[f"iou_{slug(name)}"] = float(value)
    return out


def slug(name: str) -> str:
    """A record-column-safe form of a class or category name (``"Texts & Signs"`` ->
    ``texts_signs``)."""
    out = "".join(ch.lower() if ch.isalnum() else "_" for ch in str(name).strip())
    while "__" in out:
        out = out.replace("__", "_")
    return out.strip("_") or "unnamed"
