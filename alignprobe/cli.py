"""The `alignprobe` command line: `models`, `encode`, `run`, `sweep`, `report`, `plot` here; the SAIL
commands (`train`, `eval`, `classify`, `segment`, `export`) in `alignprobe.cli_train`.

Each command parses its flags (one name per meaning across commands; renamed flags keep their old
spelling for one release, see `cli_common.renamed_option`), calls the public API and prints what it
returns. Modules that import torch, pandas or matplotlib are imported inside the command that needs
them, so that `alignprobe --help` stays fast.
"""
from __future__ import annotations

from alignprobe._allocator import keep_freed_memory

# First thing, before torch or numpy fragment the heap: large activations are then reused instead of
# being unmapped and faulted in again every batch (alignprobe/_allocator.py says why and what it measured).
keep_freed_memory()

import sys  # noqa: E402
from pathlib import Path

import click

from alignprobe._version import __version__
from alignprobe.backbones import registry_table
from alignprobe.cli_common import POSITIVE_INT as _POSITIVE_INT
from alignprobe.cli_common import SEED as _SEED
from alignprobe.cli_common import check_writable as _check_writable
from alignprobe.cli_common import check_writable_file as _check_writable_file
from alignprobe.cli_common import encode_options as _encode_options
from alignprobe.cli_common import friendly_errors as _friendly_errors
from alignprobe.cli_common import options_from as _options_from
from alignprobe.cli_common import print_table as _print_table
from alignprobe.cli_common import renamed_option as _renamed_option
from alignprobe.cli_common import seed_list_callback as _seed_list
from alignprobe.cli_common import setup_logging as _setup_logging
from alignprobe.cli_common import shard_option_callback as _shard_callback
from alignprobe.cli_common import vision_layer_option as _vision_layer_option
from alignprobe.cli_train_options import train_flag_options as _train_flag_options
from alignprobe.cli_train_options import train_flag_values as _train_flag_values
from alignprobe.config import override
from alignprobe.errors import ValidationError
from alignprobe.probe.embeddings.encode_job import encode_dataset
from alignprobe.probe.embeddings.encoding import parse_shard
from alignprobe.probe.embeddings.layers import encode_dataset_layers
from alignprobe.probe.training.train_log import check_backend
from alignprobe.reports.summary import format_run_summary


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="alignprobe")
def main():
    """Assess and learn the alignment of frozen vision and language encoders (SAIL)."""


#: `--preset` of run and sweep; train's says the same from its side.
PROBE_PRESET_HELP = ("Force this reference recipe exactly, at any data size. Default: sail-probe (the paper's linear "
                     "alignment probe: run and sweep measure alignment), adapted below 100k pairs with each change "
                     "recorded; `train` defaults to sail because it trains the full SAIL heads.")
#: `--metrics` of run and sweep: groups to compute (report's --columns picks record columns to show).
METRICS_HELP = ("Metric groups to compute, comma-separated: kmeans_nmi,knn,linear_probe,zero_shot,retrieval,"
                "similarity [all]. (`report --columns` picks the record columns to show.)")
RESULTS_DIR_HELP = "Results directory: one JSON record per run (read by `alignprobe report`)."


