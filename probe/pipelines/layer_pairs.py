"""`alignprobe layers`: the best vision-layer x text-layer pair, found honestly.

Each encoder is loaded once and encodes the held-out sample that `run`'s
similarity scores use (its images, their first captions) once for all its layers
(one forward pass per batch, one cache entry per layer:
`alignprobe.probe.embeddings.layers.encode_source_layers`). Every pair of layers
is scored by one similarity measure on that sample, and the *maximum* over pairs is calibrated
with the same permutation applied to every layer (Algorithm 2 of Gröger, Wen &
Brbić, ICML 2026, `alignprobe.metrics.calibrate_max`): picking the best of many
pairs inflates the raw score even when nothing is shared, and only the
calibrated maximum's p-value accounts for that search. STRUCTURE (Gröger et
al., NeurIPS 2025) selects its layer pair the same way, by mutual-kNN.

The result is one JSON record (both `EncoderRequest`s, the measure, n, K, the
seed, every pair's observed / calibrated / p / threshold, the selected pair and
the maximum's calibrated p), a table (CSV and Markdown) and, from
`alignprobe.reports.layer_heatmap`, a heat map.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from alignprobe import metrics as M
from alignprobe.backbones.request import EncoderRequest
from alignprobe.config import EncodeOptions
from alignprobe.errors import DataError, ValidationError
from alignprobe.hashing import stable_hash
from alignprobe.io import write_text_atomic
from alignprobe.metrics.calibration import MaxCalibrationResult
from alignprobe.probe.data.datasets import flatten_captions
from alignprobe.probe.embeddings.encoding import TextSource
from alignprobe.probe.embeddings.layers import encode_source_layers, parse_layers
from alignprobe.probe.pipelines.workspace import Workspace, resolve_pair_recipe
from alignprobe.probe.training.engine import held_out_split
from alignprobe.reports.records import environment, now_iso, read_record, record_path, write_record

log = logging.getLogger("alignprobe.layers")

#: The `kind` of a layer-search record (its file name starts with it).
RECORD_KIND = "layers"


@dataclass
class LayerPairsConfig:
    """What a layer search is run on; its hash names the record.

    ``vision_layers`` / ``text_layers``: block numbers (None: every block 1..L of the encoder;
    0 is the embeddings and is searched only when asked for). ``similarity_samples``, ``similarity_k``
    and ``seed`` are `run`'s: the pairs are scored on the same held-out sample.
    """

    vision: str
    text: str
    pairs: str = "shapes:train"
    measure: str = "mutual_knn"
    vision_layers: tuple[int, ...] | None = None
    text_layers: tuple[int, ...] | None = None
    vision_pooling: str | None = None
    text_pooling: str | None = None
    n_permutations: int = 200
    alpha: float = 0.05
    seed: int = 0
    similarity_samples: int | None = 1024
    similarity_k: int = 10

    def __post_init__(self):
        for name in ("vision_layers", "text_layers"):
            value = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            setattr(self, name, None if value is None else tuple(_layers(value, flag)))
        M.get_measure(self.measure)  # an unknown measure fails now, naming the registered ones
        for name in ("n_permutations", "similarity_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 < float(self.alpha) < 1.0:
            raise ValidationError(f"alpha must be in (0, 1), got {self.alpha!r}")

    def request(self, modality: str) -> EncoderRequest:
        """The last-block request of one side (the layers are views of it)."""
        if modality == "vision":
            return EncoderRequest.create("vision", self.vision, pooling=self.vision_pooling)
        return EncoderRequest.create("text", self.text, pooling=self.text_pooling)

    def as_dict(self) -> dict:
        d = asdict(self)
        for name in ("vision_layers", "text_layers"):
            d[name] = None if d[name] is None else list(d[name])
        return d

    def config_hash(self) -> str:
        return stable_hash(self.as_dict(), length=12)


def _layers(value: Any, flag: str) -> list[int]:
    try:
        return parse_layers(value)
    except ValidationError as err:
        raise ValidationError(str(err).replace("--vision-layer", flag)) from None


@dataclass
class LayerPairsResult:
    """The scores of every layer pair and the calibrated maximum.

    ``calibration.scores[i, j]`` is the pair (``vision_layers[i]``, ``text_layers[j]``);
    ``selected`` is the pair of the maximum; ``n`` the held-out pairs scored.
    """

    config: LayerPairsConfig
    vision_request: EncoderRequest
    text_request: EncoderRequest
    vision_layers: list[int]
    text_layers: list[int]
    n: int
    k: int | None
    calibration: MaxCalibrationResult
    details: dict = field(default_factory=dict)

    @property
    def selected(self) -> tuple[int, int]:
        """(vision layer, text layer) of the highest observed score."""
        i, j = self.calibration.argmax
        return self.vision_layers[i], self.text_layers[j]

    def table(self) -> pd.DataFrame:
        """One row per pair: observed, calibrated, p, threshold, null mean; best first."""
        c = self.calibration
        rows = [{"vision_layer": v, "text_layer": t, "observed": float(c.scores[i, j]),
                 "calibrated": float(c.pair_calibrated[i, j]), "p": float(c.pair_p_values[i, j]),
                 "threshold": float(c.pair_thresholds[i, j]), "null_mean": float(c.pair_null_means[i, j]),
                 "selected": (v, t) == self.selected}
                for i, v in enumerate(self.vision_layers) for j, t in enumerate(self.text_layers)]
        return pd.DataFrame(rows).sort_values(["observed", "vision_layer", "text_layer"],
                                              ascending=[False, True, True], ignore_index=True)

    def to_record(self) -> dict:
        c = self.calibration
        v, t = self.selected
        return {
            "kind": RECORD_KIND, "status": "ok", "vision": self.config.vision, "text": self.config.text,
            "vision_request": self.vision_request.to_dict(), "text_request": self.text_request.to_dict(),
            "config": self.config.as_dict(), "config_hash": self.config.config_hash(),
            "measure": c.measure, "measure_params": {} if self.k is None else {"k": self.k},
            "n": self.n, "n_permutations": c.n_permutations, "alpha": c.alpha, "seed": self.config.seed,
            "vision_layers": self.vision_layers, "text_layers": self.text_layers,
            "pairs": self.table().to_dict(orient="records"),
            "selected": {"vision_layer": v, "text_layer": t, "observed": c.observed},
            "max": {"observed": c.observed, "calibrated": c.calibrated, "p": c.p_value,
                    "threshold": c.threshold, "null_mean": c.null_mean, "significant": bool(c.significant)},
            "details": self.details,
        }


# ---------------------------------------------------------------------------------------- the sample
def held_out_rows(image_valid: np.ndarray, caption_image: np.ndarray, *, seed: int,
                  similarity_samples: int | None, device: str = "auto") -> tuple[np.ndarray, str]:
    """The image rows `run`'s similarity scores are measured on, without training a probe.

    `run` scores the pairs its probe held out (the default recipe for this many usable pairs,
    split by the trainer with this seed), else every usable pair, then takes the seeded
    `similarity_sample` of them. Returns (rows, "held-out pairs" | "all usable pairs").
    """
    counts = np.bincount(caption_image, minlength=len(image_valid))
    usable = np.flatnonzero(image_valid & (counts > 0))
    if len(usable) < 4:
        raise DataError(f"only {len(usable)} images have an embedding and a caption; the search needs at least 4")
    config, _, _, _ = resolve_pair_recipe("sail-probe", None, {}, seed=seed, device=device,
                                          usable_pairs=len(usable))
    # the trainer's own split (a static function of the usable rows and the recipe), so the rows are run's
    _, val = held_out_split(usable, config)
    rows, what = (val, "held-out pairs") if len(val) > 1 else (usable, "all usable pairs")
    return rows[M.similarity_sample(len(rows), similarity_samples, seed)], what


# ---------------------------------------------------------------------------------------- encoding
@dataclass
class ImageRows:
    """The images of ``rows`` of a data set, in that order: an encode source of its own (the
    fingerprint names the rows, so the sample has its own cache entries)."""

    dataset: Any
    rows: np.ndarray
    what: str = "sample"
    kind: str = "images"

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def name(self) -> str:
        return f"{self.dataset.name} ({len(self.rows)} {self.what})"

    @property
    def ids(self) -> list[str]:
        ids = self.dataset.ids
        return [ids[int(i)] for i in self.rows]

    def describe(self) -> dict:
        digest = getattr(self.dataset, "image_fingerprint", None) or self.dataset.fingerprint
        fingerprint = stable_hash({"images": digest(), "rows": [int(i) for i in self.rows]}, length=32)
        return {"kind": self.kind, "name": self.name, "fingerprint": fingerprint, "n": len(self)}

    def load(self, i: int):
        return self.dataset.load_image(int(self.rows[i]))


def block_count(encoder) -> int | None:
    """How many blocks an encoder has (its layers are 1..count), or None when it cannot tell."""
    count = getattr(encoder, "num_layers", None)  # the text encoders say it themselves
    model = getattr(encoder, "model", None)
    if count is None:
        count = getattr(getattr(model, "config", None), "num_hidden_layers", None)  # transformers
    if count is None and getattr(model, "feature_info", None):
        count = len(model.feature_info)  # timm: forward_intermediates counts 1..len(feature_info)
    return int(count) if count else None


def encode_all_layers(workspace: Workspace, modality: str, source, layers: Sequence[int] | None) -> dict:
    """Load one side's encoder once and fill the cache entry of each layer with one pass over
    ``source``; returns ``{layer: CachedEmbeddings}`` (None layers: every block 1..L)."""
    opts = workspace.options
    request = workspace.requests[modality]
    encoder = request.build(device=opts.device, dtype=opts.dtype, trust_remote_code=opts.trust_remote_code)
    if layers is None:
        count = block_count(encoder)
        if count is None:
            raise ValidationError(f"cannot tell how many layers {request.label!r} has; name them with "
                                  f"--{modality}-layers 1,2,3")
        layers = list(range(1, count + 1))
    results = encode_source_layers(
        encoder, source, layers, cache=workspace.cache, batch_size=opts.batch_size,
        num_workers=opts.num_workers if modality == "vision" else 0, storage_dtype=opts.storage_dtype,
        shard_rows=opts.shard_rows, recompute=opts.recompute, strict=opts.strict, quiet=opts.quiet)
    # each entry's manifest names the layer's encoder (no second forward pass to rebuild the views)
    workspace.encoder_info[modality] = {n: r.embeddings.manifest["identity"]["encoder"] for n, r in results.items()}
    del encoder
    return {n: r.embeddings for n, r in results.items()}


# ---------------------------------------------------------------------------------------- the search
def score_layer_pairs(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], measure: str = "mutual_knn", *,
                      n_permutations: int = 200, alpha: float = 0.05, seed: int = 0,
                      k: int | None = 10) -> tuple[MaxCalibrationResult, int | None]:
    """Every (x layer, y layer) pair scored by ``measure`` and the maximum calibrated (Algorithm 2).

    ``xs[i]``, ``ys[j]``: ``(n, d)`` features of the same n samples. ``k`` (capped at n - 1) goes to
    measures that take one. Returns the `MaxCalibrationResult` and the k used (None: no k).
    """
    m = M.get_measure(measure)
    n = int(np.asarray(xs[0]).shape[0]) if len(xs) else 0
    params: dict[str, Any] = {}
    if "k" in m.params() and k is not None:
        params["k"] = min(int(k), n - 1)
    result = M.calibrate_max(list(xs), list(ys), m.name, n_permutations, alpha, seed, **params)
    return result, params.get("k")


def find_layer_pair(config: LayerPairsConfig, options: EncodeOptions | None = None) -> LayerPairsResult:
    """Encode both encoders at all their layers on the held-out sample of ``config.pairs`` and
    search every layer pair.

    The sample is drawn before encoding, as `run` draws it when every image reads (an image
    with a caption is a usable pair); only its images and their first captions are encoded,
    so the search costs a tenth of encoding the whole set. A sample image that cannot be read
    is left out (``details.unreadable``) -- then, and only then, `run` would have drawn its
    sample among the other images."""
    options = options or EncodeOptions()
    started = time.perf_counter()
    workspace = Workspace(config.request("vision"), config.request("text"), options)
    workspace.check()
    dataset = workspace.dataset(config.pairs)
    if not dataset.has_captions:
        raise DataError(f"--pairs {config.pairs!r} has no captions; give a captioned data set (CSV, webdataset, "
                        f"COCO, ...)")
    texts, caption_image = flatten_captions(dataset)
    caption_image = np.asarray(caption_image, dtype=np.int64)
    rows, what = held_out_rows(np.ones(len(dataset), bool), caption_image, seed=config.seed,
                               similarity_samples=config.similarity_samples, device=options.device)
    first = _first_caption(caption_image, len(dataset))
    images = encode_all_layers(workspace, "vision", ImageRows(dataset, rows, what), config.vision_layers)
    sample_texts = TextSource(f"{dataset.name} (first captions of {len(rows)} {what})",
                              [texts[j] for j in first[rows]], "captions")
    captions = encode_all_layers(workspace, "text", sample_texts, config.text_layers)
    encoded = time.perf_counter()
    valid = np.logical_and.reduce([np.asarray(e.valid, bool) for e in images.values()])
    if valid.sum() < 4:
        raise DataError(f"only {int(valid.sum())} of the {len(rows)} sampled images of {config.pairs!r} could be "
                        f"read; the search needs at least 4")
    keep = np.flatnonzero(valid)
    xs = [e.rows(keep) for e in images.values()]
    ys = [e.rows(keep) for e in captions.values()]
    log.info("scoring %d x %d layer pairs by %s on %d %s, %d permutations", len(xs), len(ys), config.measure,
             len(keep), what, config.n_permutations)
    calibration, k = score_layer_pairs(xs, ys, config.measure, n_permutations=config.n_permutations,
                                       alpha=config.alpha, seed=config.seed, k=config.similarity_k)
    details = {"rows": what, "data": dataset.describe(), "encoders": workspace.encoder_info,
               "unreadable": [dataset.ids[int(i)] for i in rows[~valid]],
               "timings_s": {"encode": round(encoded - started, 3), "score": round(time.perf_counter() - encoded, 3)}}
    return LayerPairsResult(config, workspace.requests["vision"], workspace.requests["text"], list(images),
                            list(captions), int(len(keep)), k, calibration, details)


def _first_caption(caption_image: np.ndarray, n_images: int) -> np.ndarray:
    """For each image, the row of its first caption (-1: none) -- the caption `run` pairs it with."""
    first = np.full(n_images, -1, dtype=np.int64)
    first[caption_image[::-1]] = np.arange(len(caption_image))[::-1]
    return first


# ---------------------------------------------------------------------------------------- outputs
def write_layer_pairs(result: LayerPairsResult, out_dir: str | Path, *, started: str | None = None) -> dict[str, Path]:
    """The record (JSON), the table (CSV and Markdown) in ``out_dir``; returns their paths by kind."""
    config = result.config
    path = record_path(out_dir, config.vision, config.text, config.config_hash(), kind=RECORD_KIND)
    record = result.to_record()
    record.update(started=started or now_iso(), finished=now_iso(), environment=environment())
    paths = {"record": write_record(path, record)}
    table = result.table()
    paths["csv"] = path.with_suffix(".csv")
    write_text_atomic(paths["csv"], table.to_csv(index=False))
    paths["md"] = path.with_suffix(".md")
    write_text_atomic(paths["md"], markdown_table(table))
    return paths


def markdown_table(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub Markdown table of ``table`` (pandas' own needs the optional ``tabulate``)."""
    def cell(v: Any) -> str:
        return f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def selected_layers(path: str | Path, vision: str, text: str) -> dict[str, Any]:
    """The pair an `alignprobe layers` record selected, for a run of ``vision`` x ``text``.

    Returns ``{"vision_layer", "text_layer", "layer_selection"}``: the layers and what chose them (the
    record, its measure, n, K, the maximum's calibrated score and p), which `run` / `sweep` record in
    their config so a probe of a searched pair always says that it was searched for and by what.
    The record must be of the same encoders (compared by `EncoderRequest` key, layers aside).
    """
    record = read_record(path)
    if record.get("kind") != RECORD_KIND or "selected" not in record:
        raise ValidationError(f"{path} is not an `alignprobe layers` record (kind {record.get('kind')!r}); "
                              f"pass the JSON record that `alignprobe layers` wrote")
    for modality, name in (("vision", vision), ("text", text)):
        searched = EncoderRequest.from_dict(record[f"{modality}_request"]).replace(layer=None)
        asked = EncoderRequest.create(modality, name).replace(layer=None)
        if searched.key() != asked.key():
            raise ValidationError(f"{path} searched the {modality} encoder {searched.label!r}, not {name!r}; "
                                  f"run `alignprobe layers` for this pair or pass its record")
    sel, best = record["selected"], record["max"]
    return {"vision_layer": int(sel["vision_layer"]), "text_layer": int(sel["text_layer"]),
            "layer_selection": {"record": str(Path(path).resolve()), "measure": record["measure"],
                                "n": record["n"], "n_permutations": record["n_permutations"],
                                "observed": best["observed"], "calibrated": best["calibrated"], "p": best["p"],
                                "significant": best["significant"]}}
