"""The `alignprobe` command line. It only parses flags and calls the public API."""
from __future__ import annotations

from alignprobe._allocator import keep_freed_memory

# First thing, before torch or numpy fragment the heap: large activations are then reused instead of
# being unmapped and faulted in again every batch (alignprobe/_allocator.py says why and what it measured).
keep_freed_memory()

import sys  # noqa: E402
from pathlib import Path

import click

from alignprobe._version import __version__
from alignprobe.cli_common import SEED as _SEED
from alignprobe.cli_common import POSITIVE_INT as _POSITIVE_INT
from alignprobe.cli_common import check_writable as _check_writable
from alignprobe.cli_common import check_writable_file as _check_writable_file
from alignprobe.cli_common import encode_options as _encode_options
from alignprobe.cli_common import friendly_errors as _friendly_errors
from alignprobe.cli_common import omit_unreadable_notes as _omit_unreadable_notes
from alignprobe.cli_common import options_from as _options_from
from alignprobe.cli_common import print_table as _print_table
from alignprobe.cli_common import seed_list_callback as _seed_list
from alignprobe.cli_common import setup_logging as _setup_logging
from alignprobe.cli_common import shard_option_callback as _shard_callback


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="alignprobe")
def main():
    """Assess and learn the alignment of frozen vision and language encoders (SAIL)."""


