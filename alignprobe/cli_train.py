"""`alignprobe train`, `alignprobe eval`, `alignprobe classify`: SAIL training and use of its models.

Defined standalone; `alignprobe.cli` adds them to the `main` group. They only
parse flags and call the public API (`alignprobe.probe.pipelines.train`, `load_aligned`).
"""
from __future__ import annotations

import math
from pathlib import Path

import click

from alignprobe.cli_common import POSITIVE_FLOAT, POSITIVE_INT, SEED, check_writable
from alignprobe.cli_common import encode_options, friendly_errors as _friendly_errors
from alignprobe.cli_common import options_from as _options
from alignprobe.cli_common import print_table as _print_table
from alignprobe.cli_common import setup_logging as _setup_logging

METRIC_COLUMNS = ("zero_shot_top1", "zero_shot_top5", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5",
                  "t2i_r10", "sail_val_loss", "sail_best_epoch", "sail_epochs", "winoground_text", "winoground_image",
                  "winoground_group", "mmvp", "miou", "pixel_acc")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


# `train` has its own --batch-size (the training batch), so its encoding batch flag is renamed.
_train_encoding_options = encode_options(batch_flag="--encode-batch-size")


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _metrics_row(metrics: dict) -> dict:
    return {k: _fmt(metrics.get(k)) for k in METRIC_COLUMNS if k in metrics}


def _data_spec(value: str | None) -> str | None:
    """None keeps the default; "none" / "" skips that evaluation set."""
    if value is None:
        return None
    return "" if value.strip().lower() in ("", "none", "-") else value


# --------------------------------------------------------------------------- train


@click.command()
@click.option("--vision", default=None, help="Vision encoder: name, alias, hf:/timm: id or local directory.")
@click.option("--text", default=None, help="Text encoder: name, alias, hf:/st: id or local directory.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory: checkpoints, logs, aligned.json [with --from-sweep: RESULTS_DIR/sail].")
@click.option("--from-sweep", "from_sweep", type=click.Path(file_okay=False, exists=True), default=None,
              help="Train the best pairs of this sweep's results directory (and add their records to it).")
@click.option("--top-k", type=POSITIVE_INT, default=1, show_default=True, help="With --from-sweep: how many pairs.")
@click.option("--by", default="zero_shot_top1", show_default=True, help="With --from-sweep: rank pairs by this metric.")
@click.option("--preset", type=click.Choice(["sail", "sail-probe"]), default=None,
              help="Force this reference recipe exactly, at any data size. sail (scripts/sail_train.sh): star heads "
                   "w=8 into 1024-d, wd 1e-4; sail-probe (scripts/alignment_probing.sh): linear heads into 2048-d, "
                   "wd 1e-7. Both Lion (0.9, 0.99), lr 1e-5, batch 32,768, 100 epochs, 10% warm-up then cosine, "
                   "no held-out split. Default: sail, adapted below 100k pairs (each change printed and recorded).")
@click.option("--pairs", default=None, help="Image-caption pairs to train on [shapes:train].")
@click.option("--labelled", default=None, help="Labelled images for zero-shot evaluation [shapes:test; 'none' skips].")
@click.option("--retrieval", default=None, help="Captioned images for retrieval R@k [shapes:test; 'none' skips].")
@click.option("--vision-pooling", default=None, help="Override the registry's vision pooling (cls|mean|concat|pooler).")
@click.option("--text-pooling", default=None, help="Override the registry's text pooling (mean|cls|last|encode).")
@click.option("--head", type=click.Choice(["linear", "mlp", "star", "identity"]), default=None,
              help="Head of both sides [preset's: star | linear].")
@click.option("--image-head", type=click.Choice(["linear", "mlp", "star", "identity"]), default=None)
@click.option("--text-head", type=click.Choice(["linear", "mlp", "star", "identity"]), default=None)
@click.option("--width", type=POSITIVE_INT, default=None, help="Star head width factor [8].")
@click.option("--dim", "out_dim", type=POSITIVE_INT, default=None, help="Shared space dimension [1024 sail, 2048 probe].")
@click.option("--batch-size", type=POSITIVE_INT, default=None, help="Global training batch [32768; min(n, 1024) on small data].")
@click.option("--micro-batch", default=None,
              help="Rows per micro-batch of the two-pass (GradCache) step; 'none' for one pass; 'auto': one "
                   "pass when it fits in half the free memory [auto].")
