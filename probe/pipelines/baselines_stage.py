"""Training-free baselines beside the probe: fitted on its training pairs, scored by its evaluation code.

A probe's score means little without the floor that geometry alone reaches
(orthogonal Procrustes, ridge, CCA, ASIF: ``alignprobe.metrics.baselines``).
Each baseline here is fitted on exactly the image-caption pairs the probe
trained on (every caption of every training image, as the probe's loss sees
them) and scored by the same `evaluate` on the same zero-shot and retrieval
sets; its outputs are L2-normalised first, as the probe's heads' are, so
prompt templates are averaged the same way. Record keys: ``baseline_<method>_<metric>``.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Sequence

import numpy as np

from alignprobe.errors import ValidationError
from alignprobe.metrics.baselines import BASELINES, fit_baseline
from alignprobe.probe.training.evaluation import RetrievalData, ZeroShotData, evaluate

log = logging.getLogger("alignprobe.run")

#: The baselines `run` fits unless told otherwise: the two whose cost stays small at any scale (one d x d
#: solve each; ~1-2 s on the built-in data on a loaded 2-core machine). CCA whitens each side with an
#: eigendecomposition (77 s at d = 2,048 there, d^3 beyond) and ASIF's outputs are (m, n_train_captions)
#: dense (50 GB for COCO's 25k captions against 500k anchors), so both are asked for by name.
DEFAULT_BASELINES = ("procrustes", "ridge")


def check_baselines(names: Sequence[str]) -> tuple[str, ...]:
    """Validated baseline names; ``("none",)`` or ``()`` turns them off."""
    names = tuple(names)
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValidationError(f"unknown baseline(s) {unknown}; choose from: {', '.join(BASELINES)} "
                              f"(or none to turn them off)")
    if len(set(names)) != len(names):
        raise ValidationError(f"duplicate baselines in {list(names)}")
    return names


def training_pairs(images: Any, captions: Any, caption_image: np.ndarray, train_rows: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): one row per caption of the training images -- the image's features and the caption's (fp32)."""
    keep = np.flatnonzero(np.isin(caption_image, train_rows))
    if len(keep) < 2:
        raise ValidationError(f"the baselines need at least 2 training pairs; the probe's training images have "
                              f"{len(keep)} caption(s)")
    return np.asarray(images.rows(caption_image[keep]), np.float32), np.asarray(captions.rows(keep), np.float32)


def _unit(z: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return (z / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def score_baselines(methods: Sequence[str], x_train: np.ndarray, y_train: np.ndarray, *,
                    zero_shot: ZeroShotData | None = None, retrieval: RetrievalData | None = None,
                    params: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[dict, dict]:
    """Fit each baseline on (x_train, y_train) and score it; returns (metrics, details).

    metrics: ``baseline_<method>_<metric>`` for every metric `evaluate` gives.
    details: ``baselines`` ({method: its hyperparameters}), ``baseline_train_pairs``,
    ``baseline_seconds`` ({method: fit + scoring time}) and, when a baseline's
    scores are undefined on these data (e.g. ridge maps every image to 0 when
    the training captions are all alike), ``baseline_errors`` ({method: why}):
    that baseline gets no columns and the probe's record is still written.
    """
    params = dict(params or {})
    metrics: dict[str, float] = {}
    chosen: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    errors: dict[str, str] = {}
    for method in check_baselines(methods):
        t0 = time.perf_counter()
        model = fit_baseline(method, x_train, y_train, **dict(params.get(method, {})))
        try:
            scores = evaluate(lambda v, m=model: _unit(m.transform_image(v)),
                              lambda v, m=model: _unit(m.transform_text(v)), zero_shot=zero_shot, retrieval=retrieval)
        except ValidationError as err:  # the baseline's embeddings are degenerate here; the probe's are not
            log.warning("baseline %s could not be scored: %s", method, err)
            errors[method] = str(err)
            continue
        metrics.update({f"baseline_{method}_{k}": float(v) for k, v in scores.items()})
        chosen[method] = model.params()
        seconds[method] = round(time.perf_counter() - t0, 3)
    details = {"baselines": chosen, "baseline_train_pairs": int(len(x_train)), "baseline_seconds": seconds}
    if errors:
        details["baseline_errors"] = errors
    return metrics, details
