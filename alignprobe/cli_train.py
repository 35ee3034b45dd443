"""`alignprobe train`, `eval`, `classify`, `segment`, `export`: SAIL training and the use of its models.

Defined standalone; `alignprobe.cli` adds them to the `main` group. They parse flags (the training
flags come from the one table in `alignprobe.cli_train_options`), call the public API
(`alignprobe.probe.pipelines.train`, `load_aligned`, the evaluations) and print what it returns.
Modules that import torch are imported inside the command that needs them, so that `--help` stays fast.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import click

from alignprobe.cli_common import POSITIVE_INT, SEED, check_writable, device_option, dtype_option
from alignprobe.cli_common import encode_options, friendly_errors as _friendly_errors
from alignprobe.cli_common import options_from as _options
from alignprobe.cli_common import print_table as _print_table
from alignprobe.cli_common import quiet_verbose_options, renamed_option, trust_remote_code_option
from alignprobe.cli_common import setup_logging as _setup_logging
from alignprobe.cli_common import vision_layer_option
from alignprobe.cli_train_options import HEADS, train_flag_options, train_flag_values
from alignprobe.errors import DataError, ValidationError
from alignprobe.io import write_json_atomic
from alignprobe.metrics.registry import columns as registry_columns
from alignprobe.probe.data.classify_inputs import check_top_k, class_names, image_files
from alignprobe.probe.training.train_log import check_backend

#: Per-class / per-category scores and calibration details stay in the record, out of the printed table.
_DETAIL_COLUMN = re.compile(r"^(iou|mmvp)_|_(p|null|threshold)$")
MODEL_HELP = "Run directory of `alignprobe train` (or its aligned.json)."
WHICH_HELP = "The kept (best held-out) weights or the latest checkpoint."
#: `--device` of the commands that use a trained model (they train nothing)
MODEL_DEVICE_HELP = "where the encoders and the trained heads run"


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _metrics_row(metrics: dict) -> dict:
    """The record's metrics in the metric registry's display order (undeclared columns are left out)."""
    return {k: _fmt(metrics[k]) for k in registry_columns(metrics) if not _DETAIL_COLUMN.search(k)}


def _data_spec(value: str | None) -> str | None:
    """None keeps the default; "none" / "" skips that evaluation set."""
    if value is None:
        return None
    return "" if value.strip().lower() in ("", "none", "-") else value


# --------------------------------------------------------------------------- train


@click.command()
@click.option("--vision", default=None, help="Vision encoder: name, alias, hf:/timm: id or local directory.")
@click.option("--text", default=None, help="Text encoder: name, alias, hf:/st: id or local directory.")
@renamed_option("--run-dir", "run_dir", old=("--out",), type=click.Path(file_okay=False), default=None,
                help="Run directory: checkpoints, logs, aligned.json [runs/NAME; with --from-sweep: RESULTS_DIR/sail].")
@click.option("--from-sweep", "from_sweep", type=click.Path(file_okay=False, exists=True), default=None,
              help="Train the best pairs of this sweep's results directory (and add their records to it).")
@click.option("--top-k", type=POSITIVE_INT, default=1, show_default=True, help="With --from-sweep: how many pairs.")
@click.option("--by", default="zero_shot_top1", show_default=True, help="With --from-sweep: rank pairs by this metric.")
@click.option("--preset", type=click.Choice(["sail", "sail-probe"]), default=None,
              help="Force this reference recipe exactly, at any data size. sail (scripts/sail_train.sh): star heads "
                   "w=8 into 1024-d, wd 1e-4; sail-probe (scripts/alignment_probing.sh): linear heads into 2048-d, "
                   "wd 1e-7. Both Lion (0.9, 0.99), lr 1e-5, batch 32,768, 100 epochs, 10% warm-up then cosine, "
                   "no held-out split. Default: sail, because train learns the full SAIL heads (run and sweep "
                   "default to sail-probe: they measure alignment with the linear probe), adapted below 100k "
                   "pairs (each change printed and recorded).")
@click.option("--pairs", default=None, help="Image-caption pairs to train on [shapes:train].")
@click.option("--labelled", default=None, help="Labelled images for zero-shot evaluation [shapes:test; 'none' skips].")
@click.option("--retrieval", default=None, help="Captioned images for retrieval R@k [shapes:test; 'none' skips].")
@click.option("--vision-pooling", default=None, help="Override the registry's vision pooling (cls|mean|concat|pooler).")
@click.option("--text-pooling", default=None, help="Override the registry's text pooling (mean|cls|last|encode).")
@vision_layer_option(several=None, help="Take vision features from block N instead of the last one (one block).")
@click.option("--text-layer", type=click.IntRange(min=0), default=None,
              help="Take text features from block N instead of the last one (as --text NAME@N).")
@click.option("--head", type=HEADS, default=None, help="Head of both sides [the preset's: star | linear].")
@train_flag_options("train")
@click.option("--selection", default=None, help="Data scored for --select-by METRIC: a selection set of its own.")
@click.option("--winoground", type=click.Path(file_okay=False, exists=True), default=None,
              help="Also score the trained heads on Winoground (official layout).")
@click.option("--mmvp", type=click.Path(file_okay=False, exists=True), default=None,
              help="Also score the trained heads on MMVP-VLM (official layout).")
@click.option("--segmentation", default=None, help="Also segment this data (seg:DIR, shapes-seg:test) with the heads.")
@click.option("--seed", type=SEED, default=None, help="Seed of the split, the initialisation and the data order [0].")
@renamed_option("--results-dir", "results_dir", old=("--results",), type=click.Path(file_okay=False), default=None,
                help="Also write a 'sail' result record into this results directory (for `alignprobe report`).")
@click.option("--resume", is_flag=True, help="Continue the run in --run-dir from its latest checkpoint.")
@click.option("--overwrite", is_flag=True, help="Start afresh in a --run-dir that holds a run.")
@click.option("--force", is_flag=True, help="Retrain even if a finished record exists (implies --overwrite).")
@encode_options(device_help="where the encoders run and the heads train", old_batch_flags=("--encode-batch-size",))
@_friendly_errors
def train(vision, text, run_dir, from_sweep, top_k, by, preset, head, results_dir, resume, overwrite, force,
          verbose, **kwargs):
    """Train SAIL alignment heads on a frozen vision x text pair (or on a sweep's best pairs).

    \b
    alignprobe train --vision dinov2-l --text gte --run-dir runs/dl-gte --pairs wds:/data/cc3m
    torchrun --nproc_per_node 8 --no-python alignprobe train --vision ... --run-dir ...   (a process per GPU)
    alignprobe train --from-sweep results --top-k 3 --by zero_shot_top1
    """
    from alignprobe.probe.training import distributed as D  # torch: not needed for --help

    _setup_logging(kwargs["quiet"], verbose)
    overrides = train_flag_values(kwargs)
    for side in ("image_head", "text_head"):  # --head is both sides unless a side is given
        if head is not None:
            overrides.setdefault(side, head)
    if "log_to" in overrides:
        check_backend(overrides["log_to"])
    data = {k: kwargs.pop(k) for k in ("pairs", "vision_pooling", "text_pooling", "seed", "vision_layer",
                                       "text_layer", "selection", "winoground", "mmvp", "segmentation")}
    data.update(labelled=_data_spec(kwargs.pop("labelled")), retrieval=_data_spec(kwargs.pop("retrieval")))
    options = _options(kwargs)
    ctx = D.init_distributed()
    echo = click.echo if ctx.is_main else (lambda *a, **k: None)
    if from_sweep:
        if vision or text:
            raise ValidationError("--from-sweep picks the encoders itself; drop --vision/--text")
        check_writable(run_dir or Path(from_sweep) / "sail", "run directory (--run-dir)")
        _train_from_sweep(from_sweep, top_k, by, run_dir, echo, ctx.is_main, preset=preset, train=overrides,
                          data=data, options=options, resume=resume, force=force or overwrite)
    else:
        if not vision or not text:
            raise ValidationError("give --vision and --text (or --from-sweep RESULTS_DIR)")
        _train_one(vision, text, run_dir, results_dir, echo, ctx.is_main, preset=preset, train=overrides, data=data,
                   options=options, resume=resume, overwrite=overwrite, force=force)
    D.shutdown(ctx)


def _train_from_sweep(from_sweep, top_k, by, run_dir, echo, is_main, **settings) -> None:
    from alignprobe.probe.pipelines.train import train_from_sweep  # torch: not needed for --help

    results = train_from_sweep(from_sweep, top_k, by, out_root=run_dir, **settings)
    rows = []
    for res in results:
        rec = res.record
        pick = rec.get("selected_by") or {}
        rows.append({"vision": rec["vision"], "text": rec["text"], f"probe {by}": _fmt(pick.get("probe_score")),
                     **_metrics_row(rec["metrics"]), "status": "reused" if res.reused else "trained"})
    echo(f"SAIL heads for the top {len(results)} pairs of {from_sweep} by {by}:")
    if is_main:
        _print_table(rows)
        for res in results:
            for note in res.notes:
                echo(f"  {res.record['vision']} x {res.record['text']}: {note}")
    echo(f"\nrecords added to {from_sweep} (kind 'sail'); compare with the probes: alignprobe report {from_sweep}")


def _train_one(vision, text, run_dir, results_dir, echo, is_main, *, preset, train, data, **settings) -> None:
    from alignprobe.probe.pipelines.train import SailRunConfig, default_run_dir, train_pair  # torch: not for --help

    config = SailRunConfig(vision=vision, text=text, preset=preset, train=train,
                           **{k: v for k, v in data.items() if v is not None})
    run_dir = Path(run_dir) if run_dir else default_run_dir("runs", config)
    check_writable(run_dir, "run directory (--run-dir)")
    if results_dir:
        check_writable(results_dir, "results directory (--results-dir)")
    result = train_pair(config, run_dir, results_dir=results_dir, **settings)
    for note in result.notes:
        echo(note)
    if is_main:
        _print_table([{"vision": vision, "text": text, **_metrics_row(result.record["metrics"])}])
    model_dir = result.run_dir  # a reused record names the run that produced it, not the --run-dir of this call
    echo(f"\nmodel: {result.record['checkpoint']}" + ("  (reused: a finished record exists; --force to retrain)"
                                                      if result.reused else ""))
    if result.reused and not Path(result.record["checkpoint"]).exists():
        echo(f"note: the reused record's run directory {model_dir} no longer exists; retrain with --force "
             f"to get a model to use")
    else:
        echo(f"use it: alignprobe eval --model {model_dir}  |  alignprobe classify --model {model_dir} --images DIR "
             f"--classes a,b  |  alignprobe.load_aligned({str(model_dir)!r})")
    if result.record_path is not None:
        echo(f"record: {result.record_path}")


def _last_block_options(command):
    """`--last-attention` / `--skip-last-mlp`, shared by `eval` and `segment`."""
    command = click.option("--skip-last-mlp", is_flag=True,
                           help="Segmentation: skip the last block's MLP branch (the reference's "
                                "ignore_residual).")(command)
    return click.option("--last-attention", type=click.Choice(["qk", "qq"]), default="qk",
                        show_default=True,
                        help="Segmentation: the last block's attention for patch tokens (qq: "
                             "query-query, SAIL model/dinoforseg.py; DINOv2 through "
                             "transformers).")(command)


# --------------------------------------------------------------------------- eval


@click.command(name="eval")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True), help=MODEL_HELP)
@click.option("--labelled", default=None, help="Labelled images for zero-shot [the run's; 'none' skips].")
@click.option("--retrieval", default=None, help="Captioned images for retrieval R@k [the run's; 'none' skips].")
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True, help=WHICH_HELP)
@click.option("--winoground", type=click.Path(file_okay=False, exists=True), default=None,
              help="Winoground in its official layout (examples.jsonl, images/): text / image / group scores.")
@click.option("--mmvp", type=click.Path(file_okay=False, exists=True), default=None,
              help="MMVP-VLM in its official layout (Questions.csv, 'MLLM_VLM Images/'): per-category accuracy.")
@click.option("--segmentation", default=None,
              help="Open-vocabulary segmentation data (seg:DIR, shapes-seg:test): mIoU and pixel accuracy.")
@renamed_option("--limit", "limit", old=("--segmentation-limit",), type=POSITIVE_INT, default=None,
                help="Segmentation: score only the first N images (as `segment --limit`).")
@click.option("--background-threshold", type=click.FloatRange(0, 1), default=None,
              help="Segmentation: pixels whose best class probability is below this are background.")
@_last_block_options
@click.option("--allow-unfinished", is_flag=True,
              help="Evaluate a run that has not finished training (its best epoch so far) without refusing.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the metrics here.")
@encode_options(device_help=MODEL_DEVICE_HELP)
@_friendly_errors
def evaluate(model_path, labelled, retrieval, which, winoground, mmvp, segmentation, limit, background_threshold,
             last_attention, skip_last_mlp, allow_unfinished, json_out, verbose, **kwargs):
    """Zero-shot and retrieval scores of a trained model on labelled / captioned data, and with their data
    Winoground, MMVP-VLM and open-vocabulary segmentation. --batch-size is the encoder batch of all of them."""
    from alignprobe.probe.pipelines.train import evaluate_checkpoint  # torch: not needed for --help

    _setup_logging(kwargs["quiet"], verbose)
    segmentation_only = {"--limit": limit is not None, "--background-threshold": background_threshold is not None,
                         "--last-attention": last_attention != "qk", "--skip-last-mlp": skip_last_mlp}
    stray = [flag for flag, given in segmentation_only.items() if given]
    if stray and not segmentation:  # checked before any work, so nothing is silently ignored
        raise ValidationError(f"{', '.join(stray)}: only apply to --segmentation; give "
                              "--segmentation SPEC (e.g. shapes-seg:test) or drop them")
    options = _options(kwargs)
    evaluations = dict(winoground=winoground, mmvp=mmvp, segmentation=segmentation)
    if segmentation:
        evaluations.update(segmentation_limit=limit, background_threshold=background_threshold,
                           last_attention=last_attention, skip_last_mlp=skip_last_mlp)
    if winoground or mmvp or segmentation:
        evaluations["batch_size"] = options.batch_size
    result = evaluate_checkpoint(model_path, labelled=_data_spec(labelled), retrieval=_data_spec(retrieval),
                                 options=options, which=which, allow_unfinished=allow_unfinished,
                                 evaluations=evaluations, trust_remote_code=options.trust_remote_code)
    if result.get("unfinished"):
        click.echo(f"note: {result['unfinished']}", err=True)
    click.echo(f"model: {result['model']} ({which})  labelled: {result['labelled']}  retrieval: {result['retrieval']}")
    shown = {k: v for k, v in result["metrics"].items() if not k.startswith(("iou_", "mmvp_"))}
    _print_table([{k: _fmt(v) for k, v in shown.items()}])
    if json_out:
        write_json_atomic(json_out, result)
        click.echo(f"wrote {json_out}", err=True)


# --------------------------------------------------------------------------- classify


def _in_flags(message: str) -> str:
    """The library's message names its parameter (images, classes, top_k); a CLI user gave a flag."""
    for parameter, flag in (("images ", "--images "), ("classes ", "--classes "), ("top_k=", "--top-k=")):
        if message.startswith(parameter):
            return flag + message[len(parameter):]
    return message


@click.command()
@click.option("--model", "model_path", required=True, type=click.Path(exists=True), help=MODEL_HELP)
@click.option("--images", required=True, help="An image file or a directory of images (searched recursively).")
@click.option("--classes", required=True, help="Comma-separated class names, or a file with one per line.")
@click.option("--templates", default=None, help="Prompt templates: simple, clip, or a file ['a photo of a {}.'].")
@click.option("--top-k", type=POSITIVE_INT, default=1, show_default=True,
              help="Classes listed per image (at most the number of classes).")
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True, help=WHICH_HELP)
@click.option("--batch-size", "batch_size", type=POSITIVE_INT, default=64, show_default=True,
              help="Encoding batch: images per encoder call.")