@click.option("--optimizer", type=click.Choice(["lion", "adamw"]), default=None, help="[lion]")
@click.option("--lr", type=POSITIVE_FLOAT, default=None, help="Peak learning rate [1e-5; 1e-3 on small data].")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None, help="[1e-4 sail, 1e-7 probe]")
@click.option("--decay-all", is_flag=True, default=None,
              help="Also decay LayerNorm gains, biases and the logit scale/bias (default: weight matrices only).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="[100; small data 200 with early stopping]")
@click.option("--warmup-fraction", type=click.FloatRange(0, 1), default=None,
              help="Warm-up over ceil(fraction x steps) steps, then cosine [0.1].")
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default=None, help="[cosine]")
@click.option("--grad-clip", type=POSITIVE_FLOAT, default=None, help="Max global gradient norm [none].")
@click.option("--loss", type=click.Choice(["sigmoid", "infonce"]), default=None, help="[sigmoid]")
@click.option("--normalization", type=click.Choice(["n2", "n"]), default=None,
              help="Sigmoid loss: mean over the N x N logits (n2, SAIL) or sum / N (n, SigLIP) [n2].")
@click.option("--chunk-size", default=None, help="Tile size of the exact chunked loss [4096]; 'none' for naive.")
@click.option("--positives", default=None,
              help="Captions per image per step: 'all' (every caption a positive, ragged counts) or N [all].")
@click.option("--caption-sampling", type=click.Choice(["random", "fixed"]), default=None,
              help="Draw each image's captions at random each epoch, or always the first ones [random].")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16"]), default=None,
              help="Autocast of the heads on GPU [fp32].")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Held-out share of the training images, for early stopping [0; 0.1 small data].")
@click.option("--patience", default=None, help="Early-stopping patience in epochs ['none' sail; 20 small data].")
@click.option("--select-by", default=None,
              help="Keep the epoch best by val_loss or a metric (zero_shot_top1, i2t_r1...) of --selection [val_loss].")
@click.option("--selection", default=None, help="Data scored for --select-by METRIC: a selection set of its own.")
@click.option("--eval-every", type=click.IntRange(min=0), default=None,
              help="Evaluate zero-shot/retrieval every N epochs [2, as the reference; 0: at the end].")
@click.option("--log-to", type=click.Choice(["tensorboard", "wandb"]), default=None,
              help="Also log to TensorBoard or W&B (optional extras; W&B honours WANDB_MODE=offline).")
@click.option("--winoground", type=click.Path(file_okay=False, exists=True), default=None,
              help="Also score the trained heads on Winoground (official layout).")
@click.option("--mmvp", type=click.Path(file_okay=False, exists=True), default=None,
              help="Also score the trained heads on MMVP-VLM (official layout).")
@click.option("--segmentation", default=None, help="Also segment this data (seg:DIR, shapes-seg:test) with the heads.")
@click.option("--vision-layer", type=click.IntRange(min=0), default=None,
              help="Take vision features from block N instead of the last one.")