def _probe_training_options(func):
    """The probe-training flags `run` and `sweep` share: the preset and the `TrainConfig` rows for them."""
    func = _train_flag_options("run")(func)
    return click.option("--preset", type=click.Choice(["sail-probe", "sail"]), default=None,
                        help=PROBE_PRESET_HELP)(func)


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
        click.option("--similarity", default=None,
                     help="Similarity measures of the raw features, comma-separated, each permutation-calibrated "
                          "(alignprobe.metrics.list_measures()) [mutual_knn,cka,cknna]."),
        click.option("--n-permutations", type=click.IntRange(min=1), default=None,
                     help="Permutations calibrating each similarity score; the smallest p is 1/(K+1) [200]."),
        click.option("--similarity-alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help="Level of each similarity score's calibration threshold [0.05]."),
        click.option("--baselines", default=None,
                     help="Training-free alignments fitted on the probe's training pairs and scored like it, "
                          "comma-separated: procrustes, ridge, cca, asif, or none [procrustes,ridge]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _results_dir_option(func):
    return _renamed_option("--results-dir", "results_dir", old=("--out",), default="results", show_default=True,
                           type=click.Path(file_okay=False), help=RESULTS_DIR_HELP)(func)


def _protocol_values(kwargs: dict) -> dict:
    values = {name: kwargs.pop(name) for name in ("labelled_train", "allow_overlap", "similarity_samples",
                                                   "retrieval_max_captions", "similarity", "n_permutations",
                                                   "similarity_alpha", "baselines")}
    for name in ("similarity", "baselines"):  # comma lists -> tuples (the config checks the names)
        if values[name] is not None:
            values[name] = tuple(v.strip() for v in values[name].split(",") if v.strip())
    return {k: v for k, v in values.items() if v is not None}


def _probe_training_values(kwargs: dict):
    """Pop the `_probe_training_options` values: (preset, the TrainConfig fields the user set)."""
    preset = kwargs.pop("preset")
    train = _train_flag_values(kwargs)
    if "log_to" in train:
        check_backend(train["log_to"])
    return preset, train


def _metric_groups(metrics: str | None):
    return None if metrics is None else tuple(m.strip() for m in metrics.split(",") if m.strip())


@main.command()
@click.option("--modality", type=click.Choice(["vision", "text"]), default=None,
              help="List only the vision or only the text encoders [both].")
@_friendly_errors
def models(modality):
    """List the encoder registry."""
    _print_table(registry_table(modality))


@main.command()
@click.option("--model", "-m", required=True, help="Encoder name, alias, hub id (hf:/timm:/st:) or local directory.")
@click.option("--data", "-d", required=True, help="Data spec: shapes, digits, csv:FILE, wds:DIR, folder:DIR, coco:FILE...")
@click.option("--split", default=None, help="Split of the data set (train/test/val...).")
@click.option("--modality", type=click.Choice(["vision", "text"]), default=None,
              help="Needed only when a local directory could be either.")
@click.option("--shard", default=None, callback=_shard_callback,
              help="I/N: encode a deterministic share (default: torchrun's rank).")
@_vision_layer_option(several="encode", help="Vision block(s) N or N1,N2,...: features of those blocks, one pass "
                                             "filling one cache entry per layer (each the encoder NAME@N).")
@_encode_options(device_help="where the encoder runs")
@_friendly_errors
def encode(model, data, split, modality, shard, vision_layer, verbose, **kwargs):
    """Encode a data set with one encoder into the embedding cache."""
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
@click.option("--metrics", default=None, help=METRICS_HELP)
@click.option("--seed", type=_SEED, default=None, help="Seed for splits, k-means and the probe [0].")
@click.option("--vision-pooling", default=None, help="Override the registry's vision pooling (cls|mean|concat|pooler).")
@click.option("--text-pooling", default=None, help="Override the registry's text pooling (mean|cls|last|encode).")
@_vision_layer_option(several=None, help="Take vision features from block N instead of the last one (one block: "
                                         "`sweep --vision-layer N1,N2,...` probes several in one pass).")
@click.option("--text-layer", type=click.IntRange(min=0), default=None,
              help="Take text features from block N instead of the last one (as --text NAME@N; "
                   "`alignprobe layers` finds the best vision x text pair).")
@click.option("--select-layers", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Probe the layer pair an `alignprobe layers` record selected (its JSON); the record is "
                   "named in this run's config with the measure, n and calibrated p that chose it.")
@click.option("--n-pairs", default=None,
              help="Probe (and baselines) on a seeded subset of the training pairs: a count (500), a fraction "
                   "(0.25) or all [all]. `sweep --n-pairs 500,2000,all` draws nested subsets.")
@_probe_training_options
@_results_dir_option
@click.option("--force", is_flag=True, help="Recompute even if a finished record exists.")
@_encode_options(device_help="where the encoders run and the probe trains")
@_friendly_errors
def run(vision, text, pairs, labelled, retrieval, metrics, seed, vision_pooling, text_pooling, vision_layer,
        text_layer, select_layers, n_pairs, results_dir, force, verbose, **kwargs):
    """Probe the alignment of one vision x text pair and write its result record.

    \b
    The probe follows the SAIL reference (scripts/alignment_probing.sh): linear heads into 2048-d,
    sigmoid loss with every caption a positive, Lion (0.9, 0.99), lr 1e-5, wd 1e-7, batch 32,768,
    100 epochs, 10% warm-up then cosine, no held-out split. Below 100k pairs the recipe is adapted
    (batch min(n, 256), lr 3e-4, early stopping on 10% held-out pairs, bf16 autocast where the
    device computes bf16 natively); each change is
    printed and recorded. --preset sail-probe forces the exact recipe at any size.
    """
    _setup_logging(kwargs["quiet"], verbose)
    _check_writable(results_dir, "results directory (--results-dir)")
    preset, train = _probe_training_values(kwargs)
    protocol = _protocol_values(kwargs)
    options = _options_from(kwargs)  # refuses an unwritable cache before the slow import below
    from alignprobe.probe.pipelines.run import RunConfig, run_pair  # torch: not needed for --help or bad input
    values = dict(vision=vision, text=text, pairs=pairs, labelled=labelled, retrieval=retrieval,
                  seed=seed, vision_pooling=vision_pooling, text_pooling=text_pooling, train=train,
                  preset=preset, vision_layer=vision_layer, text_layer=text_layer, n_pairs=n_pairs,
                  metrics=_metric_groups(metrics), **protocol)
    if select_layers:
        if vision_layer is not None or text_layer is not None:
            raise ValidationError("--select-layers sets both layers; drop --vision-layer / --text-layer")
        from alignprobe.probe.pipelines.layer_pairs import selected_layers  # torch: not needed for --help

        values.update(selected_layers(select_layers, vision, text))
    config = RunConfig(**{k: v for k, v in values.items() if v is not None})
    record, path, reused = run_pair(config, out_dir=results_dir, options=options, force=force)
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
@click.option("--metrics", default=None, help=METRICS_HELP)
@_results_dir_option
@click.option("--shard", default=None, callback=_shard_callback,
              help="I/N: run a deterministic share of the pairs (Slurm array, hosts).")
@click.option("--force", is_flag=True, help="Rerun pairs whose result already exists.")
@_vision_layer_option(several="sweep", help="Vision block(s) N or N1,N2,...: probe each vision encoder at each "
                                            "block, encoded in one pass [the last block].")
@click.option("--n-pairs", default=None,
              help="Probe each pair on nested, seeded subsets of the training pairs: counts, fractions or all, "
                   "comma-separated (500,2000,all); `plot` then draws alignment against the number of pairs.")
@_probe_training_options
@_encode_options(device_help="where the encoders run and the probes train")
@_friendly_errors
def sweep(vision, text, config_file, seeds, pairs, labelled, retrieval, metrics, results_dir, shard, force,
          vision_layer, n_pairs, verbose, **kwargs):
    """Probe every pair of a vision x text grid; finished pairs are skipped.

    Each encoder loads at most once (and not at all when its embeddings are cached); the probe
    recipe is that of `alignprobe run` (see its --help)."""
    _setup_logging(kwargs["quiet"], verbose)
    _check_writable(results_dir, "results directory (--results-dir)")
    preset, train = _probe_training_values(kwargs)
    protocol = _protocol_values(kwargs)
    options = _options_from(kwargs)  # refuses an unwritable cache before the slow import below
    from alignprobe.probe.pipelines.sweep import SweepConfig, run_sweep  # torch: not needed for --help or bad input
    run = {k: v for k, v in dict(pairs=pairs, labelled=labelled, retrieval=retrieval, preset=preset,
                                 vision_layer=vision_layer, n_pairs=n_pairs, metrics=_metric_groups(metrics),
                                 **protocol).items() if v is not None}
    if train:
        run["train"] = train
    if config_file:
        cfg = SweepConfig.from_file(config_file, vision=vision, text=text, seeds=seeds)
        cfg.run.update(run)
        cfg = SweepConfig(cfg.vision, cfg.text, cfg.seeds, cfg.run)
    else:
        if not vision or not text:
            raise ValidationError("give --vision and --text (comma-separated), or --config FILE")
        cfg = SweepConfig(vision=vision, text=text, seeds=seeds or [0], run=run)
    outcomes = run_sweep(cfg, out_dir=results_dir, options=options, shard=parse_shard(shard), force=force)
    _print_table([{"vision": o.config.vision, "text": o.config.text, "seed": o.config.seed,
                   "status": o.status, "error": (o.error or "")[:80]} for o in outcomes])
    failed = sum(o.status == "failed" for o in outcomes)
    click.echo(f"\n{len(outcomes)} pairs: {sum(o.status == 'done' for o in outcomes)} run, "
               f"{sum(o.status == 'skipped' for o in outcomes)} already done, {failed} failed; "
               f"results in {results_dir}")
    if failed:
        sys.exit(1)


@main.command()
@click.argument("results_dir", type=click.Path(file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex", "html"]), default=None,
              help="Table format, one of them [md, or from --output's suffix].")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write to FILE instead of stdout.")
@_renamed_option("--columns", "columns", old=("--metrics",), default=None,
                 help="Record columns to show: metric names, 'all', or a group (clustering, separability, "
                      "alignment). (`run --metrics` picks the metric groups to compute.)")
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
@click.option("--versus-baseline", is_flag=True,
              help="Add 'probe minus best baseline' columns: how much the trained probe adds over the best "
                   "training-free alignment of the same record (md, csv, latex).")
@_friendly_errors
def report(results_dir, fmt, output, columns, sort_by, rows, export, exclude, correlations, n_boot, seed,
           versus_baseline):
    """Comparison tables of a results directory (Markdown, CSV, LaTeX, HTML).

    Markdown and HTML reports also state, across vision encoders, each predictor's correlation with
    alignment (bootstrap 95% CI, permutation p; no interval below 5 encoders) and whether clustering
    quality predicts alignment better than linear separability (paired-bootstrap interval)."""
    # pandas (the store, the tables): not needed for --help
    from alignprobe.reports.report import SUFFIX_FORMATS, write_report
    from alignprobe.reports.report_status import count_records, failed_rerun_lines, store_warnings_held
    from alignprobe.reports.store import export_results, load_results

    for path, what in ((output, "report file (--output)"), (export, "export file (--export)")):
        if path:
            _check_writable_file(path, what)
    count = count_records(results_dir)
    table = dict(metrics=columns, rows=rows, sort_by=sort_by, versus_baseline=versus_baseline)
    with store_warnings_held():  # the unreadable records are named below, once
        try:
            text = write_report(results_dir, fmt, output, correlations=correlations, exclude=exclude,
                                n_boot=n_boot, seed=seed, **table)
        except OSError as err:  # the check above passed but the write failed (disk full, lost mount)
            fallback = fmt or SUFFIX_FORMATS.get(Path(output).suffix.lower(), "md")
            click.echo(write_report(results_dir, fallback, None, **table))
            click.echo(f"error: could not write {output} ({err.strerror or err}); the report is printed above "
                       f"instead", err=True)
            sys.exit(1)
        # damaged records are named and counted, never silently missing; then the later failures
        for line in count.lines(results_dir) + failed_rerun_lines(load_results(results_dir)):
            click.echo(line, err=True)
        if export:
            export_results(load_results(results_dir), export)
            click.echo(f"store exported to {export}", err=True)
    if output:
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text)


@main.command()
@click.argument("results_dir", type=click.Path(file_okay=False))
@_renamed_option("--output-dir", "output_dir", old=("-o", "--output"), type=click.Path(file_okay=False),
                 default=None, help="Directory for the figures [RESULTS_DIR/plots].")
@click.option("--text", default=None, help="Fix the text encoder (default: one panel per text encoder).")
@_renamed_option("--formats", "formats", old=("--format",), default="png,pdf", show_default=True,
                 help="Figure formats, comma-separated (each figure is written in every one).")
@click.option("--n-boot", type=_POSITIVE_INT, default=1000, show_default=True, help="Bootstrap resamples for the CIs.")
@click.option("--seed", type=_SEED, default=0, show_default=True)
@click.option("--exclude", default=None,
              help="Encoders (e.g. controls pixels,random-vit) left out of every figure and correlation.")
@click.option("--rows", default=None,
              help="Vision encoders (a,b,c) or a filter comparing columns with literals, e.g. "
                   "\"group_hash == '...'\" to keep one configuration of a pair run under several.")
@_friendly_errors
def plot(results_dir, output_dir, text, formats, n_boot, seed, exclude, rows):
    """Clustering-vs-alignment correlation plots, heat map and predictor summary."""
    from alignprobe.reports.plots import make_plots  # matplotlib, pandas: not needed for --help

    _check_writable(output_dir or Path(results_dir) / "plots", "plot directory (--output-dir)")
    notes: list[str] = []
    paths = make_plots(results_dir, output_dir, formats=tuple(f.strip() for f in formats.split(",")),
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
from alignprobe.cli_layers import layers  # noqa: E402  (the layer-pair search, its own module)
main.add_command(layers)


if __name__ == "__main__":  # pragma: no cover
    main()
