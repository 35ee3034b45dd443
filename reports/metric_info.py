"""What each metric in a result record means: label, direction, group, format.

One small table, as lm-evaluation-harness registers `higher_is_better` with
each metric, so that tables know which value to mark as best, sort in the
right direction, and plots know which axis is "clustering" and which is
"alignment" without guessing from names.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from alignprobe.errors import ValidationError

GROUPS = ("clustering", "separability", "alignment", "other")


@dataclass(frozen=True)
class MetricInfo:
    """Metadata of one metric.

    `higher_is_better` is None for bookkeeping numbers (epochs) that have no
    "best". `fmt` is the format spec of one value in tables: fractions get
    three decimals (0.612, not 61.2%) everywhere, so a table cell, the CSV
    and the record agree without a scale factor.
    """

    name: str
    label: str
    higher_is_better: bool | None
    group: str
    description: str = ""
    fmt: str = ".3f"

    def format(self, value: float) -> str:
        return format(value, self.fmt)


def _m(name, label, hib, group, description, fmt=".3f"):
    return MetricInfo(name, label, hib, group, description, fmt)


# Display order is the order of this table.
_TABLE: tuple[MetricInfo, ...] = (
    _m("kmeans_nmi", "k-means NMI", True, "clustering", "k-means NMI against the labels (clustering quality)"),
    _m("kmeans_ari", "k-means ARI", True, "clustering", "k-means adjusted Rand index against the labels"),
    # knn_top1@K entries are made on demand by `metric_info`; they sort here.
    _m("linear_probe_top1", "linear probe top-1", True, "separability", "linear-probe accuracy (linear separability)"),
    _m("linear_probe_top5", "linear probe top-5", True, "separability", "linear-probe top-5 accuracy"),
    _m("zero_shot_top1", "zero-shot top-1", True, "alignment", "zero-shot classification top-1 through the probe"),
    _m("zero_shot_top5", "zero-shot top-5", True, "alignment", "zero-shot classification top-5 through the probe"),
    _m("i2t_r1", "I2T R@1", True, "alignment", "image-to-text retrieval recall@1"),
    _m("i2t_r5", "I2T R@5", True, "alignment", "image-to-text retrieval recall@5"),
    _m("i2t_r10", "I2T R@10", True, "alignment", "image-to-text retrieval recall@10"),
    _m("t2i_r1", "T2I R@1", True, "alignment", "text-to-image retrieval recall@1"),
    _m("t2i_r5", "T2I R@5", True, "alignment", "text-to-image retrieval recall@5"),
    _m("t2i_r10", "T2I R@10", True, "alignment", "text-to-image retrieval recall@10"),
    _m("mutual_knn", "mutual k-NN", True, "alignment", "mutual k-NN overlap of the raw features"),
    _m("cka", "CKA", True, "alignment", "linear CKA of the raw features"),
    _m("cknna", "CKNNA", True, "alignment", "CKNNA of the raw features"),
    # chance levels: the same score under a random pairing (no better direction: a reference, not a result)
    _m("mutual_knn_null", "mutual k-NN (chance)", None, "alignment", "mutual k-NN under random pairings"),
    _m("cka_null", "CKA (chance)", None, "alignment", "CKA under random pairings"),
    _m("cknna_null", "CKNNA (chance)", None, "alignment", "CKNNA under random pairings"),
    # the paper's other evaluations of trained heads (probe/evals)
    _m("winoground_text", "Winoground text", True, "alignment", "Winoground text score (fraction of examples)"),
    _m("winoground_image", "Winoground image", True, "alignment", "Winoground image score (fraction of examples)"),
    _m("winoground_group", "Winoground group", True, "alignment", "Winoground group score (fraction of examples)"),
    _m("mmvp", "MMVP-VLM", True, "alignment", "MMVP-VLM accuracy, mean over categories"),
    _m("miou", "mIoU", True, "alignment", "open-vocabulary segmentation mIoU"),
    _m("pixel_acc", "pixel acc.", True, "alignment", "open-vocabulary segmentation pixel accuracy"),
    _m("probe_val_loss", "probe val. loss", False, "other", "held-out sigmoid loss of the probe", ".3g"),
    _m("probe_epochs", "probe epochs", None, "other", "epochs the probe trained", ".4g"),
    _m("sail_val_loss", "SAIL val. loss", False, "other", "held-out sigmoid loss of the SAIL heads", ".3g"),
    _m("sail_epochs", "SAIL epochs", None, "other", "epochs the SAIL heads trained", ".4g"),
    _m("sail_best_epoch", "SAIL best epoch", None, "other", "the kept (best held-out) epoch", ".4g"),
)
METRIC_INFO: dict[str, MetricInfo] = {m.name: m for m in _TABLE}
_ORDER = {m.name: i for i, m in enumerate(_TABLE)}
_KNN = re.compile(r"^knn_top1@(\d+)$")

#: The default columns of a comparison table (k-NN columns are added for every k present).
STANDARD_METRICS: tuple[str, ...] = (
    "kmeans_nmi", "knn_top1@*", "linear_probe_top1", "zero_shot_top1", "i2t_r1", "t2i_r1", "mutual_knn",
)


def metric_info(name: str) -> MetricInfo:
    """Metadata of `name`; unknown metrics get a neutral entry (no best, group "other")."""
    if name in METRIC_INFO:
        return METRIC_INFO[name]
    knn = _KNN.match(name)
    if knn:
        k = knn.group(1)
        return MetricInfo(name, f"k-NN top-1 @{k}", True, "clustering", f"k-NN ({k} neighbours) top-1 accuracy")
    return MetricInfo(name, name, None, "other", "")


def _sort_key(name: str) -> tuple:
    knn = _KNN.match(name)
    if knn:  # between the k-means and the linear-probe entries, by k
        return (_ORDER["kmeans_ari"], int(knn.group(1)), "")
    return (_ORDER.get(name, len(_ORDER)), 0, name)


def sort_metrics(names: Iterable[str]) -> list[str]:
    """`names` in display order: the table's order, k-NN by k, unknown names last alphabetically."""
    return sorted(set(names), key=_sort_key)


