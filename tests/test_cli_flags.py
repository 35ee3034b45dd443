"""One meaning per flag: each renamed flag reaches the library under its new name, its old spelling still
works for one release (with a deprecation note on stderr), both at once is a usage error, and a
command refuses the flags it does not use.

The library calls are replaced by stubs that record what they were given and stop, so these tests
check the CLI's parsing and mapping without encoding or training anything.
"""
from __future__ import annotations

import pytest
from helpers import invoke

from alignprobe.errors import ValidationError

DEPRECATED = "is deprecated and will be removed in the next release; use"


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """``calls(module, name)`` replaces ``module.name`` by a stub; the dict it returns gets the stub's
    positional (``"args"``) and keyword arguments once the command has called it."""
    import importlib

    monkeypatch.setenv("ALIGNPROBE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)

    def stub(module: str, name: str, returns=None) -> dict:
        seen: dict = {}

        def record(*args, **kwargs):
            seen.update(kwargs, args=args)
            if returns is None:
                raise ValidationError("stub: stopped after the call")
            return returns

        monkeypatch.setattr(importlib.import_module(module), name, record)
        return seen

    return stub


def _note(result, old: str, new: str) -> bool:
    return f"note: {old} {DEPRECATED} {new}" in result.output


# --------------------------------------------------------------------------- run and sweep

RUN = ["run", "--vision", "pixels", "--text", "bow", "-q"]
SWEEP = ["sweep", "--vision", "pixels", "--text", "bow", "-q"]


def test_run_train_batch_size_and_its_old_spelling(calls):
    seen = calls("alignprobe.probe.pipelines.run", "run_pair")
    new = invoke(*RUN, "--train-batch-size", "64", catch_exceptions=True)
    assert seen["args"][0].train == {"batch_size": 64} and DEPRECATED not in new.output
    seen.clear()
    old = invoke(*RUN, "--probe-batch-size", "32", catch_exceptions=True)
    assert seen["args"][0].train == {"batch_size": 32}
    assert _note(old, "--probe-batch-size", "--train-batch-size")


def test_run_batch_size_is_the_encoding_batch(calls):
    seen = calls("alignprobe.probe.pipelines.run", "run_pair")
    invoke(*RUN, "--batch-size", "16", catch_exceptions=True)
    assert seen["options"].batch_size == 16 and seen["args"][0].train == {}


def test_run_results_dir_and_its_old_spelling(calls, tmp_path):
    seen = calls("alignprobe.probe.pipelines.run", "run_pair")
    invoke(*RUN, "--results-dir", tmp_path / "new", catch_exceptions=True)
    assert seen["out_dir"] == str(tmp_path / "new")
    old = invoke(*RUN, "--out", tmp_path / "old", catch_exceptions=True)
    assert seen["out_dir"] == str(tmp_path / "old") and _note(old, "--out", "--results-dir")


def test_old_and_new_spelling_together_is_a_usage_error(calls, tmp_path):
    calls("alignprobe.probe.pipelines.run", "run_pair")
    for order in (["--out", "a", "--results-dir", "b"], ["--results-dir", "b", "--out", "a"]):
        both = invoke(*RUN, *order, catch_exceptions=True)
        assert both.exit_code == 2
        assert "--out is the old spelling of --results-dir; give only --results-dir" in both.output


def test_sweep_train_batch_size_results_dir_and_old_spellings(calls, tmp_path):
    seen = calls("alignprobe.probe.pipelines.sweep", "run_sweep")
    invoke(*SWEEP, "--train-batch-size", "64", "--results-dir", tmp_path / "r", catch_exceptions=True)
    assert seen["args"][0].run["train"] == {"batch_size": 64} and seen["out_dir"] == str(tmp_path / "r")
    old = invoke(*SWEEP, "--probe-batch-size", "32", "--out", tmp_path / "o", catch_exceptions=True)
    assert seen["args"][0].run["train"] == {"batch_size": 32} and seen["out_dir"] == str(tmp_path / "o")
    assert _note(old, "--probe-batch-size", "--train-batch-size") and _note(old, "--out", "--results-dir")


def test_vision_layer_one_syntax_and_one_block_where_only_one_is_allowed(calls):
    seen = calls("alignprobe.probe.pipelines.run", "run_pair")
    invoke(*RUN, "--vision-layer", "4", catch_exceptions=True)
    assert seen["args"][0].vision_layer == 4
    several = invoke(*RUN, "--vision-layer", "4,8", catch_exceptions=True)
    assert several.exit_code == 2 and "`run` takes one block" in several.output and "alignprobe sweep" in several.output
    swept = calls("alignprobe.probe.pipelines.sweep", "run_sweep")
    invoke(*SWEEP, "--vision-layer", "4,8", catch_exceptions=True)
    assert swept["args"][0].run["vision_layer"] == [4, 8]


# --------------------------------------------------------------------------- train

TRAIN = ["train", "--vision", "pixels", "--text", "bow", "-q"]


def test_train_batch_flags_mean_what_they_mean_everywhere(calls, tmp_path):
    seen = calls("alignprobe.probe.pipelines.train", "train_pair")
    invoke(*TRAIN, "--train-batch-size", "64", "--run-dir", tmp_path / "run", catch_exceptions=True)
    assert seen["args"][0].train == {"batch_size": 64} and seen["options"].batch_size == 64  # 64: the default
    encoding = invoke(*TRAIN, "--batch-size", "8", "--run-dir", tmp_path / "run", catch_exceptions=True)
    assert seen["options"].batch_size == 8 and seen["args"][0].train == {}
    assert "in `train` --batch-size now means the encoding batch" in encoding.output  # it meant training before
    old = invoke(*TRAIN, "--encode-batch-size", "4", "--run-dir", tmp_path / "run", catch_exceptions=True)
    assert seen["options"].batch_size == 4 and _note(old, "--encode-batch-size", "--batch-size")


def test_train_run_dir_results_dir_and_old_spellings(calls, tmp_path):
    seen = calls("alignprobe.probe.pipelines.train", "train_pair")
    invoke(*TRAIN, "--run-dir", tmp_path / "run", "--results-dir", tmp_path / "res", catch_exceptions=True)
    assert str(seen["args"][1]) == str(tmp_path / "run") and seen["results_dir"] == str(tmp_path / "res")
    old = invoke(*TRAIN, "--out", tmp_path / "r2", "--results", tmp_path / "res2", catch_exceptions=True)
    assert str(seen["args"][1]) == str(tmp_path / "r2") and seen["results_dir"] == str(tmp_path / "res2")
    assert _note(old, "--out", "--run-dir") and _note(old, "--results", "--results-dir")


def test_train_flags_map_to_train_config_fields(calls, tmp_path):
    seen = calls("alignprobe.probe.pipelines.train", "train_pair")
    invoke(*TRAIN, "--run-dir", tmp_path / "run", "--head", "mlp", "--text-head", "linear", "--dim", "8",
           "--decay-all", "--micro-batch", "none", "--chunk-size", "128", "--positives", "2", "--patience", "none",
           "--vision-layer", "3", catch_exceptions=True)
    config = seen["args"][0]
    assert config.train == {"image_head": "mlp", "text_head": "linear", "out_dim": 8, "decay_norm_bias_logit": True,
                            "micro_batch": None, "chunk_size": 128, "positives": 2, "patience": None}
    assert config.vision_layer == 3
    bad = invoke(*TRAIN, "--micro-batch", "some", catch_exceptions=True)
    assert bad.exit_code == 2 and "--micro-batch" in bad.output and "auto, none" in bad.output


# --------------------------------------------------------------------------- report, plot, eval, export


def test_report_columns_and_its_old_spelling(calls, tmp_path):
    seen = calls("alignprobe.reports.report", "write_report")
    invoke("report", tmp_path, "--columns", "alignment", catch_exceptions=True)
    assert seen["metrics"] == "alignment"
    old = invoke("report", tmp_path, "--metrics", "clustering", catch_exceptions=True)
    assert seen["metrics"] == "clustering" and _note(old, "--metrics", "--columns")


def test_plot_output_dir_formats_and_old_spellings(calls, tmp_path):
    seen = calls("alignprobe.reports.plots", "make_plots", returns=[])
    new = invoke("plot", tmp_path, "--output-dir", tmp_path / "p", "--formats", "png,svg")
    assert new.exit_code == 0 and seen["args"][1] == str(tmp_path / "p") and seen["formats"] == ("png", "svg")
    for old_flag in ("-o", "--output"):
        old = invoke("plot", tmp_path, old_flag, tmp_path / "q", "--format", "pdf")
        assert old.exit_code == 0 and seen["args"][1] == str(tmp_path / "q") and seen["formats"] == ("pdf",)
        assert _note(old, "-o/--output", "--output-dir") and _note(old, "--format", "--formats")


def test_eval_limit_batch_size_and_old_spelling(calls, tmp_path):
    seen = calls("alignprobe.probe.pipelines.train", "evaluate_checkpoint")
    invoke("eval", "--model", tmp_path, "--segmentation", "shapes-seg:test", "--limit", "3", "--batch-size", "5",
           "--mmvp", tmp_path, catch_exceptions=True)
    assert seen["evaluations"]["segmentation_limit"] == 3 and seen["evaluations"]["batch_size"] == 5
    old = invoke("eval", "--model", tmp_path, "--segmentation", "shapes-seg:test", "--segmentation-limit", "2",
                 catch_exceptions=True)
    assert seen["evaluations"]["segmentation_limit"] == 2 and _note(old, "--segmentation-limit", "--limit")
    stray = invoke("eval", "--model", tmp_path, "--limit", "2", catch_exceptions=True)
    assert stray.exit_code == 2 and "--limit: only apply to --segmentation" in stray.output


def test_export_dir_and_its_old_spelling(calls, tmp_path):
    seen = calls("alignprobe.probe.export.export", "export_vision_tower")
    invoke("export", "--model", tmp_path, "--export-dir", tmp_path / "t", catch_exceptions=True)
    assert seen["args"][1] == str(tmp_path / "t")
    old = invoke("export", "--model", tmp_path, "--out", tmp_path / "u", catch_exceptions=True)
    assert seen["args"][1] == str(tmp_path / "u") and _note(old, "--out", "--export-dir")
    missing = invoke("export", "--model", tmp_path, catch_exceptions=True)
    assert missing.exit_code == 2 and "Missing option '--export-dir'" in missing.output


# --------------------------------------------------------------------------- only the flags a command uses


@pytest.mark.parametrize("flag, value", [("--cache-dir", "x"), ("--storage-dtype", "fp32"), ("--num-workers", "0"),
                                         ("--shard-rows", "10"), ("--no-recompute", None), ("--strict", None)])
def test_segment_refuses_the_encode_flags_it_does_not_use(tmp_path, flag, value):
    args = ["segment", "--model", tmp_path, "--data", "shapes-seg:test", flag] + ([value] if value else [])
    result = invoke(*args, catch_exceptions=True)
    assert result.exit_code == 2 and f"No such option '{flag}'" in result.output


def test_segment_passes_batch_size_device_and_dtype(calls, tmp_path):
    seen = calls("alignprobe.probe.pipelines.aligned", "load_aligned")
    invoke("segment", "--model", tmp_path, "--data", "shapes-seg:test", "--device", "cpu", "--dtype", "fp32",
           catch_exceptions=True)
    assert seen["device"] == "cpu" and seen["encoder_dtype"] == "fp32" and seen["trust_remote_code"] is False


def test_help_texts_say_what_each_flag_does(tmp_path):
    for command in ("models", "eval", "classify", "segment", "export"):
        assert "training" not in invoke(command, "--help").output.split("--device")[-1].split("\n  -")[0]
    models = invoke("models", "--help").output
    assert "List only the vision or only the text encoders" in models
    classify = invoke("classify", "--help").output
    assert "--quiet" in classify and "--verbose" in classify and "--which" in classify and "held-out" in classify
    def words(command):
        return " ".join(invoke(command, "--help").output.split())

    for command in ("run", "sweep"):  # --preset: why the default differs from train's
        assert "`train` defaults to sail because it trains the full SAIL heads" in words(command)
    assert "run and sweep default to sail-probe" in words("train")


def test_the_cli_imports_no_ml_library_until_a_command_runs():
    """The CLI's in-function imports exist for this: `alignprobe --help` loads neither torch nor pandas
    nor matplotlib (each lazy import says so)."""
    import subprocess
    import sys

    code = ("import sys, alignprobe.cli, alignprobe.cli_train, alignprobe.cli_layers; "
            "print(','.join(m for m in ('torch', 'pandas', 'matplotlib', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
