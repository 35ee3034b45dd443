"""The results store: every record of a results directory as one pandas table.

One row per record (vision x text x seed x kind); every metric is its own
column, so a researcher can `df.query(...)`, pivot and plot without knowing
the JSON layout. Reports read records only; they never compute embeddings.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from alignprobe.errors import ValidationError
from alignprobe.io import atomic_path
from alignprobe.reports.metric_info import sort_metrics
from alignprobe.reports.records import iter_records
from alignprobe.reports.row_filter import filter_mask

log = logging.getLogger(__name__)

#: Rows with equal values here are seeds of one experiment (group_hash is the config hash minus the seed).
GROUP_KEYS = ("kind", "vision", "text", "group_hash")
_INFO_FIELDS = ("family", "params_m", "is_control", "dim")
#: Non-metric columns of `load_results`, in order; everything else is a metric.
BASE_COLUMNS = (
    "kind", "status", "vision", "text",
    *(f"{role}_{f}" for role in ("vision", "text") for f in _INFO_FIELDS),
    "heads", "config_hash", "group_hash", "seed", "started", "finished", "total_seconds", "error",
    "last_failure", "last_failure_at", "path",
)
#: Per-group columns of `aggregate` that are not metric statistics.
AGG_BASE_COLUMNS = (
    *GROUP_KEYS, "n_seeds", "seeds", *(f"{role}_{f}" for role in ("vision", "text") for f in _INFO_FIELDS), "heads",
)


def _heads(record: dict) -> str | None:
    """"image head / text head" of a probe or SAIL record (star heads with their
    width), so tables can tell a probe from SAIL heads on the same pair."""
    # SAIL records hold their config as "train_config" (the one engine's record); "sail_config" is
    # the name before it
    config = record.get("train_config") or record.get("sail_config") or record.get("probe_config")
    if not isinstance(config, dict) or "image_head" not in config:
        return None

    def one(kind):
        return f"{kind} w{config.get('width')}" if kind == "star" and config.get("width") else str(kind)

    image, text = config.get("image_head"), config.get("text_head", config.get("image_head"))
    return one(image) if image == text else f"{one(image)} / {one(text)}"


def _is_record(obj) -> bool:
    # A results directory may hold other JSON (sweep plans, manifests): a record names both encoders.
    return isinstance(obj, dict) and "vision" in obj and "text" in obj


def _row(path: Path, record: dict) -> dict:
    row = {
        "kind": record.get("kind", "probe"),
        # Records from before `status` existed only exist because they finished.
        "status": record.get("status", "ok"),
        "vision": record["vision"],
        "text": record["text"],
    }
    for role in ("vision", "text"):
        info = record.get(f"{role}_info") or {}
        for field in _INFO_FIELDS:
            row[f"{role}_{field}"] = info.get(field)
    # Without a group hash the seeds cannot be told apart from configs: each record is its own group.
    row.update(
        heads=_heads(record),
        config_hash=record.get("config_hash"),
        group_hash=record.get("group_hash", record.get("config_hash")),
        seed=record.get("seed"),
        started=record.get("started"),
        finished=record.get("finished"),
        total_seconds=(record.get("timings_s") or {}).get("total"),
        error=None if record.get("error") is None else str(record["error"]),
        last_failure=None,  # filled by _merge_failed_reruns
        last_failure_at=None,
        path=str(path),
    )
    # iter_records has left out records whose metrics are not a mapping of values.
    for name, value in (record.get("metrics") or {}).items():
        row[f"metric:{name}"] = value
    return row


def _numeric(column: pd.Series, name: str) -> pd.Series:
    out = pd.to_numeric(column, errors="coerce")
    bad = out.isna() & column.notna()
    if bad.any():
        log.warning("metric %r has %d non-numeric value(s); they are treated as missing", name, int(bad.sum()))
    return out.astype(float)


def load_results(results_dir: str | Path, include_failed: bool = False) -> pd.DataFrame:
    """Load every record under `results_dir` into one DataFrame.

    Columns: the `BASE_COLUMNS` (kind, status, vision, text, vision_family,
    vision_params_m, vision_is_control, vision_dim, the same for text,
    config_hash, group_hash, seed, started, finished (UTC timestamps),
    total_seconds, error, path), then one float column per metric found in
    any record, named as in the record (`kmeans_nmi`, `knn_top1@20`, ...),
    NaN where a record lacks it. Rows are sorted by kind, text, vision, seed.

    Failed records (status != "ok") are dropped unless `include_failed`.
    When two files hold the same (kind, vision, text, config_hash), the one
    that finished last is kept (a rerun supersedes), with a warning.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ValidationError(
            f"results directory {str(results_dir)!r} does not exist or is not a directory; "
            "pass the --results-dir directory of `alignprobe run` / `alignprobe sweep`."
        )
    rows, other = [], 0
    unreadable: list[tuple[Path, str]] = []
    for path, record in iter_records(results_dir, unreadable):
        if _is_record(record):
            rows.append(_row(path, record))
        else:
            other += 1
    for path, reason in unreadable:
        log.warning("left out of the results: %s", reason)
    if not rows:
        extra = f" ({other} other JSON file(s) were not result records)" if other else ""
        if unreadable:
            extra += f" ({len(unreadable)} unreadable: {', '.join(str(p) for p, _ in unreadable)})"
        raise ValidationError(
            f"no result records in {str(results_dir)!r}{extra}; run `alignprobe run` or "
            "`alignprobe sweep --out DIR` first, and point the report at that DIR."
        )
    df = pd.DataFrame(rows)
    metric_names = sort_metrics(c[len("metric:"):] for c in df.columns if c.startswith("metric:"))
    clash = [m for m in metric_names if m in BASE_COLUMNS]
    if clash:
        raise ValidationError(f"metric name(s) {clash} collide with the store's own columns; rename them")
    for name in metric_names:
        df[name] = _numeric(df.pop(f"metric:{name}"), name)
    for col in ("started", "finished", "last_failure_at"):
        df[col] = pd.to_datetime(df[col], utc=True, errors="coerce", format="ISO8601")
    for col in ("vision_params_m", "text_params_m", "total_seconds"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    for col in ("seed", "vision_dim", "text_dim"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in ("vision_is_control", "text_is_control"):
        df[col] = df[col].astype("boolean")
    df = df[list(BASE_COLUMNS) + metric_names]
    df = _merge_failed_reruns(df)

    dup = df.duplicated(subset=["kind", "vision", "text", "config_hash"], keep=False) & df["config_hash"].notna()
    if dup.any():
        log.warning("%d records share (kind, vision, text, config_hash) with another; keeping the latest "
                    "finished of each: %s", int(dup.sum()), ", ".join(df.loc[dup, "path"]))
        df = df.sort_values("finished", na_position="first")
        df = df[~df.duplicated(subset=["kind", "vision", "text", "config_hash"], keep="last")
                | df["config_hash"].isna()]
    if not include_failed:
        df = df[df["status"] == "ok"]
    df = df.sort_values(["kind", "text", "vision", "seed"], kind="stable").reset_index(drop=True)
    # Carried with the frame so a report can name and count them (pandas keeps attrs through copies).
    df.attrs["unreadable"] = [(str(p), reason) for p, reason in unreadable]
    df.attrs["results_dir"] = str(results_dir)
    return df


_RECORD_KEY = ["kind", "vision", "text", "config_hash"]


def _merge_failed_reruns(df: pd.DataFrame) -> pd.DataFrame:
    """A failed rerun of a finished record never replaces it: the finished row is kept and carries
    the failure's error and time (`last_failure`, `last_failure_at`); the failure row is dropped.

    A failure older than the finished record (the pair succeeded afterwards) is dropped silently.
    """
    keyed = df["config_hash"].notna()
    ok, failed = df[keyed & (df["status"] == "ok")], df[keyed & (df["status"] != "ok")]
    if ok.empty or failed.empty:
        return df
    done_at = ok.groupby(_RECORD_KEY, sort=False)["finished"].max()
    drop = []
    for index, row in failed.sort_values("finished", na_position="first").iterrows():
        key = tuple(row[k] for k in _RECORD_KEY)
        if key not in done_at.index:
            continue  # never finished: the failure is the pair's only fact, shown as a failed row
        drop.append(index)
        # Times have whole seconds; a tie counts as later, since a failure is written beside a record only
        # when that record already exists.
        later = pd.notna(row["finished"]) and (pd.isna(done_at[key]) or row["finished"] >= done_at[key])
        if later:  # rows are in time order, so the last failure written is the latest
            same = (df[_RECORD_KEY] == pd.Series(key, index=_RECORD_KEY)).all(axis=1) & (df["status"] == "ok")
            df.loc[same, "last_failure"] = row["error"] if isinstance(row["error"], str) else "failed"
            df.loc[same, "last_failure_at"] = row["finished"]
    return df.drop(index=drop)


def failed_reruns(df: pd.DataFrame) -> pd.DataFrame:
    """The finished rows of a `load_results` frame whose pair failed when it was run again later."""
    if "last_failure" not in df.columns:
        return df.iloc[0:0]
    return df[df["last_failure"].notna() & (df["status"] == "ok")]


def failed_reruns_note(df: pd.DataFrame) -> str | None:
    """One paragraph naming the finished records that a later rerun failed on (their metrics are shown)."""
    reruns = failed_reruns(df)
    if reruns.empty:
        return None
    items = [f"{r.vision} x {r.text} (seed {r.seed}): {r.last_failure}" for r in reruns.itertuples(index=False)]
    return (f"{len(reruns)} finished record(s) failed when rerun later; the table shows their finished metrics "
            f"(the failures are kept beside them as *.failed.json): " + "; ".join(items))


def unreadable_records(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(path, reason) of each record file `load_results` could not read (damaged JSON)."""
    return list(df.attrs.get("unreadable", []))


def results_header(df: pd.DataFrame) -> str:
    """One line for a report's head: how many records were read and how many were not."""
    bad = unreadable_records(df)
    where = df.attrs.get("results_dir", "the results")
    line = f"{len(df)} record(s) from {where}"
    if bad:
        line += f"; {len(bad)} unreadable record(s) left out: " + ", ".join(Path(p).name for p, _ in bad)
    return line


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a `load_results` frame (everything that is not a base column)."""
    return [c for c in df.columns if c not in BASE_COLUMNS]


def is_aggregated(df: pd.DataFrame) -> bool:
    return "n_seeds" in df.columns


def aggregated_metrics(agg: pd.DataFrame) -> list[str]:
    """The metric names of an `aggregate` frame (its `<metric>_mean` columns)."""
    return [c[: -len("_mean")] for c in agg.columns if c.endswith("_mean") and c not in AGG_BASE_COLUMNS]


def aggregate(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and standard deviation across seeds of each experiment.

    Groups by (kind, vision, text, group_hash). Columns: those four,
    `n_seeds` (records in the group), `seeds` (sorted, as a comma-separated
    string), the encoders' info columns, then `<metric>_mean` and
    `<metric>_std` for each metric (all metrics when `metrics` is None).
    The std is the sample standard deviation (ddof=1): NaN for one seed, so
    "no spread measured" is never shown as a spread of zero. NaN metric
    values (a seed that lacks the metric) are left out of both.
    """
    if is_aggregated(df):
        raise ValidationError("this frame is already aggregated; pass the output of load_results")
    if df.empty:
        raise ValidationError("no rows to aggregate (all records filtered out or failed?)")
    available = metric_columns(df)
    if metrics is None:
        metrics = available
    else:
        metrics = list(metrics)
        missing = [m for m in metrics if m not in available]
        if missing:
            raise ValidationError(f"metric(s) {missing} not in the results; available: {', '.join(available)}")
    keys = list(GROUP_KEYS)
    # group_hash may be missing in hand-made records; NaN keys must still form groups.
    grouped = df.groupby(keys, dropna=False, sort=True)
    info_cols = [c for c in AGG_BASE_COLUMNS if c.startswith(("vision_", "text_")) or c == "heads"]
    out = grouped[info_cols].first()
    out.insert(0, "n_seeds", grouped.size())
    out.insert(1, "seeds", grouped["seed"].agg(_seed_list))
    if metrics:
        stats = grouped[metrics].agg(["mean", "std"])
        stats.columns = [f"{m}_{s}" for m, s in stats.columns]
        out = out.join(stats)
    return out.reset_index()


def _seed_list(seeds: pd.Series) -> str:
    return ",".join(str(s) for s in sorted(seeds.dropna().unique()))


def as_results(df_or_dir: pd.DataFrame | str | Path) -> pd.DataFrame:
    """A `load_results` frame from either a frame or a results directory."""
    if isinstance(df_or_dir, pd.DataFrame):
        if df_or_dir.empty:
            raise ValidationError("the results frame is empty (all records filtered out or failed?)")
        return df_or_dir
    return load_results(df_or_dir)


def filter_rows(df: pd.DataFrame, rows: str | Iterable[str] | None) -> pd.DataFrame:
    """Keep the rows named by `rows`: vision encoder names, or a filter on the store's columns.

    A single string that names a vision encoder of the frame (or is a
    comma-separated list of them) is taken as names, anything else as a
    filter of `alignprobe.reports.row_filter` (columns compared with
    literals, e.g. "vision_family == 'dinov2' and text == 'minilm'");
    nothing in it is ever run as code.
    """
    if rows is None:
        return df
    visions = set(df["vision"])
    if isinstance(rows, str):
        parts = [p.strip() for p in rows.split(",") if p.strip()]
        if parts and (all(p in visions for p in parts) or ("," in rows and not _has_comparison(rows))):
            rows = parts  # names; unknown ones are named below
        else:
            out = df[_mask_or_names_hint(df, rows, visions)]
            if out.empty:
                raise ValidationError(f"rows {rows!r} (--rows) selects no rows (vision encoders present: "
                                      f"{', '.join(sorted(map(str, visions)))})")
            return out
    rows = list(rows)
    unknown = [r for r in rows if r not in visions]
    if unknown:
        raise ValidationError(
            f"vision encoder(s) {unknown} are not in these results; present: {', '.join(sorted(visions))}"
        )
    return df[df["vision"].isin(rows)]


def _has_comparison(rows: str) -> bool:
    return re.search(r"[=<>]|\bin\b", rows) is not None


def _mask_or_names_hint(df: pd.DataFrame, rows: str, visions: set) -> pd.Series:
    try:
        return filter_mask(df, rows)
    except ValidationError as err:
        if _has_comparison(rows):
            raise
        # No comparison at all: most likely a mistyped encoder name (`dinov2-bb`), not a filter.
        raise ValidationError(f"rows {rows!r} (--rows) names no vision encoder of these results (present: "
                              f"{', '.join(sorted(map(str, visions)))}), and as a filter: {err}") from None


def export_results(df: pd.DataFrame, path: str | Path) -> Path:
    """Write `df` to Parquet (`.parquet`, `.pq`) or CSV (`.csv`, `.tsv`) by suffix, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv", ".tsv"):
        raise ValidationError(f"cannot tell the format of {str(path)!r}: use a .parquet, .pq, .csv or .tsv suffix")
    with atomic_path(path) as tmp:
        if suffix in (".parquet", ".pq"):
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False, sep="\t" if suffix == ".tsv" else ",")
    return path


def points(df: pd.DataFrame, metrics: Sequence[str], *, kind: str | None = "probe",
           text: str | None = None) -> pd.DataFrame:
    """Seed-averaged metric values per (vision, text) pair, one row each, for plots.

    Raises when one (vision, text) pair has several configurations (group
    hashes): averaging different configs would be a wrong point, so the
    caller must pick one with a filter first.
    """
    if is_aggregated(df):
        agg = df
    else:
        agg = aggregate(df, [m for m in metrics if m in metric_columns(df)])
    if kind is not None:
        kinds = sorted(agg["kind"].dropna().unique())
        if kind not in kinds:
            raise ValidationError(f"no records of kind {kind!r}; kinds present: {', '.join(kinds)}")
        agg = agg[agg["kind"] == kind]
    if text is not None:
        texts = sorted(agg["text"].unique())
        if text not in texts:
            raise ValidationError(f"text encoder {text!r} is not in these results; present: {', '.join(texts)}")
        agg = agg[agg["text"] == text]
    dup = agg.duplicated(subset=["kind", "vision", "text"], keep=False)
    if dup.any():
        raise ValidationError(_several_configs_message(agg[dup]))
    cols = ["vision", "text", "vision_family", "vision_is_control", "n_seeds"]
    out = agg[cols].copy()
    for m in metrics:
        out[m] = agg[f"{m}_mean"] if f"{m}_mean" in agg.columns else np.nan
    return out.reset_index(drop=True)


def _several_configs_message(dup: pd.DataFrame) -> str:
    # Name the hashes: the fix is a filter on one of them, which the user can then copy.
    pairs = sorted({f"{v} x {t}" for v, t in dup[["vision", "text"]].itertuples(index=False)})
    hashes = sorted({str(h) for h in dup["group_hash"].dropna()})
    example = f"--rows \"group_hash == '{hashes[0]}'\"" if hashes else "--rows \"heads == 'linear'\""
    return (f"{', '.join(pairs)} ha{'s' if len(pairs) == 1 else 've'} results for several configurations "
            f"(group_hash {', '.join(hashes)}); keep one per pair first, e.g. `alignprobe plot` / `report` "
            f"with {example}, or rows=... in Python")