@device_option(MODEL_DEVICE_HELP)
@dtype_option
@trust_remote_code_option
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write predictions here.")
@quiet_verbose_options
@_friendly_errors
def classify(model_path, images, classes, templates, top_k, which, batch_size, device, dtype, trust_remote_code,
             json_out, quiet, verbose):
    """Zero-shot classification of images with a trained model."""
    from alignprobe.probe.pipelines.aligned import load_aligned  # torch: not needed for --help

    _setup_logging(quiet, verbose)
    try:
        files, names = image_files(images), class_names(classes)
        check_top_k(top_k, len(names))
    except (DataError, ValidationError) as err:
        raise type(err)(_in_flags(str(err))) from None
    model = load_aligned(model_path, device=device or "auto", encoder_dtype=dtype, which=which,
                         trust_remote_code=trust_remote_code)
    result = model.classify(files, names, templates=templates, batch_size=batch_size)
    rows, out = [], []
    for i, (f, top) in enumerate(zip(files, result.top(top_k))):
        best = int(result.indices[i])
        rows.append({"image": str(f), "class": names[best], "score": f"{result.scores[i, best]:.4f}",
                     "prob": f"{result.probs[i, best]:.4f}",
                     **({"top": ", ".join(f"{c} {s:.3f}" for c, s in top)} if top_k > 1 else {})})
        out.append({"image": str(f), "class": names[best], "scores": dict(zip(names, map(float, result.scores[i]))),
                    "probs": dict(zip(names, map(float, result.probs[i])))})
    _print_table(rows)
    if json_out:
        write_json_atomic(json_out, {"model": str(model.path), "classes": names, "predictions": out})
        click.echo(f"wrote {json_out}", err=True)


