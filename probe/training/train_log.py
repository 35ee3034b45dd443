"""Training logs: one row per step and per epoch, as CSV and JSON Lines, and TensorBoard or W&B on request.

Files in the run directory: ``log_steps.csv``, ``log_epochs.csv`` and
``log.jsonl`` (both kinds of rows, tagged ``"kind": "step" | "epoch"``). A
resumed run first drops the rows written after its checkpoint, so the logs of
a killed-and-resumed run read like those of an uninterrupted one.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import logging
import math
from pathlib import Path
from typing import Any

from alignprobe.errors import ValidationError
from alignprobe.io import write_text_atomic

log = logging.getLogger("alignprobe.train")

STEP_FIELDS = ("step", "epoch", "batch", "loss", "lr", "grad_norm", "logit_scale", "logit_bias",
               "samples_per_s", "seconds")
STEPS_CSV, EPOCHS_CSV, JSONL = "log_steps.csv", "log_epochs.csv", "log.jsonl"


#: ``log_to`` backend -> (module it needs, the pip extra that installs it)
BACKENDS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def check_backend(name: str) -> None:
    """Fail now, with the install command, when the logging backend ``name`` is not installed."""
    if name not in BACKENDS:
        raise ValidationError(f"log_to (--log-to) must be one of {sorted(BACKENDS)}, got {name!r}")
    module, extra = BACKENDS[name]
    if importlib.util.find_spec(module) is None:
        raise ValidationError(f"log_to={name!r} (--log-to) needs the {module!r} package, which is not installed; "
                              f"install it with: pip install \"alignprobe[{extra}]\"")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class TrainLog:
    """Writes the logs of one run; does nothing on ranks other than the main one."""

    def __init__(self, run_dir: str | Path | None, enabled: bool = True, backend: str | None = None,
                 resume_step: int | None = None, run_config: dict | None = None):
        self.enabled = enabled and run_dir is not None
        self.dir = Path(run_dir) if run_dir is not None else None
        self.epochs: list[dict] = []
        self._tb = self._wandb = None
        if backend is not None:
            check_backend(backend)
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            for name in (STEPS_CSV, EPOCHS_CSV, JSONL):
                (self.dir / name).unlink(missing_ok=True)
        else:
            self._truncate(resume_step)
        new_file = not (self.dir / STEPS_CSV).exists()
        self._steps_fh = open(self.dir / STEPS_CSV, "a", newline="")
        self._steps = csv.DictWriter(self._steps_fh, fieldnames=STEP_FIELDS, extrasaction="ignore")
        if new_file:
            self._steps.writeheader()
        self._jsonl = open(self.dir / JSONL, "a")
        if backend == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=resume_step)
        elif backend == "wandb":
            import wandb

            # One W&B run per run directory, resumed with it; WANDB_MODE=offline is honoured by wandb itself.
            run_id = "alignprobe-" + hashlib.sha1(str(self.dir.resolve()).encode()).hexdigest()[:12]
            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "alignprobe"), id=run_id,
                                     resume="allow", dir=str(self.dir), config=run_config or {},
                                     name=self.dir.name)

    def _truncate(self, step: int) -> None:
        jsonl = self.dir / JSONL
        if jsonl.exists():
            rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
            rows = [r for r in rows if r.get("step", 0) <= step]
            write_text_atomic(jsonl, "".join(json.dumps(r) + "\n" for r in rows))
            self.epochs = [r for r in rows if r.get("kind") == "epoch"]
        steps = self.dir / STEPS_CSV
        if steps.exists():
            with open(steps, newline="") as fh:
                kept = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
            with open(steps, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=STEP_FIELDS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(kept)
        self._write_epochs()

    def step(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {k: _clean(v) for k, v in row.items()}
        self._steps.writerow(row)
        self._steps_fh.flush()
        self._jsonl.write(json.dumps({"kind": "step", **row}) + "\n")
        self._jsonl.flush()
        scalars = {f"train/{k}": row[k] for k in ("loss", "lr", "grad_norm", "logit_scale", "logit_bias",
                                                  "samples_per_s") if row.get(k) is not None}
        self._scalars(scalars, row["step"])

    def epoch(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {k: _clean(v) for k, v in row.items()}
        self.epochs.append({"kind": "epoch", **row})
        self._jsonl.write(json.dumps({"kind": "epoch", **row}) + "\n")
        self._jsonl.flush()
        self._write_epochs()
        self._scalars({f"epoch/{k}": v for k, v in row.items() if k not in ("epoch", "step")
                       and isinstance(v, (int, float)) and not isinstance(v, bool)}, row["step"])
        if self._tb is not None:
            self._tb.flush()

    def _scalars(self, values: dict[str, float], step: int) -> None:
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None and values:
            self._wandb.log(values, step=step)

    def _write_epochs(self) -> None:
        fields: list[str] = []
        for r in self.epochs:
            fields += [k for k in r if k != "kind" and k not in fields]
        if not self.epochs:
            (self.dir / EPOCHS_CSV).unlink(missing_ok=True)
            return
        with open(self.dir / EPOCHS_CSV, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.epochs)

    def close(self) -> None:
        if not self.enabled:
            return
        self._steps_fh.close()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
