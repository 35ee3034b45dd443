"""The metric registry: every record column's meaning, declared once, next to the function computing it.

As lm-evaluation-harness registers ``higher_is_better`` with each metric
(``@register_metric``), each metric function here carries its columns'
metadata -- label, direction, group, description, reference, table format::

    @register_metric("knn_top1@{k}", label="k-NN top-1 @{k}", higher_is_better=True, group="clustering",
                     description="weighted k-NN top-1 accuracy ({k} neighbours)")
    def knn_accuracy(...): ...

A name may hold a placeholder: ``{k}`` (an integer, e.g. ``zero_shot_top{k}``)
or ``{name}`` (a slug, e.g. ``iou_{name}``). The similarity measures are not
declared here again: `metric_info` derives them from the measure registry
(`alignprobe.metrics.measures`), with their calibration columns
``<measure>_calibrated`` (higher is better), ``<measure>_p`` (lower is better),
``<measure>_threshold`` and ``<measure>_null`` (references, no direction); and
``baseline_<method>_<metric>`` takes the direction of ``<metric>``. An unknown
name is an `UnknownMetricError` that suggests the closest names, never a
silent "no better direction".
"""
from __future__ import annotations

import difflib
import importlib
import itertools
import re
from dataclasses import dataclass, replace
from typing import Callable, Iterable, TypeVar

from alignprobe.errors import ValidationError

F = TypeVar("F", bound=Callable)

#: Metric groups in display order.
GROUPS = ("clustering", "separability", "alignment", "other")
#: Modules whose functions declare metrics, in display order (the measures sit between
#: retrieval and the reasoning evaluations).
_METRIC_MODULES = ("clustering", "knn", "linear_probe", "zero_shot", "retrieval", "measures", "reasoning",
                   "segmentation")
#: Calibration columns of a similarity measure (metrics/calibration.py): suffix -> (direction, label, what).
_MEASURE_SUFFIXES = {
    "": (None, "{label}", "{description}"),
    "_calibrated": (True, "{label} (calibrated)", "{label} above its permutation threshold, scaled to [0, 1]"),
    "_p": (False, "{label} p", "permutation p-value of {label} (small: above chance)"),
    "_threshold": (None, "{label} (threshold)", "{label} at the (1 - alpha) quantile of its permutation null"),
    "_null": (None, "{label} (chance)", "{label} under random pairings (mean of the permutation null)"),
}
_PLACEHOLDERS = {"k": r"(?P<k>\d+)", "name": r"(?P<name>[a-z0-9][a-z0-9_]*)"}


