"""The paper's other evaluations of an aligned pair: Winoground, MMVP-VLM, open-vocabulary
segmentation.

Each takes the frozen encoders and two *projection callables* into the shared space,
``image_to_space(embeddings) -> (n, d)`` and ``text_to_space(embeddings) -> (m, d)`` (an
`AlignedModel`'s ``transform_image`` / ``transform_text``, or any function), so that they
depend on no training-engine class. Results are dicts of record columns.
"""
from alignprobe.probe.evals.aligned import (
    RECORD_COLUMNS,
    evaluate_aligned,
    head_logit_scale,
    segment_aligned,
)
from alignprobe.probe.evals.mmvp import evaluate_mmvp, mmvp_similarities
from alignprobe.probe.evals.segmentation import (
    class_text_embeddings,
    dense_features,
    evaluate_segmentation,
    segment,
)
from alignprobe.probe.evals.winoground import evaluate_winoground, winoground_similarities

__all__ = [
    "RECORD_COLUMNS",
    "evaluate_aligned",
    "head_logit_scale",
    "segment_aligned",
    "class_text_embeddings",
    "dense_features",
    "evaluate_mmvp",
    "evaluate_segmentation",
    "evaluate_winoground",
    "mmvp_similarities",
    "segment",
    "winoground_similarities",
]
