"""A readable plain-text summary of one run record (what `alignprobe run` prints).

Similarity measures are shown as one line each (raw score, chance level, the
permutation threshold, the calibrated score and its p-value), and each
alignment metric with training-free baselines beside it as "probe vs best
baseline", so that a raw number is never read without its floor.
"""
from __future__ import annotations

import re

from alignprobe.metrics.registry import is_metric, metric_info, sort_key

_CALIBRATION_SUFFIXES = ("_null", "_threshold", "_calibrated", "_p")
_BASELINE = re.compile(r"^baseline_([A-Za-z0-9]+)_(.+)$")

def _label(key: str) -> str:
    """The metric registry's label (`alignprobe.metrics.registry`); an undeclared column keeps its name."""
    return metric_info(key).label if is_metric(key) else key


def _ordered(keys) -> list[str]:
    """Registered metrics in the registry's display order, then any other column by name."""
    keys = list(keys)
    known = sorted((k for k in keys if is_metric(k)), key=sort_key)
    return known + sorted(k for k in keys if not is_metric(k))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _calibrated_measures(metrics: dict) -> list[str]:
    return [k for k in metrics if f"{k}_calibrated" in metrics and f"{k}_p" in metrics]


def similarity_lines(metrics: dict) -> list[str]:
    """One line per calibrated measure: raw, chance (null mean), threshold, calibrated, p."""
    names = _calibrated_measures(metrics)
    if not names:
        return []
    width = max(len(n) for n in names + ["measure"])
    lines = [f"  {'measure'.ljust(width)}     raw  chance  thresh.  calibr.       p"]
    for n in names:
        vals = [metrics.get(f"{n}{s}") for s in ("", "_null", "_threshold", "_calibrated")]
        cells = "  ".join(f"{v:7.4f}" if isinstance(v, float) else f"{'–':>7}" for v in vals)
        lines.append(f"  {n.ljust(width)} {cells}  {metrics[f'{n}_p']:.4f}")
    return lines


def baseline_lines(metrics: dict) -> list[str]:
    """"probe vs best baseline" per metric that has baselines (higher is better for every such metric)."""
    best: dict[str, tuple[float, str]] = {}
    for key, value in metrics.items():
        match = _BASELINE.match(key)
        if match and match.group(2) in metrics and isinstance(value, (int, float)):
            metric, method = match.group(2), match.group(1)
            if metric not in best or value > best[metric][0]:
                best[metric] = (float(value), method)
    lines = []
    shown = _ordered(best)
    width = max([len(_label(m)) for m in shown] + [6])
    for metric in shown:
        value, method = best[metric]
        probe = float(metrics[metric])
        lines.append(f"  {_label(metric).ljust(width)} probe {probe:.4f}  "
                     f"best baseline {value:.4f} ({method})  probe - baseline {probe - value:+.4f}")
    return lines


def format_run_summary(record: dict) -> str:
    metrics = record.get("metrics", {})
    calibrated = _calibrated_measures(metrics)
    # calibrated measures and baselines get their own blocks below
    hidden = {f"{n}{s}" for n in calibrated for s in ("", *_CALIBRATION_SUFFIXES)}
    hidden |= {k for k in metrics if _BASELINE.match(k)}
    order = _ordered(k for k in metrics if k not in hidden)
    lines = [f"alignment probe: vision={record.get('vision')}  text={record.get('text')}  "
             f"seed={record.get('seed')}"]
    data = record.get("data", {})
    for role in ("pairs", "labelled_train", "labelled", "retrieval"):
        if role in data:
            info = data[role]
            skipped = info.get("skipped_images")
            lines.append(f"  {role:<9} {info.get('name')} (n={info.get('n')}"
                         + (f", {skipped} images skipped" if skipped else "") + ")")
    details = record.get("details", {})
    # Say what the numbers were measured on: the vision protocol, the similarity sample, allowed overlap.
    if details.get("vision_protocol"):
        lines.append(f"  vision quality protocol: {details['vision_protocol']}")
    if details.get("similarity_n") is not None:
        calibration = (f"calibrated at alpha = {details['similarity_alpha']:g}" if "similarity_alpha" in details
                       else "chance levels")
        lines.append(f"  similarity on {details['similarity_n']} {details.get('similarity_rows', 'held-out pairs')} "
                     f"({calibration}: {details.get('similarity_null_permutations', '?')} random pairings)")
    for role, ov in (details.get("overlap") or {}).items():
        if isinstance(ov, dict) and ov.get("n"):
            lines.append(f"  WARNING: {ov['n']} of {ov.get('n_test')} {role} images are also training images "
                         "(allow_overlap, --allow-overlap)")
    width = max([len(_label(k)) for k in order] + [6])
    lines.append("")
    lines.append(f"  {'metric'.ljust(width)}  value")
    lines.append(f"  {'-' * width}  ------")
    for key in order:
        lines.append(f"  {_label(key).ljust(width)}  "
                     f"{_fmt(metrics[key])}")
    for title, block in (("similarity (raw features, permutation-calibrated)", similarity_lines(metrics)),
                         ("probe vs training-free baselines", baseline_lines(metrics))):
        if block:
            lines += ["", f"  {title}:", *block]
    total = record.get("timings_s", {}).get("total")
    if total is not None:
        lines.append(f"\n  total time: {total:.1f} s")
    return "\n".join(lines)