@click.option("--checkpoint-every", default=None, help="Also checkpoint every N steps [1000]; 'none': epoch ends only.")
@click.option("--seed", type=SEED, default=None, help="Seed of the split, the initialisation and the data order [0].")
@click.option("--results", "results_dir", type=click.Path(file_okay=False), default=None,
              help="Also write a 'sail' result record into this results directory (for `alignprobe report`).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option("--overwrite", is_flag=True, help="Start afresh in an --out that holds a run.")
@click.option("--force", is_flag=True, help="Retrain even if a finished record exists (implies --overwrite).")
@_train_encoding_options
@_friendly_errors
def train(vision, text, out_dir, from_sweep, top_k, by, preset, pairs, labelled, retrieval, vision_pooling,
          text_pooling, head, image_head, text_head, width, out_dim, batch_size, micro_batch, optimizer, lr,
          weight_decay, decay_all, epochs, warmup_fraction, schedule, grad_clip, loss, normalization, chunk_size, positives,
          caption_sampling, precision, val_fraction, patience, select_by, selection, eval_every, log_to,
          vision_layer, winoground, mmvp, segmentation, checkpoint_every, seed, results_dir, resume, overwrite,
          force, verbose, **kwargs):
    """Train SAIL alignment heads on a frozen vision x text pair (or on a sweep's best pairs).

    \b
    alignprobe train --vision dinov2-l --text gte --out runs/dl-gte --pairs wds:/data/cc3m
    torchrun --nproc_per_node 8 --no-python alignprobe train --vision ... --out ...   (a process per GPU)
    alignprobe train --from-sweep results --top-k 3 --by zero_shot_top1
    """
    from alignprobe.errors import ValidationError
    from alignprobe.probe.training import distributed as D
    from alignprobe.probe.pipelines.train import SailRunConfig, default_run_dir, train_from_sweep, train_pair

    _setup_logging(kwargs["quiet"], verbose)
    options = _options(kwargs)
    ctx = D.init_distributed()
    echo = click.echo if ctx.is_main else (lambda *a, **k: None)
    if image_head is None and head is not None:
        image_head = head
    if text_head is None and head is not None:
        text_head = head
    values = dict(image_head=image_head, text_head=text_head, width=width, out_dim=out_dim, batch_size=batch_size,
                  optimizer=optimizer, lr=lr, weight_decay=weight_decay, decay_norm_bias_logit=decay_all,
                  epochs=epochs, warmup_fraction=warmup_fraction,
                  schedule=schedule, grad_clip=grad_clip, loss=loss, normalization=normalization,
                  positives=_positives(positives), caption_sampling=caption_sampling, precision=precision,
                  val_fraction=val_fraction, select_by=select_by, eval_every=eval_every, log_to=log_to)
    overrides = {k: v for k, v in values.items() if v is not None}
    # These four accept 'none' (an explicit None), so "not given" is told apart from it
    # (--micro-batch also 'auto').
    for name, flag, raw in (("micro_batch", "--micro-batch", micro_batch), ("chunk_size", "--chunk-size", chunk_size),
                            ("patience", "--patience", patience),
                            ("checkpoint_every", "--checkpoint-every", checkpoint_every)):
        if raw is not None:
            overrides[name] = _none_or_int(flag, raw)
    if log_to is not None:
        from alignprobe.probe.training.train_log import check_backend

        check_backend(log_to)
    data = dict(pairs=pairs, labelled=_data_spec(labelled), retrieval=_data_spec(retrieval),
                vision_pooling=vision_pooling, text_pooling=text_pooling, seed=seed, vision_layer=vision_layer,
                selection=selection, winoground=winoground, mmvp=mmvp, segmentation=segmentation)

    if from_sweep:
        check_writable(out_dir or Path(from_sweep) / "sail", "run directory (--out)")
        if vision or text:
            raise ValidationError("--from-sweep picks the encoders itself; drop --vision/--text")
        results = train_from_sweep(from_sweep, top_k, by, out_root=out_dir, preset=preset, train=overrides,
                                   data=data, options=options, resume=resume, force=force or overwrite)
        rows = []
        for res in results:
            rec = res.record
            pick = rec.get("selected_by") or {}
            rows.append({"vision": rec["vision"], "text": rec["text"], f"probe {by}": _fmt(pick.get("probe_score")),
                         **_metrics_row(rec["metrics"]), "status": "reused" if res.reused else "trained"})
        echo(f"SAIL heads for the top {len(results)} pairs of {from_sweep} by {by}:")
        if ctx.is_main:
            _print_table(rows)
            for res in results:
                for note in res.notes:
                    echo(f"  {res.record['vision']} x {res.record['text']}: {note}")
        echo(f"\nrecords added to {from_sweep} (kind 'sail'); compare with the probes: alignprobe report {from_sweep}")
        D.shutdown(ctx)
        return

    if not vision or not text:
        raise ValidationError("give --vision and --text (or --from-sweep RESULTS_DIR)")
    config = SailRunConfig(vision=vision, text=text, preset=preset, train=overrides,
                           **{k: v for k, v in data.items() if v is not None})
    run_dir = Path(out_dir) if out_dir else default_run_dir("runs", config)
    check_writable(run_dir, "run directory (--out)")
    if results_dir:
        check_writable(results_dir, "results directory (--results)")
    result = train_pair(config, run_dir, options=options, results_dir=results_dir, resume=resume,
                        overwrite=overwrite, force=force)
    for note in result.notes:
        echo(note)
    if ctx.is_main:
        _print_table([{"vision": vision, "text": text, **_metrics_row(result.record["metrics"])}])
    model_dir = result.run_dir  # a reused record names the run that produced it, not the --out of this call
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
    D.shutdown(ctx)


def _positives(value: str | None):
    from alignprobe.errors import ValidationError

    if value is None or str(value).strip().lower() == "all":
        return None if value is None else "all"
    try:
        return int(value)
    except ValueError:
        raise ValidationError(f"--positives must be 'all' or a positive integer, got {value!r}") from None


def _none_or_int(flag: str, value: str) -> int | None:
    from alignprobe.errors import ValidationError

    if str(value).strip().lower() == "none":
        return None
    if flag == "--micro-batch" and str(value).strip().lower() == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise ValidationError(f"{flag} must be an integer or 'none', got {value!r}") from None


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
@click.option("--model", "model_path", required=True, type=click.Path(exists=True),
              help="Run directory of `alignprobe train` (or its aligned.json).")
@click.option("--labelled", default=None, help="Labelled images for zero-shot [the run's; 'none' skips].")
@click.option("--retrieval", default=None, help="Captioned images for retrieval R@k [the run's; 'none' skips].")
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True,
              help="The kept (best held-out) weights or the latest checkpoint.")