class UnknownMetricError(ValidationError, KeyError):
    """A metric name that no metric function declares."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class MetricInfo:
    """Metadata of one metric column.

    ``higher_is_better`` is None for bookkeeping numbers (epochs) and references (chance
    levels, thresholds) that have no "best". ``fmt`` formats one value in tables: fractions
    get three decimals (0.612, not 61.2%) everywhere, so a table cell, the CSV and the record
    agree without a scale factor. ``source``: the function (or pipeline) that writes it.
    """

    name: str
    label: str
    higher_is_better: bool | None
    group: str
    description: str = ""
    fmt: str = ".3f"
    reference: str = ""
    source: str = ""

    def format(self, value: float) -> str:
        return format(value, self.fmt)


@dataclass(frozen=True)
class _Declaration:
    info: MetricInfo  # name, label and description may hold placeholders
    pattern: re.Pattern
    position: int  # declaration order (a module's decorators run in order)
    module: str


_DECLARED: list[_Declaration] = []
_ORDER = itertools.count()
_loaded = False


def _compile(name: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", name)
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out.append(re.escape(part))
        elif part in _PLACEHOLDERS:
            out.append(_PLACEHOLDERS[part])
        else:
            raise ValueError(f"metric name {name!r}: unknown placeholder {{{part}}}; use {{k}} or {{name}}")
    return re.compile("".join(out) + r"\Z")


def declare_metric(name: str, *, label: str, higher_is_better: bool | None, group: str, description: str,
                   reference: str = "", fmt: str = ".3f", source: str = "", module: str = "",
                   position: int | None = None) -> None:
    """Declare a column that no metric function writes (a pipeline's bookkeeping number)."""
    if group not in GROUPS:
        raise ValueError(f"metric {name!r}: group must be one of {GROUPS}, got {group!r}")
    if higher_is_better not in (True, False, None):
        raise ValueError(f"metric {name!r}: higher_is_better must be True, False or None")
    if any(d.info.name == name for d in _DECLARED):
        raise ValueError(f"a metric named {name!r} is already declared")
    info = MetricInfo(name, label, higher_is_better, group, description, fmt, reference, source)
    position = next(_ORDER) if position is None else position
    _DECLARED.append(_Declaration(info, _compile(name), position, module))


def register_metric(name: str, *, label: str, higher_is_better: bool | None, group: str, description: str,
                    reference: str = "", fmt: str = ".3f") -> Callable[[F], F]:
    """Decorator: declare the column ``name`` that the decorated function computes (stackable; the
    columns of one function are shown in the order of its decorators, top first)."""
    position = next(_ORDER)  # decorator expressions run top to bottom; they are applied bottom up

    def deco(fn: F) -> F:
        declare_metric(name, label=label, higher_is_better=higher_is_better, group=group, description=description,
                       reference=reference, fmt=fmt, source=f"{fn.__module__}.{fn.__qualname__}",
                       module=fn.__module__, position=position)
        return fn
    return deco


# Columns the training pipelines write (no metric function computes them).
_ENGINE = "alignprobe.probe.training.engine"
declare_metric("probe_val_loss", label="probe val. loss", higher_is_better=False, group="other", fmt=".3g",
               description="held-out sigmoid loss of the probe", source=_ENGINE)
declare_metric("probe_epochs", label="probe epochs", higher_is_better=None, group="other", fmt=".4g",
               description="epochs the probe trained", source=_ENGINE)
declare_metric("sail_val_loss", label="SAIL val. loss", higher_is_better=False, group="other", fmt=".3g",
               description="held-out sigmoid loss of the SAIL heads", source=_ENGINE)
declare_metric("sail_epochs", label="SAIL epochs", higher_is_better=None, group="other", fmt=".4g",
               description="epochs the SAIL heads trained", source=_ENGINE)
declare_metric("sail_best_epoch", label="SAIL best epoch", higher_is_better=None, group="other", fmt=".4g",
               description="the kept (best held-out) epoch", source=_ENGINE)
declare_metric("n_pairs", label="pairs", higher_is_better=None, group="other", fmt=".4g",
               description="image-caption pairs the run used", source="alignprobe.probe.pipelines.run")


def _load() -> None:
    """Import the metric modules, whose decorators fill the registry (once)."""
    global _loaded
    if not _loaded:
        for module in _METRIC_MODULES:
            importlib.import_module(f"alignprobe.metrics.{module}")
        _loaded = True


def _measures():
    from alignprobe.metrics import measures  # the measure registry (imports torch)

    return measures


def _declared(name: str) -> tuple[MetricInfo, _Declaration] | None:
    for d in _DECLARED:
        match = d.pattern.match(name)
        if match:
            fields = match.groupdict()
            info = d.info
            if fields:
                info = replace(info, name=name, label=info.label.format(**fields),
                               description=info.description.format(**fields))
            return info, d
    return None


_ACRONYMS = {"knn": "k-NN", "cka": "CKA", "cknna": "CKNNA", "rbf": "RBF", "rv": "RV", "svcca": "SVCCA",
             "cca": "CCA", "pwcca": "PWCCA", "rsa": "RSA", "r2": "R²", "xy": "x→y", "yx": "y→x"}


def _measure_label(name: str) -> str:
    """``mutual_knn`` -> ``mutual k-NN``, ``cka_rbf_unbiased`` -> ``CKA RBF unbiased``."""
    return " ".join(_ACRONYMS.get(word, word) for word in name.split("_"))


def _measure(name: str) -> tuple[MetricInfo, tuple] | None:
    measures = _measures()
    names = measures.list_measures()
    for suffix, (direction, label, description) in _MEASURE_SUFFIXES.items():
        base = name[: len(name) - len(suffix)] if suffix and name.endswith(suffix) else (name if not suffix else "")
        if base in names:
            m = measures.get_measure(base)
            base_label = _measure_label(base)
            hib = m.higher_is_better if suffix == "" else direction
            info = MetricInfo(name, label.format(label=base_label), hib, "alignment",
                              description.format(label=base_label, description=m.description),
                              reference=m.reference, source=f"{m.fn.__module__}.{m.fn.__qualname__}")
            if suffix == "_p":
                info = replace(info, fmt=".3g")
            return info, (names.index(base), list(_MEASURE_SUFFIXES).index(suffix))
    return None


def _baseline(name: str) -> tuple[MetricInfo, tuple] | None:
    from alignprobe.metrics.baselines import BASELINES  # imports torch: only when a baseline column is asked about

    for method in sorted(BASELINES, key=len, reverse=True):
        prefix = f"baseline_{method}_"
        if name.startswith(prefix):
            base = _lookup(name[len(prefix):])
            if base is None:
                return None
            info, key = base
            # the baselines' columns follow the group's own columns, one method after the other
            group, *rest = key
            return replace(info, name=name, label=f"{method} baseline: {info.label}",
                           description=f"{info.description}, of the training-free {method} baseline",
                           source="alignprobe.metrics.baselines"), (group, len(_METRIC_MODULES) + 1, method, *rest)
    return None


def _rank(module: str) -> int:
    """Display rank of a declaring module (`_METRIC_MODULES` order; the pipelines' columns last)."""
    short = module.rsplit(".", 1)[-1]
    return _METRIC_MODULES.index(short) if short in _METRIC_MODULES else len(_METRIC_MODULES)


def _lookup(name: str) -> tuple[MetricInfo, tuple] | None:
    """(info, display sort key) of ``name``, or None."""
    _load()
    found = _declared(name)
    if found is not None:
        info, d = found
        key = (_rank(d.module), d.position, ())
    else:
        measure = _measure(name)
        if measure is None:
            return _baseline(name)
        info, sub = measure
        key = (_rank("measures"), 0, sub)
    return info, (GROUPS.index(info.group), *key, _number(name), name)


def _number(name: str) -> int:
    digits = re.search(r"(\d+)$", name)
    return int(digits.group(1)) if digits else 0


def metric_info(name: str) -> MetricInfo:
    """The metadata of record column ``name``; `UnknownMetricError` (with suggestions) when no
    metric declares it."""
    found = _lookup(name)
    if found is None:
        close = difflib.get_close_matches(name, list_metrics(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownMetricError(
            f"unknown metric {name!r}.{hint} Known: {', '.join(list_metrics())}; and the calibration columns "
            f"<measure>_calibrated / _p / _threshold / _null, baseline_<method>_<metric>, iou_<class>, "
            f"mmvp_<category>. A new metric is declared with @register_metric next to its function "
            f"(alignprobe.metrics.registry).")
    return found[0]


def is_metric(name: str) -> bool:
    """Whether ``name`` is a declared (or derived) metric column."""
    return _lookup(name) is not None


def sort_key(name: str) -> tuple:
    """Display order: by group, then declaration order; undeclared names last, alphabetically."""
    found = _lookup(name)
    return (1, name) if found is None else (0, found[1])


def list_metrics(group: str | None = None) -> list[str]:
    """The declared column names in display order (placeholders kept: ``knn_top1@{k}``), then the
    measures; ``group`` restricts them to one of `GROUPS`."""
    if group is not None and group not in GROUPS:
        raise ValidationError(f"unknown metric group {group!r}; choose one of {GROUPS}")
    _load()
    names = [d.info.name for d in _DECLARED] + _measures().list_measures()
    names = sorted(names, key=lambda n: sort_key(n) if "{" not in n else _template_key(n))
    return [n for n in names if group is None or _group(n) == group]


def _template_key(name: str) -> tuple:
    d = next(d for d in _DECLARED if d.info.name == name)
    return (0, (GROUPS.index(d.info.group), _rank(d.module), d.position, (), 0, name))


def _group(name: str) -> str:
    d = next((d for d in _DECLARED if d.info.name == name), None)
    return d.info.group if d is not None else metric_info(name).group


def columns(names: Iterable[str]) -> list[str]:
    """The declared concrete columns among ``names`` (e.g. a record's), in display order."""
    return sorted((n for n in names if is_metric(n)), key=sort_key)


def metric_columns(*functions: Callable) -> tuple[str, ...]:
    """The fixed-name columns the given metric functions declare, in display order (for the
    pipelines' lists of the columns an evaluation adds)."""
    sources = {f"{fn.__module__}.{fn.__qualname__}" for fn in functions}
    names = [d.info.name for d in _DECLARED if d.info.source in sources and "{" not in d.info.name]
    missing = sorted(sources - {d.info.source for d in _DECLARED})
    if missing:
        raise ValueError(f"{', '.join(missing)} declare(s) no metric; decorate them with @register_metric")
    return tuple(sorted(names, key=sort_key))
