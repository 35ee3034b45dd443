"""The three evaluations on an aligned model in one call, for `eval` / `segment` / `train`.

Duck-typed on what `alignprobe.load_aligned` returns (``encoder("vision" | "text")``,
``transform_image``, ``transform_text``, ``model.logit_scale``), so this module imports no
training-engine class; any object with those members works.
"""
from __future__ import annotations

import logging
from pathlib import Path

from alignprobe.errors import ValidationError
from alignprobe.metrics import mmvp_scores, segmentation_scores, winoground_scores
from alignprobe.metrics.registry import metric_columns
from alignprobe.probe.data.readers_seg import SegmentationDataset, open_segmentation
from alignprobe.probe.evals.mmvp import evaluate_mmvp
from alignprobe.probe.evals.segmentation import evaluate_segmentation, segment
from alignprobe.probe.evals.winoground import evaluate_winoground
from alignprobe.reports.segmentation_figure import segmentation_figure

#: the record columns these evaluations add (fractions, higher is better); the per-class
#: ``iou_<class>`` and per-category ``mmvp_<category>`` columns come along with them
RECORD_COLUMNS = metric_columns(winoground_scores, mmvp_scores, segmentation_scores)

log = logging.getLogger("alignprobe.segment")


def dense_transfer_warning(aligned) -> str | None:
    """Why this model's vision head may segment poorly, or None.

    A non-linear (star, MLP) vision head whose LayerNorm bias started centred (``norm_bias_init``
    ``"center"``, or ``"auto"`` on features whose mean dominates) starts from minus the mean of the
    *pooled* training features; patch tokens have another mean, and the gated head meets an offset
    it never saw. Measured 2026-12-08 on `shapes-seg` (EfficientNet-Lite0 x MiniLM, README
    "Winoground, MMVP-VLM and open-vocabulary segmentation"): star heads centred 0.394 object-only
    mIoU, from zeros 1.000 at the same held-out loss; linear heads centred 1.000.
    """
    info = getattr(aligned, "info", None) or {}
    config = info.get("train_config") or {}
    head = config.get("image_head", "linear")
    # what the run did ("auto" centres a side only where its mean dominates); older runs: the setting
    centred = (info.get("norm_bias_centred") or {}).get("image", config.get("norm_bias_init") == "center")
    if not centred or head in ("linear", "identity"):
        return None
    return (f"this model's {head} vision head started from a centred LayerNorm bias (fitted to pooled "
            f"features); such heads transfer poorly to patch tokens (measured: object-only mIoU 0.39 against "
            f"1.00 from zeros). For dense tasks, train with --norm-bias-init zeros (the reference's) or "
            f"--head linear")


def head_logit_scale(aligned) -> float:
    """``exp(t)`` of the trained heads (1.0 when the object has none)."""
    model = getattr(aligned, "model", None)
    t = getattr(model, "logit_scale", None)
    if t is None:
        return 1.0
    return float(t.detach().exp()) if hasattr(t, "detach") else float(t)


def _parts(aligned):
    return (aligned.encoder("vision"), aligned.encoder("text"), aligned.transform_image,
            aligned.transform_text)


def evaluate_aligned(aligned, *, winoground: str | Path | None = None,
                     mmvp: str | Path | None = None, segmentation: str | None = None,
                     segmentation_limit: int | None = None, templates=None,
                     progress: bool = True, batch_size: int | None = None, **segmentation_settings) -> dict:
    """One record row with the evaluations whose data is given (None skips one). ``batch_size``: images
    (segmentation: sliding windows) per encoder call [each evaluation's default]."""
    if winoground is None and mmvp is None and segmentation is None:
        raise ValidationError("nothing to evaluate: give winoground=DIR, mmvp=DIR or "
                              "segmentation=SPEC")
    parts = _parts(aligned)
    row: dict = {}
    batch = {} if batch_size is None else {"batch_size": batch_size}
    if winoground is not None:
        row.update(evaluate_winoground(*parts, winoground, progress=progress, **batch))
    if mmvp is not None:
        row.update(evaluate_mmvp(*parts, mmvp, progress=progress, **batch))
    if segmentation is not None:
        if (why := dense_transfer_warning(aligned)) is not None:
            log.warning(why)
        segmentation_settings = {**batch, **segmentation_settings}
        segmentation_settings.setdefault("logit_scale", head_logit_scale(aligned))
        row.update(evaluate_segmentation(*parts, segmentation, templates=templates,
                                         limit=segmentation_limit, progress=progress,
                                         **segmentation_settings))
    return row


def segment_aligned(aligned, data, *, figure: str | Path | None = None, n_figure: int = 4,
                    limit: int | None = None, templates=None, progress: bool = True,
                    **settings) -> dict:
    """`alignprobe segment`: scores on ``data`` (a spec or a `SegmentationDataset`) and, with
    ``figure``, a PNG of image / prediction / ground truth for its first ``n_figure`` images."""
    ds = data if isinstance(data, SegmentationDataset) else open_segmentation(data)
    if (why := dense_transfer_warning(aligned)) is not None:
        log.warning(why)
    settings.setdefault("logit_scale", head_logit_scale(aligned))
    parts = _parts(aligned)
    row = evaluate_segmentation(*parts, ds, templates=templates, limit=limit, progress=progress,
                                **settings)
    if figure is not None:
        templates = ds.templates if templates is None else templates
        k = min(n_figure, len(ds))
        images = [ds.load_image(i) for i in range(k)]
        preds = segment(*parts, images, ds.class_queries, templates=templates,
                        progress=progress, **settings)
        segmentation_figure(images, preds, [ds.load_mask(i) for i in range(k)], ds.class_names,
                            figure, ignore_index=ds.ignore_index, title=ds.name)
    return row