@click.option("--winoground", type=click.Path(file_okay=False, exists=True), default=None,
              help="Winoground in its official layout (examples.jsonl, images/): text / image / group scores.")
@click.option("--mmvp", type=click.Path(file_okay=False, exists=True), default=None,
              help="MMVP-VLM in its official layout (Questions.csv, 'MLLM_VLM Images/'): per-category accuracy.")
@click.option("--segmentation", default=None,
              help="Open-vocabulary segmentation data (seg:DIR, shapes-seg:test): mIoU and pixel accuracy.")
@click.option("--segmentation-limit", type=POSITIVE_INT, default=None, help="Segment only the first N images.")
@click.option("--background-threshold", type=click.FloatRange(0, 1), default=None,
              help="Segmentation: pixels whose best class probability is below this are background.")
@_last_block_options
@click.option("--allow-unfinished", is_flag=True,
              help="Evaluate a run that has not finished training (its best epoch so far) without refusing.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the metrics here.")
@encode_options
@_friendly_errors
def evaluate(model_path, labelled, retrieval, which, winoground, mmvp, segmentation, segmentation_limit,
             background_threshold, last_attention, skip_last_mlp, allow_unfinished, json_out, verbose,
             **kwargs):
    """Zero-shot and retrieval scores of a trained model on labelled / captioned data."""
    from alignprobe.io import write_json_atomic
    from alignprobe.probe.pipelines.train import evaluate_checkpoint

    from alignprobe.errors import ValidationError

    _setup_logging(kwargs["quiet"], verbose)
    segmentation_only = {"--segmentation-limit": segmentation_limit is not None,
                         "--background-threshold": background_threshold is not None,
                         "--last-attention": last_attention != "qk", "--skip-last-mlp": skip_last_mlp}
    stray = [flag for flag, given in segmentation_only.items() if given]
    if stray and not segmentation:  # checked before any work, so nothing is silently ignored
        raise ValidationError(f"{', '.join(stray)}: only apply to --segmentation; give "
                              "--segmentation SPEC (e.g. shapes-seg:test) or drop them")
    options = _options(kwargs)
    evaluations = dict(winoground=winoground, mmvp=mmvp, segmentation=segmentation,
                       segmentation_limit=segmentation_limit if segmentation else None,
                       background_threshold=background_threshold if segmentation else None)
    if segmentation:
        evaluations.update(last_attention=last_attention, skip_last_mlp=skip_last_mlp)
    result = evaluate_checkpoint(model_path, labelled=_data_spec(labelled), retrieval=_data_spec(retrieval),
                                 options=options, which=which, allow_unfinished=allow_unfinished,
                                 evaluations=evaluations)
    if result.get("unfinished"):
        click.echo(f"note: {result['unfinished']}", err=True)
    click.echo(f"model: {result['model']} ({which})  labelled: {result['labelled']}  retrieval: {result['retrieval']}")
    shown = {k: v for k, v in result["metrics"].items() if not k.startswith(("iou_", "mmvp_"))}
    _print_table([{k: _fmt(v) for k, v in shown.items()}])
    if json_out:
        write_json_atomic(json_out, result)
        click.echo(f"wrote {json_out}", err=True)


# --------------------------------------------------------------------------- classify


def _image_files(images: str) -> list[Path]:
    from alignprobe.errors import DataError

    path = Path(images).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"--images {images!r} is neither an image file nor a directory")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {path}")
    return files


def _class_names(classes: str) -> list[str]:
    from alignprobe.errors import ValidationError

    path = Path(classes).expanduser()
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        names = [c.strip() for c in classes.split(",")]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise ValidationError("--classes is empty; give comma-separated names or a file with one name per line")
    return names


