"""Sweeps: 3 vision x 2 text on controls, rerun does nothing, failures isolated, shards cover the grid."""
from __future__ import annotations

import pytest

from alignprobe.config import EncodeOptions
from alignprobe.errors import ValidationError
from alignprobe.probe.pipelines import sweep as sweep_module
from alignprobe.probe.pipelines.sweep import SweepConfig, run_sweep
from alignprobe.reports.store import load_results

RUN = {"pairs": "shapes:train?n=60", "metrics": ("similarity",)}


@pytest.fixture
def grid(tiny_model):
    """3 vision x 2 text: the controls and a tiny transformers text model (a real loader, fast)."""
    return dict(vision=["pixels-8", "pixels", "hog-16"], text=["bow", str(tiny_model("bert"))], run=RUN)


def rows(results_dir):
    df = load_results(results_dir)
    return sorted(zip(df["vision"], df["text"], df["seed"], df["mutual_knn"].round(10)))


def test_sweep_rerun_failure_and_shards(tmp_path, monkeypatch, grid):
    options = EncodeOptions(quiet=True)
    real = sweep_module.run_pair

    def failing(config, **kwargs):
        if (config.vision, config.text) == ("hog-16", "bow"):
            raise RuntimeError("planted failure")
        return real(config, **kwargs)

    monkeypatch.setattr(sweep_module, "run_pair", failing)
    full = tmp_path / "full"
    outcomes = run_sweep(SweepConfig(**grid), out_dir=full, options=options)
    assert sorted(o.status for o in outcomes) == ["done"] * 5 + ["failed"]
    assert len(load_results(full)) == 5  # the failing pair left the other five intact
    failed = load_results(full, include_failed=True)
    assert "planted failure" in failed.loc[failed["status"] == "failed", "error"].iloc[0]

    monkeypatch.setattr(sweep_module, "run_pair", real)
    again = run_sweep(SweepConfig(**grid), out_dir=full, options=options)
    assert sorted(o.status for o in again) == ["done"] + ["skipped"] * 5  # only the failed pair reruns

    sharded = tmp_path / "sharded"
    a = run_sweep(SweepConfig(**grid), out_dir=sharded, options=options, shard=(0, 2))
    b = run_sweep(SweepConfig(**grid), out_dir=sharded, options=options, shard=(1, 2))
    assert {(o.config.vision, o.config.text) for o in a}.isdisjoint({(o.config.vision, o.config.text) for o in b})
    assert rows(sharded) == rows(full)


def test_sweep_file_and_bad_input(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("vision: [pixels, hog]\ntext: [bow]\nseeds: [0, 1]\nrun: {metrics: [similarity]}\n")
    cfg = SweepConfig.from_file(path)
    assert len(cfg.pairs()) == 4 and cfg.pairs()[0].metrics == ("similarity",)
    bad = tmp_path / "bad.yaml"
    bad.write_text("vision: [pixels]\ntext: [bow]\nepochs: 3\n")
    with pytest.raises(ValidationError, match=r"unknown key\(s\) \['epochs'\]; valid: vision, text, seeds, run"):
        SweepConfig.from_file(bad)
    with pytest.raises(ValidationError, match=r"duplicate vision encoders in the sweep: \['pixels', 'pixels'\]"):
        SweepConfig(vision=["pixels", "pixels"], text=["bow"])
