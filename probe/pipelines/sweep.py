"""`alignprobe sweep`: every pair of a vision x text grid, resumable and shardable.

Each pair is one `run_pair` call writing one record, so a rerun skips the
pairs already finished with the same config, a failing pair is recorded as
failed while the others go on, and `--shard i/n` gives n jobs disjoint,
deterministic shares of the grid that land in one results directory.
With ``run: {n_pairs: [500, 2000, all]}`` each pair is also probed on nested,
seeded subsets of its training pairs, one record per size
(`alignprobe.reports.plots.plot_alignment_vs_pairs` draws the curve).
"""
from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from alignprobe.backbones.request import EncoderRequest
from alignprobe.config import EncodeOptions
from alignprobe.console import progress
from alignprobe.errors import AlignprobeError, ValidationError
from alignprobe.probe.embeddings.cache import open_cache
from alignprobe.probe.embeddings.layers import parse_layers
from alignprobe.probe.embeddings.lazy import MEMO_DIR, EncoderPool
from alignprobe.probe.pipelines.layer_sweep import encode_layer_groups
from alignprobe.probe.pipelines.run import RunConfig, run_pair
from alignprobe.probe.pipelines.subsets import parse_n_pairs
from alignprobe.reports.records import failure_path, now_iso, read_record, record_path, write_record

log = logging.getLogger("alignprobe.sweep")


@dataclass
class SweepConfig:
    """A grid of encoders plus the run settings every pair shares."""

    vision: list[str]
    text: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    run: dict[str, Any] = field(default_factory=dict)  # RunConfig fields other than vision/text/seed

    def __post_init__(self):
        for role in ("vision", "text"):
            names = _encoder_names(getattr(self, role), role)
            if len(set(names)) != len(names):
                raise ValidationError(f"duplicate {role} encoders in the sweep: {names}")
            setattr(self, role, names)
        self.run = _run_settings(self.run)
        self.seeds = _seeds(self.seeds)
        if self.run.get("vision_layer") is not None:  # "4,8,12" or a list: each vision encoder at each layer

            self.run["vision_layer"] = parse_layers(self.run["vision_layer"])
        if "n_pairs" in self.run:  # "500,2000,all" or a list: each pair probed on each nested subset
            self.run["n_pairs"] = parse_n_pairs(self.run["n_pairs"])

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "SweepConfig":
        """Read a YAML (.yaml/.yml) or TOML (.toml) sweep file; non-None overrides win.

        Every problem is one `ValidationError` naming the file (and the key):
        a syntax error, a YAML tag that would build Python objects, a value
        of the wrong type, a run setting `RunConfig` refuses.
        """
        path = Path(path)
        data = _read_sweep_file(path)
        unknown = set(data) - {"vision", "text", "seeds", "run"}
        if unknown:
            raise ValidationError(f"sweep file {path}: unknown key(s) {sorted(unknown)}; "
                                  "valid: vision, text, seeds, run")
        data.update({k: v for k, v in overrides.items() if v is not None})
        missing = [k for k in ("vision", "text") if k not in data]
        if missing:
            raise ValidationError(f"sweep file {path}: no {' and no '.join(missing)} key; give e.g. "
                                  "vision: [dinov2-b, mae-b] and text: [minilm] (or --vision / --text)")
        try:
            config = cls(**data)
            config.pairs()  # RunConfig checks the run settings now, while the file can still be named
        except ValidationError as err:
            raise ValidationError(f"sweep file {path}: {err}") from None
        return config

    def pairs(self) -> list[RunConfig]:
        """Every (vision, layer, text, seed, n_pairs) of the grid in a fixed order."""
        run = {k: v for k, v in self.run.items() if k not in ("vision_layer", "n_pairs")}
        layers = self.run.get("vision_layer") or [None]
        sizes = self.run.get("n_pairs") or [None]
        return [RunConfig(vision=v, text=t, seed=s, vision_layer=layer, n_pairs=n, **run)
                for v in self.vision for layer in layers for t in self.text for s in self.seeds for n in sizes]