@click.command()
@click.option("--model", "model_path", required=True, type=click.Path(exists=True),
              help="Run directory of `alignprobe train` (or its aligned.json).")
@click.option("--images", required=True, help="An image file or a directory of images (searched recursively).")
@click.option("--classes", required=True, help="Comma-separated class names, or a file with one per line.")
@click.option("--templates", default=None, help="Prompt templates: simple, clip, or a file ['a photo of a {}.'].")
@click.option("--top-k", type=int, default=1, show_default=True, help="Classes listed per image.")
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None, help="Encoder compute dtype.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write predictions here.")
@_friendly_errors
def classify(model_path, images, classes, templates, top_k, which, device, dtype, json_out):
    """Zero-shot classification of images with a trained model."""
    from alignprobe.io import write_json_atomic
    from alignprobe.probe.pipelines.aligned import load_aligned

    files = _image_files(images)
    names = _class_names(classes)
    model = load_aligned(model_path, device=device, encoder_dtype=dtype, which=which)
    result = model.classify(files, names, templates=templates)
    rows, out = [], []
    for f, top, i in zip(files, result.top(top_k), range(len(files))):
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
@click.option("--model", "model_path", required=True, type=click.Path(exists=True),
              help="Run directory of `alignprobe train` (or its aligned.json).")
@click.option("--data", required=True, help="Segmentation data: seg:DIR (VOC / ADE20K / images+masks) or shapes-seg:test.")
@click.option("--figure", type=click.Path(dir_okay=False), default=None,
              help="Also draw image / prediction / ground truth of the first images into this PNG.")
@click.option("--figure-images", type=POSITIVE_INT, default=4, show_default=True)
@click.option("--limit", type=POSITIVE_INT, default=None, help="Score only the first N images.")
@click.option("--window", type=POSITIVE_INT, default=None, help="Sliding-window size in pixels [the encoder's input].")
@click.option("--stride", type=POSITIVE_INT, default=None, help="Sliding-window stride in pixels [half the window].")
@click.option("--short-side", type=POSITIVE_INT, default=None, help="Resize images to this short side first.")
@click.option("--background-threshold", type=click.FloatRange(0, 1), default=None,
              help="Pixels whose best class probability is below this are background.")
@_last_block_options
@click.option("--templates", default=None, help="Prompt templates: a name (imagenet, ...) or a file [the set's, else CLIP's 80].")
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Also write the scores here.")
@encode_options
@_friendly_errors
def segment(model_path, data, figure, figure_images, limit, window, stride, short_side, background_threshold,
            last_attention, skip_last_mlp, templates, which, json_out, verbose, **kwargs):
    """Open-vocabulary semantic segmentation with a trained model: patch tokens through the vision
    head against class prompts through the text head (mIoU, pixel accuracy, per-class IoU)."""
    from alignprobe.io import write_json_atomic
    from alignprobe.probe.evals.aligned import segment_aligned
    from alignprobe.probe.pipelines.aligned import load_aligned

    _setup_logging(kwargs["quiet"], verbose)
    options = _options(kwargs)
    aligned = load_aligned(model_path, device=options.device, encoder_dtype=options.dtype, which=which)
    settings = {k: v for k, v in dict(window=window, stride=stride, short_side=short_side,
                                      background_threshold=background_threshold).items() if v is not None}
    settings.update(last_attention=last_attention, skip_last_mlp=skip_last_mlp)
    row = segment_aligned(aligned, data, figure=figure, n_figure=figure_images, limit=limit, templates=templates,
                          progress=not options.quiet, **settings)
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
@click.option("--model", "model_path", required=True, type=click.Path(exists=True),
              help="Run directory of `alignprobe train` (or its aligned.json).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for the transformers model (config.json, model.safetensors, preprocessor_config.json).")
@click.option("--which", type=click.Choice(["best", "latest"]), default="best", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --out.")
@_friendly_errors
def export(model_path, out_dir, which, overwrite):
    """The run's vision encoder (backbone at its trained layer + trained head) as a transformers model:
    a vision tower for LLaVA-style MLLMs, loaded with AutoModel.from_pretrained after `import alignprobe`."""
    from alignprobe.probe.export import export_vision_tower

    check_writable(out_dir, "export directory (--out)")
    out = export_vision_tower(model_path, out_dir, which=which, overwrite=overwrite)
    click.echo(f"wrote {out}")
    click.echo(f"load it with: import alignprobe, transformers; transformers.AutoModel.from_pretrained({str(out)!r})")


__all__ = ["train", "evaluate", "classify", "segment", "export"]