# --------------------------------------------------------------------------- segment


@click.command()
@click.option("--model", "model_path", required=True, type=click.Path(exists=True), help=MODEL_HELP)
@click.option("--data", required=True,
              help="Segmentation data: seg:DIR (VOC / ADE20K / images+masks) or shapes-seg:test.")
@click.option("--figure", type=click.Path(dir_okay=False), default=None,
              help="Also draw image / prediction / ground truth of the first images into this PNG.")
@click.option("--figure-images", type=POSITIVE_INT, default=4, show_default=True, help="Images in --figure.")
@click.option("--limit", type=POSITIVE_INT, default=None, help="Score only the first N images.")
@click.option("--window", type=POSITIVE_INT, default=None, help="Sliding-window size in pixels [the encoder's input].")
@click.option("--stride", type=POSITIVE_INT, default=None, help="Sliding-window stride in pixels [half the window].")
@click.option("--short-side", type=POSITIVE_INT, default=None, help="Resize images to this short side first.")
@click.option("--background-threshold", type=click.FloatRange(0, 1), default=None,
              help="Pixels whose best class probability is below this are background.")
@_last_block_options
@click.option("--templates", default=None,
              help="Prompt templates: a name (imagenet, ...) or a file [the set's, else CLIP's 80].")
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True, help=WHICH_HELP)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the scores here.")
@click.option("--batch-size", "batch_size", type=POSITIVE_INT, default=None,
              help="Encoding batch: sliding windows per encoder call [16].")
