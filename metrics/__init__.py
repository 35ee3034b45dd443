"""Pure metric functions on feature arrays (numpy or torch in, floats or dicts out).

Clustering quality and linear separability of vision features (SAIL, Zhang et
al. CVPR 2025), representational-similarity alignment (Huh et al. 2024) in
a registry of measures (``list_measures``) with permutation calibration
(``calibrate``, Gröger, Wen & Brbić, ICML 2026), retrieval / zero-shot
evaluation, and correlation statistics. Every function validates its inputs
and raises ``alignprobe.errors.ValidationError`` with a message that names the
argument, what it must be, and what it got. Each metric declares its record
columns' metadata next to it (``register_metric``, ``metric_info``).

Names are exported lazily (PEP 562, `alignprobe._lazy`): torch, faiss and
scikit-learn load only when a metric that needs them is used.
"""
from __future__ import annotations

from alignprobe._lazy import lazy_exports

_EXPORTS = {
    # vision feature quality (SAIL)
    "kmeans": ".clustering", "kmeans_nmi": ".clustering", "kmeanspp_seeds": ".clustering",
    "knn_accuracy": ".knn", "DEFAULT_KNN_K": ".knn", "DEFAULT_KNN_TEMPERATURE": ".knn",
    "linear_probe_accuracy": ".linear_probe", "DEFAULT_L2_GRID": ".linear_probe",
    "vision_quality": ".vision_protocol", "VISION_PROTOCOLS": ".vision_protocol",
    # alignment through trained heads
    "recall_at_k": ".retrieval", "retrieval_metrics": ".retrieval",
    "build_class_embeddings": ".zero_shot", "zero_shot_accuracy": ".zero_shot", "zero_shot_scores": ".zero_shot",
    "winoground_scores": ".reasoning", "mmvp_scores": ".reasoning",
    "segmentation_scores": ".segmentation", "SegmentationAccumulator": ".segmentation",
    "Baseline": ".baselines", "BASELINES": ".baselines", "fit_baseline": ".baselines",
    # representational similarity: the measure registry and its calibration
    "Measure": ".measures", "get_measure": ".measures", "list_measures": ".measures",
    "register_measure": ".measures",
    "cka": ".similarity", "cknna": ".similarity", "cycle_knn": ".similarity", "knn_jaccard": ".similarity",
    "linear_r2": ".similarity", "mean_cca": ".similarity", "mutual_knn": ".similarity",
    "procrustes_similarity": ".similarity", "pwcca": ".similarity", "rsa": ".similarity",
    "rv_coefficient": ".similarity", "svcca": ".similarity",
    "calibrate": ".calibration", "calibrate_all": ".calibration", "calibrate_max": ".calibration",
    "CalibrationResult": ".calibration", "MaxCalibrationResult": ".calibration",
    "similarity_scores": ".similarity_protocol", "similarity_sample": ".similarity_protocol",
    "DEFAULT_SIMILARITY_MEASURES": ".similarity_protocol", "DEFAULT_SIMILARITY_SAMPLES": ".similarity_protocol",
    "DEFAULT_NULL_PERMUTATIONS": ".similarity_protocol",
    # correlation statistics
    "correlate": ".correlation", "correlation_difference": ".correlation", "permutation_p_value": ".correlation",
    # the metric registry: each record column's label, direction, group
    "register_metric": ".registry", "metric_info": ".registry", "list_metrics": ".registry",
    "MetricInfo": ".registry", "UnknownMetricError": ".registry",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
