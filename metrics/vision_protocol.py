"""Vision feature quality under one of two protocols, and a record of which one ran.

``"train->val"`` is the paper's: a labelled bank (ImageNet train) and an
evaluated set (ImageNet val). The weighted k-NN votes from the bank to the
val set (SAIL ``evaluation/eval_knn_*.py``, the measure behind the paper's
clustering axis), the linear probe is trained on the bank (its L2 strength
chosen on a split of the bank) and scored on val, and k-means NMI clusters
val (its labels only score the clustering). ``"split"``, the fallback with
one labelled set, carves a seeded stratified test split from it for k-NN and
the linear probe, and clusters the whole set.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from alignprobe.errors import ValidationError

from ._validation import as_labels
from .clustering import kmeans_nmi
from .knn import DEFAULT_KNN_K, DEFAULT_KNN_TEMPERATURE, knn_accuracy
from .linear_probe import linear_probe_accuracy

VISION_PROTOCOLS = ("train->val", "split")
VISION_METRICS = ("kmeans_nmi", "knn", "linear_probe")


def _split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(y))
    try:
        return train_test_split(index, test_size=test_fraction, random_state=seed, stratify=y)
    except ValueError:  # a class too small to stratify: a plain seeded split
        return train_test_split(index, test_size=test_fraction, random_state=seed)


def _in_memory(x: Any, rows: Any) -> np.ndarray:
    """The (selected) rows of a bank as one float32 array: what the L-BFGS linear probe fits on."""
    if callable(getattr(x, "rows", None)) and not isinstance(x, np.ndarray):
        return x.rows(rows if rows is not None else slice(None))
    return np.asarray(x if rows is None else x[rows], dtype=np.float32)


def vision_quality(
    x: Any,
    y: Any,
    bank_x: Any = None,
    bank_y: Any = None,
    *,
    bank_rows: Any = None,
    metrics: Sequence[str] = VISION_METRICS,
    k: Sequence[int] = DEFAULT_KNN_K,
    temperature: float = DEFAULT_KNN_TEMPERATURE,
    seed: int = 0,
    test_fraction: float = 0.2,
    device: Any = None,
) -> dict[str, dict[str, Any]]:
    """k-means NMI / ARI, weighted k-NN top-1 and linear-probe accuracy of vision features.

    Args:
        x, y: the evaluated set, (n, d) features and (n,) labels (ImageNet val).
        bank_x, bank_y: the labelled bank (ImageNet train), or None for the
            split protocol. ``bank_x`` may be a ``np.memmap`` (fp16 cache) or an
            embedding-cache entry (``shape`` + ``rows(index)``): k-NN streams it in
            chunks. The linear probe needs the bank in memory (float32).
        bank_rows: the bank rows to use (e.g. the images that decoded), with
            ``bank_y`` giving their labels; default every row.
        metrics: any of "kmeans_nmi", "knn", "linear_probe".
        k: k-NN neighbourhood sizes (those above the bank size are dropped).
        seed: k-means, linear-probe validation split and, for "split", the test split.

    Returns {"metrics": {kmeans_nmi, kmeans_ari, knn_top1@K..., linear_probe_top1,
    linear_probe_top5 (5+ classes)}, "details": {vision_protocol, vision_bank_n,
    vision_eval_n, linear_probe_l2, linear_probe_val_accuracy {l2 as "%.3g": accuracy},
    linear_probe_val_n}}: the validation race behind the chosen l2, so a reader can see how close it was.
    """
    unknown = [m for m in metrics if m not in VISION_METRICS]
    if unknown:
        raise ValidationError(f"metrics must be among {VISION_METRICS}; got {unknown}")
    if (bank_x is None) != (bank_y is None):
        raise ValidationError("pass both bank_x and bank_y (the labelled bank), or neither (split protocol)")
    y = as_labels(y, "y", len(x))
    if bank_x is None:
        protocol = "split"
        train, test = _split(y, test_fraction, seed)
        fit_x, fit_y, eval_x, eval_y = x[train], y[train], x[test], y[test]
    else:
        protocol = "train->val"
        n_bank = len(bank_rows) if bank_rows is not None else int(bank_x.shape[0])
        fit_x, fit_y = bank_x, as_labels(bank_y, "bank_y", n_bank)
        eval_x, eval_y = x, y
    out: dict[str, Any] = {}
    details: dict[str, Any] = {"vision_protocol": protocol, "vision_bank_n": int(len(fit_y)),
                               "vision_eval_n": int(len(eval_y))}
    if "kmeans_nmi" in metrics:
        # Clusters the evaluated set (the whole labelled set under "split", as before).
        res = kmeans_nmi(x, y, seed=seed)
        out["kmeans_nmi"], out["kmeans_ari"] = float(res["nmi"]), float(res["ari"])
    if "knn" in metrics:
        ks = tuple(kk for kk in k if kk <= len(fit_y))
        if not ks:
            raise ValidationError(f"every k-NN k in {tuple(k)} exceeds the {len(fit_y)} bank rows")
        for kk, acc in knn_accuracy(fit_x, fit_y, eval_x, eval_y, k=ks, temperature=temperature, device=device,
                                    train_rows=bank_rows if protocol == "train->val" else None).items():
            out[f"knn_top1@{kk}"] = float(acc)
    if "linear_probe" in metrics:
        res = linear_probe_accuracy(_in_memory(fit_x, bank_rows if protocol == "train->val" else None),
                                    fit_y, eval_x, eval_y, seed=seed)
        out["linear_probe_top1"] = float(res["top1"])
        if res.get("top5") is not None:
            out["linear_probe_top5"] = float(res["top5"])
        details["linear_probe_l2"] = float(res["l2"])
        details["linear_probe_val_accuracy"] = {f"{l2:.3g}": float(acc) for l2, acc in res["val_accuracy"].items()}
        details["linear_probe_val_n"] = res["n_val"]
    return {"metrics": out, "details": details}