@device_option(MODEL_DEVICE_HELP)
@dtype_option
@trust_remote_code_option
@quiet_verbose_options
@_friendly_errors
def segment(model_path, data, figure, figure_images, limit, window, stride, short_side, background_threshold,
            last_attention, skip_last_mlp, templates, which, json_out, batch_size, device, dtype, trust_remote_code,
            quiet, verbose):
    """Open-vocabulary semantic segmentation with a trained model: patch tokens through the vision
    head against class prompts through the text head (mIoU, pixel accuracy, per-class IoU).
    It reads images directly (no embedding cache), so it takes no cache flags."""
    from alignprobe.probe.evals.aligned import segment_aligned  # torch: not needed for --help
    from alignprobe.probe.pipelines.aligned import load_aligned  # torch, as above

    _setup_logging(quiet, verbose)
    aligned = load_aligned(model_path, device=device or "auto", encoder_dtype=dtype, which=which,
                           trust_remote_code=trust_remote_code)
    settings = {k: v for k, v in dict(window=window, stride=stride, short_side=short_side, batch_size=batch_size,
                                      background_threshold=background_threshold).items() if v is not None}
    settings.update(last_attention=last_attention, skip_last_mlp=skip_last_mlp)
    row = segment_aligned(aligned, data, figure=figure, n_figure=figure_images, limit=limit, templates=templates,
                          progress=not quiet, **settings)
    click.echo(f"model: {aligned.path} ({which})  data: {data}")
    _print_table([{k: _fmt(row[k]) for k in ("miou", "pixel_acc") if k in row}])
    per_class = {k[len("iou_"):]: _fmt(v) for k, v in row.items() if k.startswith("iou_")}
    if per_class:
        _print_table([per_class])
    if figure:
        click.echo(f"figure: {figure}")
    if json_out:
        write_json_atomic(json_out, {"model": str(aligned.path), "data": data, "metrics": row})


# --------------------------------------------------------------------------- export


@click.command()
@click.option("--model", "model_path", required=True, type=click.Path(exists=True), help=MODEL_HELP)
@renamed_option("--export-dir", "export_dir", old=("--out",), required=True, type=click.Path(file_okay=False),
                help="Directory for the transformers model (config.json, model.safetensors, preprocessor_config.json).")
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True, help=WHICH_HELP)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --export-dir.")
@trust_remote_code_option
@_friendly_errors
def export(model_path, export_dir, which, overwrite, trust_remote_code):
    """The run's vision encoder (backbone at its trained layer + trained head) as a transformers model:
    a vision tower for LLaVA-style MLLMs, loaded with AutoModel.from_pretrained after `import alignprobe`."""
    from alignprobe.probe.export.export import export_vision_tower  # torch: not needed for --help

    check_writable(export_dir, "export directory (--export-dir)")
    out = export_vision_tower(model_path, export_dir, which=which, overwrite=overwrite,
                              trust_remote_code=trust_remote_code)
    click.echo(f"wrote {out}")
    click.echo(f"load it with: import alignprobe, transformers; transformers.AutoModel.from_pretrained({str(out)!r})")


__all__ = ["train", "evaluate", "classify", "segment", "export"]
