"""`alignprobe layers`: find the best vision-layer x text-layer pair, with the maximum calibrated.

Defined standalone; `alignprobe.cli` adds it to the `main` group. It parses flags, calls
`alignprobe.probe.pipelines.layer_pairs` and `alignprobe.reports.layer_heatmap`, and prints
what they return. The pipeline imports torch, so it is imported inside the command: `--help`
stays fast.
"""
from __future__ import annotations

from pathlib import Path

import click

from alignprobe.cli_common import POSITIVE_INT, SEED, check_writable, encode_options, friendly_errors
from alignprobe.cli_common import options_from, print_table, setup_logging
from alignprobe.errors import ValidationError
from alignprobe.probe.embeddings.layers import parse_layers
from alignprobe.reports.records import now_iso

#: Rows of the table printed after the search (the files hold every pair).
SHOWN_PAIRS = 10


def _layers_callback(ctx, param, value):
    """``--vision-layers 1,2,3`` -> [1, 2, 3], checked when parsed (before any model loads)."""
    try:
        layers = parse_layers(value)
    except ValidationError as err:
        raise click.BadParameter(str(err).replace("--vision-layer", "--" + param.name.replace("_", "-"))) from None
    return None if layers is None else tuple(layers)


def _alpha_callback(ctx, param, value):
    if not 0.0 < value < 1.0:
        raise click.BadParameter(f"alpha must be in (0, 1), got {value}")
    return value


@click.command()
@click.option("--vision", required=True, help="Vision encoder: name, alias, hf:/timm: id or local directory.")
@click.option("--text", required=True, help="Text encoder: name, alias, hf:/st: id or local directory.")
@click.option("--measure", default="mutual_knn", show_default=True,
              help="Similarity measure that scores each pair (see alignprobe.metrics.list_measures()).")
@click.option("--vision-layers", default=None, callback=_layers_callback, metavar="N[,N...]",
              help="Vision blocks to search (0 = the patch embeddings) [every block 1..L].")
@click.option("--text-layers", default=None, callback=_layers_callback, metavar="N[,N...]",
              help="Text blocks to search (0 = the token embeddings) [every block 1..L].")
@click.option("--n-permutations", type=POSITIVE_INT, default=200, show_default=True,
              help="Permutations K of the calibration (the smallest p is 1 / (K + 1)).")
@click.option("--alpha", type=float, default=0.05, show_default=True, callback=_alpha_callback,
              help="Level of the calibration threshold.")
@click.option("--pairs", default="shapes:train", show_default=True,
              help="Image-caption pairs; scored on the held-out sample `run` uses for its similarity scores.")
@click.option("--samples", "similarity_samples", type=POSITIVE_INT, default=1024, show_default=True,
              help="At most this many held-out pairs (the seeded sample of `run`).")
@click.option("--k", "similarity_k", type=POSITIVE_INT, default=10, show_default=True,
              help="Neighbours of the kNN measures (capped at n - 1).")
@click.option("--vision-pooling", default=None, help="Override the registry's vision pooling (cls|mean|concat).")
@click.option("--text-pooling", default=None, help="Override the registry's text pooling (mean|cls|last).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the held-out sample and permutations.")
@click.option("--results-dir", "out_dir", default="results/layers", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the record (JSON), the table (CSV, Markdown) and the heat map.")
@click.option("--formats", "formats", default="png,pdf", show_default=True, help="Heat map formats, comma-separated.")
@encode_options
@friendly_errors
def layers(vision, text, measure, vision_layers, text_layers, n_permutations, alpha, pairs, similarity_samples,
           similarity_k, vision_pooling, text_pooling, seed, out_dir, formats, verbose, **kwargs):
    """Score every vision-layer x text-layer pair and calibrate the best one.

    \b
    Each encoder is encoded once for all its layers (one cache entry per layer). Every pair is
    scored by --measure on run's held-out sample and calibrated with K permutations; the maximum
    over pairs is calibrated with the same permutation applied to every pair (Algorithm 2 of
    Groger, Wen & Brbic, ICML 2026), so its p-value accounts for the search.
    """
    # the pipeline and the figure load torch and matplotlib: imported here so --help stays fast
    from alignprobe.probe.pipelines.layer_pairs import LayerPairsConfig, find_layer_pair, write_layer_pairs
    from alignprobe.reports.layer_heatmap import plot_layer_heatmap

    setup_logging(kwargs["quiet"], verbose)
    check_writable(out_dir, "layer-search directory (--results-dir)")
    options = options_from(kwargs)
    config = LayerPairsConfig(vision=vision, text=text, pairs=pairs, measure=measure, vision_layers=vision_layers,
                              text_layers=text_layers, vision_pooling=vision_pooling, text_pooling=text_pooling,
                              n_permutations=n_permutations, alpha=alpha, seed=seed,
                              similarity_samples=similarity_samples, similarity_k=similarity_k)
    started = now_iso()
    result = find_layer_pair(config, options)
    paths = write_layer_pairs(result, out_dir, started=started)
    figures = plot_layer_heatmap(paths["record"], Path(paths["record"]).with_suffix(""),
                                 formats=formats.split(","))
    _report(result, paths, figures)


def _report(result, paths: dict, figures: list) -> None:
    table = result.table().head(SHOWN_PAIRS)
    print_table([{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()}
                 for row in table.to_dict(orient="records")])
    c = result.calibration
    v, t = result.selected
    verdict = "significant" if c.significant else "NOT significant"
    click.echo(f"\nselected pair: vision layer {v} x text layer {t}: {c.measure} {c.observed:.4f}; "
               f"the maximum over {c.scores.size} pairs is {verdict} (calibrated {c.calibrated:.4f}, "
               f"p = {c.p_value:.4g}, threshold {c.threshold:.4f}; n = {result.n}, K = {c.n_permutations})")
    for kind, path in [*paths.items(), *(("figure", f) for f in figures)]:
        click.echo(f"{kind}: {path}")