def _request_keys(config: RunConfig) -> list[tuple[str, EncoderRequest]]:
    """The pair's encoder requests with their keys; none for a name that does not resolve (that
    pair fails, and is recorded as failed, when its turn comes)."""
    try:
        return [(request.key(), request) for request in config.requests().values()]
    except AlignprobeError:
        return []


def _read_sweep_file(path: Path) -> dict:
    if not path.is_file():
        raise ValidationError(f"sweep file {path} does not exist (or is not a file)")
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ValidationError(f"sweep file {path} must end in .yaml, .yml or .toml")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValidationError(f"sweep file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    data = _parse_toml(path, text) if path.suffix == ".toml" else _parse_yaml(path, text)
    if not isinstance(data, dict):
        raise ValidationError(f"sweep file {path} must hold a mapping (vision:, text:, seeds:, run:), "
                              f"not {type(data).__name__}")
    return data


def _parse_toml(path: Path, text: str) -> dict:
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValidationError(f"sweep file {path} is not valid TOML: {err}") from None


def _parse_yaml(path: Path, text: str):
    import yaml

    try:
        # safe_load: a tag such as !!python/object would build (and run) Python objects.
        return yaml.safe_load(text) or {}
    except yaml.constructor.ConstructorError as err:
        raise ValidationError(f"sweep file {path}: {_yaml_where(err)}a tag that is not allowed "
                              f"({err.problem}); sweep files hold plain lists, mappings, strings and "
                              "numbers") from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValidationError(f"sweep file {path} is not valid YAML: {_yaml_where(err)}{problem}") from None


def _yaml_where(err) -> str:
    mark = getattr(err, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def _encoder_names(value, role: str) -> list[str]:
    """`a,b` or [a, b] -> ["a", "b"]; anything else is an error naming the key."""
    if isinstance(value, str):
        value = [n.strip() for n in value.split(",") if n.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValidationError(f"{role}: must be encoder names, a list such as [dinov2-b, mae-b] or a "
                              f"comma-separated string, got {value!r} ({type(value).__name__})")
    bad = [n for n in value if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValidationError(f"{role}: encoder names must be non-empty strings, got {bad[0]!r} "
                              f"({type(bad[0]).__name__}); quote a name that YAML reads as a number")
    if not value:
        raise ValidationError(f"the sweep needs at least one {role} encoder (--{role} a,b,c)")
    return [n.strip() for n in value]


MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds are unsigned 32-bit: -1 fails deep inside k-means


def _seeds(value) -> list[int]:
    """`0,1`, 3, [0, 1] -> a list of seeds in [0, 2**32); anything else is an error naming the key."""
    items = [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value
    if isinstance(items, (int, float)) and not isinstance(items, bool):
        items = [items]
    if not isinstance(items, (list, tuple)):
        raise ValidationError(f"seeds: must be a list of integers such as [0, 1, 2] or a comma-separated "
                              f"string, got {value!r} ({type(value).__name__})")
    seeds = [_seed(s) for s in items]
    return seeds or [0]


def _seed(item) -> int:
    number = None
    if isinstance(item, int) and not isinstance(item, bool):
        number = item
    elif isinstance(item, float) and item.is_integer():
        number = int(item)
    elif isinstance(item, str) and item.strip().lstrip("-").isdigit():
        number = int(item)
    if number is None or not 0 <= number <= MAX_SEED:
        raise ValidationError(f"seeds: {item!r} is not a seed; seeds are integers in [0, {MAX_SEED}], "
                              "e.g. seeds: [0, 1, 2]")
    return number


#: RunConfig fields that hold several values: a single string (TOML `metrics = "zero_shot"`) is one
#: item, or a comma-separated list, never a sequence of characters.
_LIST_SETTINGS = {f.name for f in fields(RunConfig) if isinstance(f.default, tuple)}


def _run_settings(run) -> dict[str, Any]:
    if run is None:
        return {}
    if not isinstance(run, dict):
        raise ValidationError(f"run: must be a mapping of run settings such as {{metrics: [zero_shot]}}, "
                              f"got {run!r} ({type(run).__name__})")
    allowed = {f.name for f in fields(RunConfig)} - {"vision", "text", "seed"}
    unknown = set(run) - allowed
    if unknown:
        raise ValidationError(f"unknown run setting(s) {sorted(unknown)} in the sweep; valid: {sorted(allowed)}")
    run = dict(run)
    for name in _LIST_SETTINGS & set(run):
        value = run[name]
        if isinstance(value, str):
            run[name] = tuple(v.strip() for v in value.split(",") if v.strip())
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            run[name] = (value,)
    return run


def shard_of(items: list, shard: tuple[int, int]) -> list:
    """The deterministic share `i` of `n`: every n-th item starting at i."""
    i, n = shard
    return items[i::n]


@dataclass
class PairOutcome:
    config: RunConfig
    status: str  # "done" | "skipped" (finished earlier) | "failed"
    path: Path | None
    error: str | None = None


def _write_failure(out_dir: str | Path, config: RunConfig, err: BaseException) -> Path:
    """Record a failed pair; beside a finished record of the same pair, never over it.

    A rerun that fails (`--force` on a machine without the device, a bad row
    added to the data) must not cost the metrics already computed; the report
    shows both the finished record and the failure.
    """
    path = record_path(out_dir, config.vision, config.text, config.config_hash())
    if _is_finished(path):
        path = failure_path(path)
    return write_record(path, {
        "kind": "probe", "status": "failed", "vision": config.vision, "text": config.text,
        "config": config.as_dict(), "config_hash": config.config_hash(),
        "group_hash": config.group_hash(), "seed": config.seed, "metrics": {},
        "error": f"{type(err).__name__}: {err}",
        "traceback": traceback.format_exc(limit=20), "finished": now_iso(),
    })


def _is_finished(path: Path) -> bool:
    try:
        return read_record(path).get("status", "ok") == "ok"  # records before `status` existed all finished
    except (OSError, AlignprobeError):  # missing or damaged: nothing finished to protect
        return False


def run_sweep(sweep: SweepConfig, *, out_dir: str | Path = "results", options: EncodeOptions | None = None,
              shard: tuple[int, int] = (0, 1), force: bool = False) -> list[PairOutcome]:
    """Run this shard's pairs of the grid; returns one outcome per pair."""

    options = options or EncodeOptions()
    todo = shard_of(sweep.pairs(), shard)
    outcomes = []
    # One pool of lazily loaded encoders for the whole grid: each loads at most once (none
    # when its embeddings are cached) and is dropped as soon as no later pair needs it.
    pool = EncoderPool(memo_dir=open_cache(options).root / MEMO_DIR, device=options.device, dtype=options.dtype,
                       trust_remote_code=options.trust_remote_code)
    last_use: dict[str, tuple[int, EncoderRequest]] = {}
    for i, config in enumerate(todo):
        for key, request in _request_keys(config):
            last_use[key] = (i, request)
    # the layers of one vision encoder are encoded together: a layer sweep costs one encode
    encode_layer_groups(todo, out_dir=out_dir, options=options, pool=pool, force=force)
    bar = progress(todo, disable=options.quiet, desc=f"sweep (shard {shard[0]}/{shard[1]})", unit="pair")
    for index, config in enumerate(bar):
        bar.set_postfix_str(f"{config.vision} x {config.text} seed {config.seed}"
                            + (f" n_pairs {config.n_pairs}" if config.n_pairs is not None else ""))
        try:
            _, path, reused = run_pair(config, out_dir=out_dir, options=options, force=force, pool=pool)
            outcomes.append(PairOutcome(config, "skipped" if reused else "done", path))
        except (AlignprobeError, RuntimeError, ValueError, OSError, MemoryError) as err:
            # One bad pair must not cost the rest of the grid: record it and go on.
            log.error("pair %s x %s (seed %d) failed: %s", config.vision, config.text, config.seed, err)
            path = _write_failure(out_dir, config, err)
            outcomes.append(PairOutcome(config, "failed", path, f"{type(err).__name__}: {err}"))
        finally:
            done = index
            for last, request in last_use.values():
                if last == done:
                    pool.release(request)
    bar.close()
    return outcomes
