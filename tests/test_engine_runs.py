"""The one training engine as `run` / `sweep` use it: recipes in the record, resumable, never stale, lazy."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alignprobe.backbones.request import EncoderRequest
from alignprobe.config import EncodeOptions
from alignprobe.probe.embeddings import lazy
from alignprobe.probe.pipelines.run import RunConfig, run_pair
from alignprobe.probe.pipelines.sweep import SweepConfig, run_sweep
from alignprobe.probe.training import config as training_config
from alignprobe.probe.training import engine
from alignprobe.probe.training.precision import native_bf16
from conftest import Killed
from helpers import invoke, save_hf_vision

# the splits of one population (n=150) are disjoint; those of different n would share images
DATA = dict(pairs="shapes:train?n=150", labelled="shapes:test?n=150", retrieval="shapes:test?n=150")
TINY = {"out_dim": 16}  # small heads keep the 2-core CI fast; the recipe is otherwise untouched
OPTIONS = EncodeOptions(quiet=True, device="cpu")


def record_of(out) -> dict:
    [path] = list(out.glob("probe__*.json"))
    return json.loads(path.read_text())


def test_forced_preset_records_the_reference_recipe(tmp_path):
    out = tmp_path / "results"
    result = invoke("run", "--vision", "pixels-8", "--text", "bow", "--preset", "sail-probe", "--epochs", "1",
                    "--metrics", "zero_shot", "--out", out, "-q",
                    *[a for k, v in DATA.items() for a in (f"--{k}", v)])
    assert result.exit_code == 0, result.output
    record = record_of(out)
    cfg = record["probe_config"]
    assert (cfg["optimizer"], cfg["lr"], cfg["weight_decay"], cfg["batch_size"], cfg["warmup_fraction"],
            cfg["betas"], cfg["val_fraction"], cfg["image_head"], cfg["out_dim"]) == \
        ("lion", 1e-5, 1e-7, 32768, 0.1, [0.9, 0.99], 0.0, "linear", 2048)
    details = record["details"]
    assert details["preset"] == "sail-probe" and details["preset_forced"] is True
    # the only change is the flag the user gave; no small-data adaptation under a forced preset
    assert details["recipe_changes"] == [{"field": "epochs", "reference": 100, "used": 1, "why": "set explicitly"}]
    assert "probe_val_loss" not in record["metrics"]  # no held-out split: nothing to report


@pytest.mark.slow  # a full run; test_schedules covers small_data_changes
def test_small_data_adaptation_is_printed_and_recorded(tmp_path, caplog):
    config = RunConfig(vision="pixels-8", text="bow", metrics=("zero_shot",), train=dict(TINY, epochs=2), **DATA)
    with caplog.at_level("INFO", logger="alignprobe.run"):
        record, _, reused = run_pair(config, out_dir=tmp_path, options=OPTIONS)
    changes = {c["field"]: c for c in record["details"]["recipe_changes"]}
    bf16 = {"precision"} if native_bf16("cpu") else set()  # mixed precision where the CPU has bf16 instructions
    assert not reused and set(changes) == {"batch_size", "lr", "patience", "min_rel_delta", "val_fraction", "epochs",
                                           "out_dim", "drop_last", "norm_bias_init", "optimizer"} | bf16
    assert changes["lr"]["reference"] == 1e-5 and changes["lr"]["used"] == 1e-2
    assert changes["optimizer"]["reference"] == "lion" and changes["optimizer"]["used"] == "adamw"
    assert changes["norm_bias_init"]["reference"] == "zeros" and changes["norm_bias_init"]["used"] == "center"
    assert "small data" in changes["batch_size"]["why"] and changes["out_dim"]["why"] == "set explicitly"
    printed = [r.getMessage() for r in caplog.records if "recipe change" in r.getMessage()]
    assert len(printed) == len(changes) and any("lr = 0.01 instead of the reference's 1e-05" in m for m in printed)
    # shapes has three captions an image: every one of them was trained on
    assert record["details"]["train_captions"] == 3 * record["details"]["train_images"]


@pytest.mark.slow  # a full CLI run; the reference recipe (val_fraction 0) runs in the other engine tests
def test_val_fraction_zero_runs(tmp_path):
    result = invoke("run", "--vision", "pixels-8", "--text", "bow", "--val-fraction", "0", "--epochs", "2",
                    "--norm-bias-init", "zeros", "--metrics", "zero_shot,similarity", "--out", tmp_path, "-q",
                    *[a for k, v in DATA.items() for a in (f"--{k}", v)])
    assert result.exit_code == 0, result.output
    record = record_of(tmp_path)
    assert record["probe_config"]["val_fraction"] == 0.0 and record["metrics"]["probe_epochs"] == 2
    # the flag reaches `run` and wins over the small-data recipe's centred start: the reference's
    # zeros, so no deviation is recorded for it
    assert record["probe_config"]["norm_bias_init"] == "zeros"
    assert "norm_bias_init" not in {c["field"] for c in record["details"]["recipe_changes"]}
    assert 0.0 <= record["metrics"]["zero_shot_top1"] <= 1.0


@pytest.mark.slow  # two full runs; the resume tests of test_sail_training and test_schedules cover resuming
def test_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch, kill_at_step):
    train = dict(TINY, epochs=4, checkpoint_seconds=0.0, batch_size=40)  # checkpoint every epoch
    config = RunConfig(vision="pixels-8", text="bow", metrics=("zero_shot", "retrieval"), train=train, **DATA)
    kept = {}
    real_finish = engine.Trainer._finish

    def capture(self, state, best_state):
        real_finish(self, state, best_state)
        kept[len(kept)] = {k: v.clone() for k, v in self.model_.state_dict().items()}

    monkeypatch.setattr(engine.Trainer, "_finish", capture)
    whole, _, _ = run_pair(config, out_dir=tmp_path / "a", options=OPTIONS)

    calls = kill_at_step(7)  # in epoch 3 (3 steps an epoch): epochs 1 and 2 are checkpointed
    with pytest.raises(Killed):
        run_pair(config, out_dir=tmp_path / "b", options=OPTIONS)
    [ckpt] = list((tmp_path / "b" / ".checkpoints").iterdir())
    assert json.loads((ckpt / "checkpoints" / "latest.json").read_text())["step"] == 6
    kill_at_step(None)
    resumed, _, reused = run_pair(config, out_dir=tmp_path / "b", options=OPTIONS)
    assert not reused and calls["n"] == 7
    assert all(torch.equal(kept[0][k], kept[1][k]) for k in kept[0])  # bit for bit on CPU
    assert resumed["metrics"] == whole["metrics"]
    assert not (tmp_path / "b" / ".checkpoints").exists()  # removed once the record is written


@pytest.mark.parametrize("change", ["storage_dtype", "vision_pooling", "training_default"])
def test_changed_inputs_or_defaults_never_reuse_an_old_record(tmp_path, monkeypatch, tiny_model, change):
    # the pixel controls take no pooling: a tiny DINOv2 does, and encodes three sets in a second
    vision = str(tiny_model("dinov2")) if change == "vision_pooling" else "pixels-8"
    config = RunConfig(vision=vision, text="bow", metrics=("zero_shot",), train=dict(TINY, epochs=1), **DATA)
    first, path, reused = run_pair(config, out_dir=tmp_path, options=OPTIONS)
    assert not reused
    assert run_pair(config, out_dir=tmp_path, options=OPTIONS)[2]  # same inputs: reused
    options = OPTIONS
    if change == "storage_dtype":
        options = EncodeOptions(quiet=True, device="cpu", storage_dtype="fp32")
    elif change == "vision_pooling":
        config = RunConfig(vision=vision, text="bow", metrics=("zero_shot",), train=dict(TINY, epochs=1),
                           vision_pooling="cls", **DATA)
    else:
        presets = {name: dict(values) for name, values in training_config.PRESETS.items()}
        presets["sail-probe"]["weight_decay"] = 1e-3
        monkeypatch.setattr(training_config, "PRESETS", presets)
        monkeypatch.setattr("alignprobe.probe.pipelines.workspace.PRESETS", presets)
    second, _, reused = run_pair(config, out_dir=tmp_path, options=options)
    assert not reused and second["reuse_key"] != first["reuse_key"]


def test_cached_sweep_rerun_loads_no_model(tmp_path, monkeypatch, tiny_model):
    loads = []
    real_load = lazy.LazyEncoder.load

    def counting_load(self):
        if self._encoder is None:
            loads.append((self.modality, self.name))
        return real_load(self)

    monkeypatch.setattr(lazy.LazyEncoder, "load", counting_load)
    bert = str(tiny_model("bert"))  # a transformers text model, tiny: loading it is what is counted
    sweep = SweepConfig(vision=["pixels-8", "hog-16"], text=["bow", bert],
                        run=dict(metrics=("zero_shot",), train=dict(TINY, epochs=1), **DATA))
    outcomes = run_sweep(sweep, out_dir=tmp_path / "results", options=OPTIONS)
    assert [o.status for o in outcomes] == ["done"] * 4
    assert sorted(loads) == sorted({("vision", "pixels-8"), ("vision", "hog-16"), ("text", "bow"),
                                    ("text", bert)})  # each encoder loaded once for the whole grid
    loads.clear()
    assert [o.status for o in run_sweep(sweep, out_dir=tmp_path / "results", options=OPTIONS)] == ["skipped"] * 4
    assert loads == []  # finished records: nothing loads
    # records gone, embeddings cached: the pairs are recomputed from the cache, still without a model
    for path in (tmp_path / "results").glob("*.json"):
        path.unlink()
    assert [o.status for o in run_sweep(sweep, out_dir=tmp_path / "results", options=OPTIONS)] == ["done"] * 4
    assert loads == []


def test_lazy_encoder_memo_answers_without_loading(tmp_path):
    bow = EncoderRequest.create("text", "bow")
    first = lazy.LazyEncoder(bow, memo_dir=tmp_path, device="cpu")
    manifest = first.manifest()  # no memo yet: loads once and writes it
    assert first.is_loaded and first.loads == 1
    second = lazy.LazyEncoder(bow, memo_dir=tmp_path, device="cpu")
    assert second.manifest() == manifest and not second.is_loaded
    assert second.encode(["a red circle"]).shape[0] == 1 and second.is_loaded  # real use loads it
    other = lazy.LazyEncoder(EncoderRequest.create("vision", "pixels-8"), memo_dir=tmp_path, device="cpu")
    assert other.identity_key() != first.identity_key()


def test_tensorboard_event_files_are_written(tmp_path):
    img = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    txt = img[:, :6] + 0.1
    config = training_config.TrainConfig(out_dim=8, epochs=2, batch_size=32, lr=1e-3, log_to="tensorboard",
                                         device="cpu", checkpoint_every=None)
    engine.Trainer(config, tmp_path / "run", quiet=True).fit(img, txt)
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/logit_scale", "train/logit_bias"} <= tags
    assert len(acc.Scalars("train/loss")) == 4  # 2 steps an epoch, 2 epochs


def test_log_backend_missing_names_the_extra(monkeypatch):
    from alignprobe.errors import ValidationError
    from alignprobe.probe.training import train_log

    real = train_log.importlib.util.find_spec
    monkeypatch.setattr(train_log.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ValidationError, match=r'pip install "alignprobe\[wandb\]"'):
        train_log.check_backend("wandb")


def test_a_layer_sweep_costs_one_encode(tmp_path, monkeypatch):
    model_dir = save_hf_vision(tmp_path / "dinov2", num_hidden_layers=3)
    base_loads, lazy_loads = [], []
    real_build, real_load = EncoderRequest.build, lazy.LazyEncoder.load

    def counting_build(self, **kwargs):
        if self.modality == "vision":
            base_loads.append(self.name)
        return real_build(self, **kwargs)

    def counting_load(self):
        if self._encoder is None and self.modality == "vision":
            lazy_loads.append(self.name)
        return real_load(self)

    monkeypatch.setattr(EncoderRequest, "build", counting_build)
    monkeypatch.setattr(lazy.LazyEncoder, "load", counting_load)
    sweep = SweepConfig(vision=[str(model_dir)], text=["bow"],
                        run=dict(metrics=("zero_shot",), train=dict(TINY, epochs=1), vision_layer="1,2", **DATA))
    outcomes = run_sweep(sweep, out_dir=tmp_path / "results", options=OPTIONS)
    assert [(o.config.vision_layer, o.status) for o in outcomes] == [(1, "done"), (2, "done")]
    assert base_loads == [str(model_dir)] and lazy_loads == []  # one load, one pass for both layers
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "results").glob("probe__*.json"))]
    assert sorted(r["config"]["vision_layer"] for r in records) == [1, 2]
    assert len({r["encoders"]["vision"]["name"] for r in records}) == 2  # each layer its own cache identity
    base_loads.clear()
    assert [o.status for o in run_sweep(sweep, out_dir=tmp_path / "results", options=OPTIONS)] == ["skipped"] * 2
    assert base_loads == [] and lazy_loads == []


ALLOCATOR_PROBE = """
import resource, sys
from alignprobe._allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "1" else False
import numpy as np
a = np.ones(64 * 2**20 // 8); del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    a = np.ones(64 * 2**20 // 8); del a
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc's mallopt")
def test_the_allocator_keeps_freed_memory_without_environment_variables():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

    def run(flag, **extra):
        out = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE, flag], env={**env, **extra},
                             capture_output=True, text=True, check=True).stdout.split()
        return out[0] == "True", int(out[1])

    applied, kept_faults = run("1")
    if not applied:
        pytest.skip("not glibc: mallopt unavailable")
    _, default_faults = run("0")
    # five 64 MiB arrays: by default each is mapped afresh and faulted in; kept, the heap's pages are reused
    assert kept_faults * 10 < default_faults
    assert run("1", MALLOC_MMAP_MAX_="65536")[0] is False  # the user's own setting wins