def _probe_training_options(func):
    """The probe-training flags `run` and `sweep` share (the engine's `TrainConfig` fields)."""
    options = [
        click.option("--preset", type=click.Choice(["sail-probe", "sail"]), default=None,
                     help="Force this reference recipe exactly, at any data size (default: sail-probe, "
                          "adapted below 100k pairs with each change recorded)."),
        click.option("--epochs", type=click.IntRange(min=1), default=None, help="Probe epochs [100; 200 small data]."),
        click.option("--probe-batch-size", type=click.IntRange(min=2), default=None,
                     help="Probe batch [32,768; min(n, 1024) small data]."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Probe peak learning rate [1e-5; 1e-3 small data]."),
        click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
                     help="Hold out this share of the *pairs* for early stopping [0; 0.1 small data]. "
                          "Never a reported test set."),
        click.option("--log-to", type=click.Choice(["tensorboard", "wandb"]), default=None,
                     help="Also log the probe's training to TensorBoard or W&B (optional extras)."),
        click.option("--vision-layer", default=None,
                     help="Take vision features from block N instead of the last one (sweep: N1,N2,... probes "
                          "each vision encoder at each layer, encoded in one pass)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _protocol_options(func):
    """The assessment-protocol flags `run` and `sweep` share (see README, "Protocol")."""
    options = [
        click.option("--labelled-train", default=None,
                     help="Labelled bank for k-NN / linear probe (ImageNet train), scored on --labelled (val); "
                          "default: a split of --labelled."),
        click.option("--allow-overlap", is_flag=True, default=None,
                     help="Proceed (and record it) when --pairs shares images with a reported test set."),
        click.option("--similarity-samples", type=click.IntRange(min=4), default=None,
                     help="Pairs sampled (seeded) for mutual-kNN / CKA / CKNNA [1024]."),
        click.option("--retrieval-max-captions", type=click.IntRange(min=1), default=None,
                     help="Captions per image scored in retrieval [5, as the reference's COCO protocol]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _protocol_values(kwargs: dict) -> dict:
    values = {name: kwargs.pop(name) for name in ("labelled_train", "allow_overlap", "similarity_samples",
                                                   "retrieval_max_captions")}
    return {k: v for k, v in values.items() if v is not None}


def _probe_training_values(kwargs: dict):
    """Pop the `_probe_training_options` values: (preset, explicit TrainConfig fields, vision layer)."""
    from alignprobe.probe.training.train_log import check_backend

    preset = kwargs.pop("preset")
    train = {name: value for name, value in (
        ("epochs", kwargs.pop("epochs")), ("batch_size", kwargs.pop("probe_batch_size")),
        ("lr", kwargs.pop("lr")), ("val_fraction", kwargs.pop("val_fraction")),
        ("log_to", kwargs.pop("log_to"))) if value is not None}
    if "log_to" in train:
        check_backend(train["log_to"])
    from alignprobe.probe.embeddings.layers import parse_layers

    return preset, train, parse_layers(kwargs.pop("vision_layer"))


@main.command()
@click.option("--modality", type=click.Choice(["vision", "text"]), default=None)
@_friendly_errors
def models(modality):
    """List the encoder registry."""
    from alignprobe.backbones import registry_table

    _print_table(registry_table(modality))


@main.command()
@click.option("--model", "-m", required=True, help="Encoder name, alias, hub id (hf:/timm:/st:) or local directory.")
@click.option("--data", "-d", required=True, help="Data spec: shapes, digits, csv:FILE, wds:DIR, folder:DIR, coco:FILE...")
@click.option("--split", default=None, help="Split of the data set (train/test/val...).")
@click.option("--modality", type=click.Choice(["vision", "text"]), default=None,
              help="Needed only when a local directory could be either.")
@click.option("--shard", default=None, callback=_shard_callback,
              help="I/N: encode a deterministic share (default: torchrun's rank).")
@click.option("--vision-layer", default=None,
              help="Vision block(s) N or N1,N2,...: features of those blocks, one pass filling one cache "
                   "entry per layer (each the encoder NAME@N).")
@_encode_options
@_friendly_errors
def encode(model, data, split, modality, shard, vision_layer, verbose, **kwargs):
    """Encode a data set with one encoder into the embedding cache."""
    from alignprobe.config import override
    from alignprobe.probe.embeddings.encode_job import encode_dataset
    from alignprobe.probe.embeddings.layers import encode_dataset_layers

    _setup_logging(kwargs["quiet"], verbose)
    options = override(_options_from(kwargs), shard=shard)
    if vision_layer is not None:
        results = encode_dataset_layers(model, data, vision_layer, split=split, options=options)
    else:
        results = encode_dataset(model, data, modality=modality, split=split, options=options)
    rows = []
    for kind, res in results.items():
        emb = res.embeddings
        rows.append({
            "kind": kind,
            "rows": len(emb) if emb is not None else "(other shards pending)",
            "dim": emb.dim if emb is not None else "",
            "cache": "hit" if res.cache_hit else "miss",
            "encoded": res.encoded_rows,
            "skipped": len(res.skipped),
            "seconds": f"{res.seconds:.1f}",
            "path": str(emb.directory) if emb is not None else "",
        })
    _print_table(rows)
    for kind, res in results.items():
        for sample_id, reason in list(res.skipped.items())[:20]:
            click.echo(f"skipped {kind} {sample_id}: {reason}", err=True)


@main.command()
@click.option("--vision", required=True, help="Vision encoder: name, alias, hf:/timm: id or local directory.")
@click.option("--text", required=True, help="Text encoder: name, alias, hf:/st: id or local directory.")
@click.option("--pairs", default=None, help="Image-caption pairs the probe trains on [shapes:train].")
@click.option("--labelled", default=None, help="Labelled images: zero-shot and vision-quality metrics [shapes:test].")
@click.option("--retrieval", default=None, help="Captioned images for retrieval R@k [shapes:test].")
@_protocol_options
@click.option("--metrics", default=None,
              help="Comma-separated subset of: kmeans_nmi,knn,linear_probe,zero_shot,retrieval,similarity [all].")
@click.option("--seed", type=_SEED, default=None, help="Seed for splits, k-means and the probe [0].")
@click.option("--vision-pooling", default=None, help="Override the registry's vision pooling (cls|mean|concat|pooler).")
@click.option("--text-pooling", default=None, help="Override the registry's text pooling (mean|cls|last|encode).")
@_probe_training_options
@click.option("--out", "out_dir", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Results directory (one JSON record per run).")
@click.option("--force", is_flag=True, help="Recompute even if a finished record exists.")
@_encode_options
@_friendly_errors
def run(vision, text, pairs, labelled, retrieval, metrics, seed, vision_pooling, text_pooling, out_dir, force,
        verbose, **kwargs):
    """Probe the alignment of one vision x text pair and write its result record.

    \b
    The probe follows the SAIL reference (scripts/alignment_probing.sh): linear heads into 2048-d,
    sigmoid loss with every caption a positive, Lion (0.9, 0.99), lr 1e-5, wd 1e-7, batch 32,768,
    100 epochs, 10% warm-up then cosine, no held-out split. Below 100k pairs the recipe is adapted
    (batch min(n, 1024), lr 1e-3, 200 epochs, early stopping on 10% held-out pairs); each change is
    printed and recorded. --preset sail-probe forces the exact recipe at any size.
    """
    from alignprobe.errors import ValidationError
    from alignprobe.probe.pipelines.run import RunConfig, run_pair
    from alignprobe.reports.summary import format_run_summary

    _setup_logging(kwargs["quiet"], verbose)
    _check_writable(out_dir, "results directory (--out)")
    preset, train, vision_layer = _probe_training_values(kwargs)
    if vision_layer is not None and len(vision_layer) > 1:
        raise ValidationError(f"run probes one layer; for several (--vision-layer {','.join(map(str, vision_layer))}) "
                              f"use `alignprobe sweep`, which encodes them in one pass")
    vision_layer = vision_layer[0] if vision_layer else None
    protocol = _protocol_values(kwargs)
    options = _options_from(kwargs)
    values = dict(vision=vision, text=text, pairs=pairs, labelled=labelled, retrieval=retrieval,
                  seed=seed, vision_pooling=vision_pooling, text_pooling=text_pooling, train=train,
                  preset=preset, vision_layer=vision_layer, **protocol)
    if metrics is not None:
        values["metrics"] = tuple(m.strip() for m in metrics.split(",") if m.strip())
    config = RunConfig(**{k: v for k, v in values.items() if v is not None})
    record, path, reused = run_pair(config, out_dir=out_dir, options=options, force=force)
    click.echo(format_run_summary(record))
    click.echo(f"\nrecord: {path}" + ("  (reused: finished earlier with this config; --force to recompute)"
                                      if reused else ""))


@main.command()
@click.option("--vision", default=None, help="Comma-separated vision encoders, e.g. dinov2-b,dinov2-l,mae-l.")
@click.option("--text", default=None, help="Comma-separated text encoders, e.g. gte,minilm.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML/TOML sweep file (vision, text, seeds, run); flags override it.")
@click.option("--seeds", default=None, callback=_seed_list, help="Comma-separated seeds [0].")
@click.option("--pairs", default=None, help="Image-caption pairs the probes train on [shapes:train].")
@click.option("--labelled", default=None, help="Labelled images [shapes:test].")
@click.option("--retrieval", default=None, help="Captioned images for retrieval [shapes:test].")
@_protocol_options
@click.option("--metrics", default=None, help="Comma-separated metric groups [all].")
@click.option("--out", "out_dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--shard", default=None, callback=_shard_callback,
              help="I/N: run a deterministic share of the pairs (Slurm array, hosts).")
@click.option("--force", is_flag=True, help="Rerun pairs whose result already exists.")
@_probe_training_options
@_encode_options
@_friendly_errors
def sweep(vision, text, config_file, seeds, pairs, labelled, retrieval, metrics, out_dir, shard, force,
          verbose, **kwargs):
    """Probe every pair of a vision x text grid; finished pairs are skipped.

    Each encoder loads at most once (and not at all when its embeddings are cached); the probe
    recipe is that of `alignprobe run` (see its --help)."""
    from alignprobe.errors import ValidationError
    from alignprobe.probe.embeddings.encoding import parse_shard
    from alignprobe.probe.pipelines.sweep import SweepConfig, run_sweep

    _setup_logging(kwargs["quiet"], verbose)
    _check_writable(out_dir, "results directory (--out)")
    preset, train, vision_layer = _probe_training_values(kwargs)
    protocol = _protocol_values(kwargs)
    options = _options_from(kwargs)
    run = {k: v for k, v in dict(pairs=pairs, labelled=labelled, retrieval=retrieval, preset=preset,
                                 vision_layer=vision_layer, **protocol).items() if v is not None}
    if train:
        run["train"] = train
    if metrics is not None:
        run["metrics"] = tuple(m.strip() for m in metrics.split(",") if m.strip())
    seed_list = seeds  # parsed and checked by the option's callback
    if config_file:
        cfg = SweepConfig.from_file(config_file, vision=vision, text=text, seeds=seed_list)
        cfg.run.update(run)
        cfg = SweepConfig(cfg.vision, cfg.text, cfg.seeds, cfg.run)
    else:
        if not vision or not text:
            raise ValidationError("give --vision and --text (comma-separated), or --config FILE")
        cfg = SweepConfig(vision=vision, text=text, seeds=seed_list or [0], run=run)
    outcomes = run_sweep(cfg, out_dir=out_dir, options=options, shard=parse_shard(shard), force=force)
    _print_table([{"vision": o.config.vision, "text": o.config.text, "seed": o.config.seed,
                   "status": o.status, "error": (o.error or "")[:80]} for o in outcomes])
    failed = sum(o.status == "failed" for o in outcomes)
    click.echo(f"\n{len(outcomes)} pairs: {sum(o.status == 'done' for o in outcomes)} run, "
               f"{sum(o.status == 'skipped' for o in outcomes)} already done, {failed} failed; "
               f"results in {out_dir}")
    if failed:
        sys.exit(1)


@main.command()
@click.argument("results_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex", "html"]), default=None,
              help="Table format [md, or from --output's suffix].")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write to FILE instead of stdout.")
@click.option("--metrics", default=None, help="Metric columns: names, 'all', or a group (clustering, separability, alignment).")
@click.option("--sort-by", default=None, help="Sort rows by this metric (best first) or column.")
@click.option("--rows", default=None,
              help="Vision encoders (a,b,c) or a filter comparing columns with literals, e.g. "
                   "\"text == 'minilm' and seed == 0\" (and/or/not, ==, <, in [...]).")
@click.option("--export", type=click.Path(dir_okay=False), default=None,
              help="Also export the whole store as Parquet or CSV (by suffix).")
@click.option("--exclude", default=None,
              help="Encoders (e.g. controls pixels,random-vit) left out of the correlation statistics.")
@click.option("--correlations/--no-correlations", default=True, show_default=True,
              help="Md/HTML: state each predictor's correlation, bootstrap CI and permutation p.")
@click.option("--n-boot", type=_POSITIVE_INT, default=1000, show_default=True, help="Bootstrap resamples for the CIs.")
@click.option("--seed", type=_SEED, default=0, show_default=True, help="Seed of the bootstrap and permutations.")
@_friendly_errors
def report(results_dir, fmt, output, metrics, sort_by, rows, export, exclude, correlations, n_boot, seed):
    """Comparison tables of a results directory (Markdown, CSV, LaTeX, HTML).

    Markdown and HTML reports also state, across vision encoders, each predictor's correlation with
    alignment (bootstrap 95% CI, permutation p; no interval below 5 encoders) and whether clustering
    quality predicts alignment better than linear separability (paired-bootstrap interval)."""
    from alignprobe.reports.records import iter_records
    from alignprobe.reports.report import write_report

    for path, what in ((output, "report file (--output)"), (export, "export file (--export)")):
        if path:
            _check_writable_file(path, what)
    unreadable: list = []
    n_files = sum(1 for _ in iter_records(results_dir, unreadable)) if Path(results_dir).is_dir() else 0
    _omit_unreadable_notes()  # named below, once
    try:
        text = write_report(results_dir, fmt, output, metrics=metrics, rows=rows, sort_by=sort_by,
                            correlations=correlations, exclude=exclude, n_boot=n_boot, seed=seed)
    except OSError as err:  # the check above passed but the write failed (disk full, lost mount)
        from alignprobe.reports.report import SUFFIX_FORMATS

        fallback = fmt or SUFFIX_FORMATS.get(Path(output).suffix.lower(), "md")
        click.echo(write_report(results_dir, fallback, None, metrics=metrics, rows=rows, sort_by=sort_by))
        click.echo(f"error: could not write {output} ({err.strerror or err}); the report is printed above "
                   f"instead", err=True)
        sys.exit(1)
    if unreadable:  # a header line: damaged records are named and counted, never silently missing
        click.echo(f"report: {n_files + len(unreadable)} record file(s) in {results_dir}, {len(unreadable)} "
                   f"unreadable (left out of the table):", err=True)
        for path, reason in unreadable:
            click.echo(f"  {reason}", err=True)
    _note_failed_reruns(results_dir)
    if export:
        from alignprobe.reports.store import export_results, load_results

        export_results(load_results(results_dir), export)
        click.echo(f"store exported to {export}", err=True)
    if output:
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text)


def _note_failed_reruns(results_dir) -> None:
    from alignprobe.reports.store import failed_reruns, load_results

    reruns = failed_reruns(load_results(results_dir))
    if len(reruns):  # both facts: the finished metrics are in the table, the later failure is named here
        click.echo(f"report: {len(reruns)} finished record(s) failed when rerun later; the table shows their "
                   f"finished metrics, the failures are kept beside them (*.failed.json):", err=True)
        for r in reruns.itertuples(index=False):
            click.echo(f"  {r.vision} x {r.text} (seed {r.seed}): {r.last_failure}", err=True)


@main.command()
@click.argument("results_dir", type=click.Path(file_okay=False))
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Directory for the figures [RESULTS_DIR/plots].")
@click.option("--text", default=None, help="Fix the text encoder (default: one panel per text encoder).")
@click.option("--format", "formats", default="png,pdf", show_default=True, help="Comma-separated figure formats.")
@click.option("--n-boot", type=_POSITIVE_INT, default=1000, show_default=True, help="Bootstrap resamples for the CIs.")
@click.option("--seed", type=_SEED, default=0, show_default=True)
@click.option("--exclude", default=None,
              help="Encoders (e.g. controls pixels,random-vit) left out of every figure and correlation.")
@click.option("--rows", default=None,
              help="Vision encoders (a,b,c) or a filter comparing columns with literals, e.g. "
                   "\"group_hash == '...'\" to keep one configuration of a pair run under several.")
@_friendly_errors
def plot(results_dir, output, text, formats, n_boot, seed, exclude, rows):
    """Clustering-vs-alignment correlation plots, heat map and predictor summary."""
    from alignprobe.reports.plots import make_plots

    _check_writable(output or Path(results_dir) / "plots", "plot directory (--output)")
    notes: list[str] = []
    paths = make_plots(results_dir, output, formats=tuple(f.strip() for f in formats.split(",")),
                       text=text, n_boot=n_boot, seed=seed, notes=notes, exclude=exclude, rows=rows)
    for path in paths:
        click.echo(str(path))
    for note in notes:  # figures left out (e.g. a constant metric), so a missing file is explained
        click.echo(f"note: {note}", err=True)


# SAIL training commands live in their own module; registered here so `alignprobe --help` lists them.
from alignprobe.cli_train import classify, evaluate, export, segment, train  # noqa: E402

main.add_command(train)
main.add_command(evaluate, name="eval")
main.add_command(classify)
main.add_command(segment)
main.add_command(export)


if __name__ == "__main__":  # pragma: no cover
    main()
