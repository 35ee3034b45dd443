"""`alignprobe sweep`: every pair of a vision x text grid, resumable and shardable.

Each pair is one `run_pair` call writing one record, so a rerun skips the
pairs already finished with the same config, a failing pair is recorded as
failed while the others go on, and `--shard i/n` gives n jobs disjoint,
deterministic shares of the grid that land in one results directory.
"""
from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from alignprobe.config import EncodeOptions
from alignprobe.errors import AlignprobeError, ValidationError
from alignprobe.probe.pipelines.layer_sweep import encode_layer_groups
from alignprobe.probe.pipelines.run import RunConfig, run_pair

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
            names = getattr(self, role)
            if isinstance(names, str):
                names = [n.strip() for n in names.split(",") if n.strip()]
                setattr(self, role, names)
            if not names:
                raise ValidationError(f"the sweep needs at least one {role} encoder (--{role} a,b,c)")
            if len(set(names)) != len(names):
                raise ValidationError(f"duplicate {role} encoders in the sweep: {names}")
        allowed = {f.name for f in fields(RunConfig)} - {"vision", "text", "seed"}
        unknown = set(self.run) - allowed
        if unknown:
            raise ValidationError(f"unknown run setting(s) {sorted(unknown)} in the sweep; valid: {sorted(allowed)}")
        self.seeds = [int(s) for s in self.seeds] or [0]
        if self.run.get("vision_layer") is not None:  # "4,8,12" or a list: each vision encoder at each layer
            from alignprobe.probe.embeddings.layers import parse_layers

            self.run["vision_layer"] = parse_layers(self.run["vision_layer"])

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "SweepConfig":
        """Read a YAML (.yaml/.yml) or TOML (.toml) sweep file; non-None overrides win."""
        path = Path(path)
        if not path.exists():
            raise ValidationError(f"sweep file {path} does not exist")
        text = path.read_text()
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ValidationError(f"sweep file {path} must end in .yaml, .yml or .toml")
        if not isinstance(data, dict):
            raise ValidationError(f"sweep file {path} must hold a mapping (vision:, text:, seeds:, run:)")
        unknown = set(data) - {"vision", "text", "seeds", "run"}
        if unknown:
            raise ValidationError(f"sweep file {path}: unknown key(s) {sorted(unknown)}; "
                                  "valid: vision, text, seeds, run")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def pairs(self) -> list[RunConfig]:
        """Every (vision, text, seed) of the grid in a fixed order."""
        run = {k: v for k, v in self.run.items() if k != "vision_layer"}
        layers = self.run.get("vision_layer") or [None]
        return [RunConfig(vision=v, text=t, seed=s, vision_layer=layer, **run)
                for v in self.vision for layer in layers for t in self.text for s in self.seeds]


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


def run_sweep(sweep: SweepConfig, *, out_dir: str | Path = "results", options: EncodeOptions | None = None,
              shard: tuple[int, int] = (0, 1), force: bool = False) -> list[PairOutcome]:
    """Run this shard's pairs of the grid; returns one outcome per pair."""
    from alignprobe.console import progress

    from alignprobe.reports.records import now_iso, record_path, write_record

    options = options or EncodeOptions()
    todo = shard_of(sweep.pairs(), shard)
    outcomes = []
    # One pool of lazily loaded encoders for the whole grid: each loads at most once (none
    # when its embeddings are cached) and is dropped as soon as no later pair needs it.
    pool: dict = {}
    last_use: dict = {}
    for i, config in enumerate(todo):
        for key in (("vision", config.vision, config.vision_pooling, config.vision_layer),
                    ("text", config.text, config.text_pooling)):
            last_use[key] = i
    # the layers of one vision encoder are encoded together: a layer sweep costs one encode
    encode_layer_groups(todo, out_dir=out_dir, options=options, pool=pool, force=force)
    bar = progress(todo, disable=options.quiet, desc=f"sweep (shard {shard[0]}/{shard[1]})", unit="pair")
    for index, config in enumerate(bar):
        bar.set_postfix_str(f"{config.vision} x {config.text} seed {config.seed}")
        try:
            _, path, reused = run_pair(config, out_dir=out_dir, options=options, force=force, encoders=pool)
            outcomes.append(PairOutcome(config, "skipped" if reused else "done", path))
        except (AlignprobeError, RuntimeError, ValueError, OSError, MemoryError) as err:
            # One bad pair must not cost the rest of the grid: record it and go on.
            log.error("pair %s x %s (seed %d) failed: %s", config.vision, config.text, config.seed, err)
            path = record_path(out_dir, config.vision, config.text, config.config_hash())
            write_record(path, {
                "kind": "probe", "status": "failed", "vision": config.vision, "text": config.text,
                "config": config.as_dict(), "config_hash": config.config_hash(),
                "group_hash": config.group_hash(), "seed": config.seed, "metrics": {},
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(limit=20), "finished": now_iso(),
            })
            outcomes.append(PairOutcome(config, "failed", path, f"{type(err).__name__}: {err}"))
        finally:
            done = index
            for key in [k for k, last in last_use.items() if last == done and k in pool]:
                pool.pop(key).release()
    bar.close()
    return outcomes