def test_gpu_check_exits_cleanly_without_cuda(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout and not out.exists()


@pytest.mark.slow
def test_gpu_check_cpu_smoke_runs_every_section_through_the_engine(tmp_path):
    """The GPU check runs only where a device is lent, rarely; its CPU smoke mode runs the same
    sections at toy size, so the script cannot rot between those sessions: the encoders' half
    precision against fp32, the sail-probe and sail presets through the public Trainer."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(script), "--cpu-smoke", "--out", str(out)], capture_output=True,
                          text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    sections = json.loads(out.read_text())["sections"]
    assert all(result["bf16"]["ok"] for name, result in sections["encode"].items() if name != "section_seconds")
    bf16 = sections["sail_probe"]["runs"]["bf16"]
    assert bf16["steps"] >= 2 and bf16["steps_per_s"] > 0 and 0 < bf16["fraction_of_peak"] <= 1
    assert all(np.isfinite(bf16["train_loss"]))
    assert sections["sail"]["one_step_s"] > 0 and "error" not in sections["sail"]
    assert sections["nccl"] == {"skipped": "--cpu-smoke", "section_seconds": sections["nccl"]["section_seconds"]}


def test_relative_run_and_results_directories_as_the_readme_types_them(tmp_path, monkeypatch):
    """`run`'s default `--results-dir results` and `train --run-dir runs/x` are relative paths; the
    checkpoint store resolves the paths it hands out, so the model file's weights path must be taken
    relative to the resolved run directory (a regression: both commands failed at the first save)."""
    monkeypatch.chdir(tmp_path)
    data = [a for k, v in DATA.items() for a in (f"--{k}", v)]
    result = invoke("run", "--vision", "pixels-8", "--text", "bow", "--epochs", "1",
                    "--metrics", "zero_shot", "-q", *data)  # --results-dir: its default, `results`
    assert result.exit_code == 0, result.output
    assert record_of(tmp_path / "results")["metrics"]["zero_shot_top1"] is not None
    result = invoke("train", "--vision", "pixels-8", "--text", "bow", "--epochs", "1", "--dim", "16",
                    "--head", "linear", "--run-dir", "runs/x", "--pairs", DATA["pairs"], "-q")
    assert result.exit_code == 0, result.output
    aligned = json.loads((tmp_path / "runs" / "x" / "aligned.json").read_text())
    assert not aligned["weights"].startswith("/") and (tmp_path / "runs" / "x" / aligned["weights"]).is_file()
    from alignprobe import load_aligned

    model = load_aligned("runs/x")  # relative, as `eval --model runs/x` passes it
    assert model.encode_text(["a red circle"]).shape == (1, 16)