def knn_metrics(available: Iterable[str]) -> list[str]:
    return sort_metrics(n for n in available if _KNN.match(n))


def parse_metric_list(metrics: str | Sequence[str] | None) -> list[str] | None:
    """Accept a list, or one comma-separated string as a CLI flag gives it."""
    if metrics is None:
        return None
    if isinstance(metrics, str):
        metrics = [metrics]
    out = [part.strip() for item in metrics for part in str(item).split(",") if part.strip()]
    return out or None


def resolve_metrics(requested: str | Sequence[str] | None, available: Iterable[str]) -> list[str]:
    """The metric columns a table or plot shows.

    None: the standard set, restricted to what the results hold. "all": every
    metric present. A group name ("clustering", ...) expands to its metrics
    present. An explicit name that the results lack is an error (a typo must
    not silently drop a column), with the closest names suggested.
    """
    available = list(available)
    names = parse_metric_list(requested)
    if names is None:
        names = list(STANDARD_METRICS)
        explicit = False
    else:
        explicit = True
    out: list[str] = []
    for name in names:
        if name == "all":
            out.extend(sort_metrics(available))
        elif name == "knn_top1@*" or name == "knn":
            out.extend(knn_metrics(available))
        elif name in GROUPS:
            out.extend(m for m in sort_metrics(available) if metric_info(m).group == name)
        elif name in available:
            out.append(name)
        elif explicit:
            close = difflib.get_close_matches(name, available, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValidationError(
                f"metric {name!r} is not in these results.{hint} Available: {', '.join(sort_metrics(available))}"
                f" (or 'all', or a group: {', '.join(GROUPS)})."
            )
    out = list(dict.fromkeys(out))  # keep the first occurrence of each
    if not out:
        raise ValidationError(
            "none of the requested metrics is in these results; available: "
            + (", ".join(sort_metrics(available)) or "(no metrics at all: did every run fail?)")
        )
    return out
