"""Pure metric functions on feature arrays (numpy or torch in, floats or dicts out).

Clustering quality and linear separability of vision features (SAIL, Zhang et
al. CVPR 2025), representational-similarity alignment (Huh et al. 2024),
retrieval / zero-shot evaluation, and correlation statistics. Every function
validates its inputs and raises ``alignprobe.errors.ValidationError`` with a
message that names the argument, what it must be, and what it got.
"""
from .clustering import kmeans, kmeans_nmi, kmeanspp_seeds
from .correlation import correlate
from .knn import knn_accuracy
from .linear_probe import DEFAULT_L2_GRID, linear_probe_accuracy
from .reasoning import mmvp_scores, winoground_scores
from .retrieval import recall_at_k, retrieval_metrics
from .segmentation import SegmentationAccumulator, segmentation_scores
from .similarity import RBF_MAX_SAMPLES, cka, cknna, mutual_knn, svcca
from .zero_shot import build_class_embeddings, zero_shot_accuracy

__all__ = [
    "DEFAULT_L2_GRID",
    "RBF_MAX_SAMPLES",
    "SegmentationAccumulator",
    "build_class_embeddings",
    "cka",
    "cknna",
    "correlate",
    "kmeans",
    "kmeans_nmi",
    "kmeanspp_seeds",
    "knn_accuracy",
    "linear_probe_accuracy",
    "mmvp_scores",
    "mutual_knn",
    "recall_at_k",
    "retrieval_metrics",
    "segmentation_scores",
    "svcca",
    "winoground_scores",
    "zero_shot_accuracy",
]
