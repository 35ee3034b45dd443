"""Pure metric functions on feature arrays (numpy or torch in, floats or dicts out).

Clustering quality and linear separability of vision features (SAIL, Zhang et
al. CVPR 2025), representational-similarity alignment (Huh et al. 2024) in
a registry of measures (``list_measures``) with permutation calibration
(``calibrate``, Gröger, Wen & Brbić, ICML 2026), retrieval / zero-shot
evaluation, and correlation statistics. Every function validates its inputs
and raises ``alignprobe.errors.ValidationError`` with a message that names the
argument, what it must be, and what it got.
"""
from .baselines import BASELINES, Baseline, fit_baseline
from .calibration import CalibrationResult, MaxCalibrationResult, calibrate, calibrate_all, calibrate_max
from .clustering import kmeans, kmeans_nmi, kmeanspp_seeds
from .correlation import (
    MIN_INTERVAL_N,
    TOO_FEW_FOR_INTERVALS,
    correlate,
    correlation_difference,
    permutation_p_value,
)
from .knn import DEFAULT_KNN_K, DEFAULT_KNN_TEMPERATURE, knn_accuracy
from .linear_probe import DEFAULT_L2_GRID, linear_probe_accuracy
from .measures import Measure, get_measure, list_measures, register_measure
from .reasoning import mmvp_scores, winoground_scores
from .retrieval import MAX_CAPTIONS_PER_IMAGE, cap_captions_per_image, recall_at_k, retrieval_metrics
from .segmentation import SegmentationAccumulator, segmentation_scores
from .similarity import (
    RBF_MAX_SAMPLES,
    cka,
    cknna,
    cycle_knn,
    knn_jaccard,
    linear_r2,
    mean_cca,
    mutual_knn,
    procrustes_similarity,
    pwcca,
    rsa,
    rv_coefficient,
    svcca,
)
from .similarity_protocol import (
    DEFAULT_NULL_PERMUTATIONS,
    DEFAULT_SIMILARITY_MEASURES,
    DEFAULT_SIMILARITY_SAMPLES,
    null_score,
    similarity_sample,
    similarity_scores,
)
from .vision_protocol import VISION_PROTOCOLS, vision_quality
from .zero_shot import ZERO_SHOT_TOPK, build_class_embeddings, reportable_topk, zero_shot_accuracy, zero_shot_scores

__all__ = [
    "BASELINES",
    "DEFAULT_KNN_K",
    "DEFAULT_KNN_TEMPERATURE",
    "DEFAULT_L2_GRID",
    "DEFAULT_NULL_PERMUTATIONS",
    "DEFAULT_SIMILARITY_MEASURES",
    "DEFAULT_SIMILARITY_SAMPLES",
    "MAX_CAPTIONS_PER_IMAGE",
    "MIN_INTERVAL_N",
    "RBF_MAX_SAMPLES",
    "TOO_FEW_FOR_INTERVALS",
    "VISION_PROTOCOLS",
    "ZERO_SHOT_TOPK",
    "Baseline",
    "CalibrationResult",
    "MaxCalibrationResult",
    "Measure",
    "SegmentationAccumulator",
    "build_class_embeddings",
    "calibrate",
    "calibrate_all",
    "calibrate_max",
    "cap_captions_per_image",
    "cka",
    "cknna",
    "correlate",
    "correlation_difference",
    "cycle_knn",
    "fit_baseline",
    "get_measure",
    "kmeans",
    "kmeans_nmi",
    "kmeanspp_seeds",
    "knn_accuracy",
    "knn_jaccard",
    "linear_probe_accuracy",
    "linear_r2",
    "list_measures",
    "mean_cca",
    "mmvp_scores",
    "mutual_knn",
    "null_score",
    "permutation_p_value",
    "procrustes_similarity",
    "pwcca",
    "recall_at_k",
    "register_measure",
    "reportable_topk",
    "retrieval_metrics",
    "rsa",
    "rv_coefficient",
    "segmentation_scores",
    "similarity_sample",
    "similarity_scores",
    "svcca",
    "vision_quality",
    "winoground_scores",
    "zero_shot_accuracy",
    "zero_shot_scores",
]
