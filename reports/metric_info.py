"""What each metric in a result record means, for tables and plots: label, direction, group, format.

The metadata is declared once, next to each metric function (`alignprobe.metrics.registry`,
``@register_metric(higher_is_better=...)`` as in lm-evaluation-harness); this module only
reads it -- display order, column selection by name or group -- so that tables know which
value to mark as best and plots know which axis is "clustering" and which is "alignment"
without guessing from names. An unknown name is an error, never a silent "no direction".
"""
from __future__ import annotations

import difflib
import logging
from typing import Iterable, Sequence

from alignprobe.errors import ValidationError
from alignprobe.metrics.registry import GROUPS, MetricInfo, UnknownMetricError, is_metric, metric_info, sort_key

__all__ = ["GROUPS", "MetricInfo", "STANDARD_METRICS", "UnknownMetricError", "knn_metrics", "metric_info",
           "parse_metric_list", "resolve_metrics", "sort_metrics"]

log = logging.getLogger(__name__)
_KNN_PREFIX = "knn_top1@"

#: The default columns of a comparison table (k-NN columns are added for every k present).
STANDARD_METRICS: tuple[str, ...] = (
    "kmeans_nmi", "knn_top1@*", "linear_probe_top1", "zero_shot_top1", "i2t_r1", "t2i_r1", "mutual_knn",
)


def sort_metrics(names: Iterable[str]) -> list[str]:
    """`names` in display order: by group, then as declared (k-NN by k); undeclared names last, alphabetically."""
    return sorted(set(names), key=sort_key)


def knn_metrics(available: Iterable[str]) -> list[str]:
    return sort_metrics(n for n in available if n.startswith(_KNN_PREFIX) and is_metric(n))


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
    declared metric present (a column no metric declares is left out with a
    warning). A group name ("clustering", ...) expands to its metrics present. An explicit name that the results lack is an error (a typo must
    not silently drop a column), with the closest names suggested.
    """
    available = list(available)
    undeclared = sorted(n for n in available if not is_metric(n))
    if undeclared:  # a table must not guess their direction: left out, and said so
        log.warning("columns no metric declares, left out of tables and plots: %s", ", ".join(undeclared))
        available = [n for n in available if n not in undeclared]
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
        elif name in undeclared:
            metric_info(name)  # raises UnknownMetricError: what is known and how to declare it
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
