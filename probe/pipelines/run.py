"""`alignprobe run`: probe the alignment of one vision x text pair, end to end.

registry -> encode (cached) -> vision-quality metrics + linear alignment probe
-> alignment scores -> one JSON result record. The probe is the one training
engine (`alignprobe.probe.training`) with the ``"sail-probe"`` recipe; its
pairs stream from the memory-mapped cache. A finished record is reused only
when everything that changes its numbers matches (`reuse_key`), and a run
killed mid-training resumes from its last checkpoint.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alignprobe.config import EncodeOptions
from alignprobe.errors import DataError, ValidationError

from alignprobe.probe.embeddings.cache import stable_hash
from alignprobe.probe.embeddings.lazy import MEMO_DIR, LazyEncoder
from alignprobe.probe.training.config import (PRESETS, SMALL_DATA_PAIRS, TrainConfig, describe_changes,
                                             resolve_recipe, small_data_changes)

log = logging.getLogger("alignprobe.run")

#: Bumped whenever a record's numbers would change for the same inputs (new metric definitions, ...).
RESULT_FORMAT = 2

#: Metric groups `--metrics` may select; each maps to the record keys it fills.
METRIC_GROUPS = {
    "kmeans_nmi": "clustering quality: k-means NMI/ARI of the vision features against the labels",
    "knn": "clustering quality: DINO-style weighted k-NN accuracy of the vision features",
    "linear_probe": "linear separability: logistic-regression accuracy of the vision features",
    "zero_shot": "alignment: zero-shot classification through the probe's heads",
    "retrieval": "alignment: image-text retrieval R@1/5/10 through the probe's heads",
    "similarity": "alignment: mutual-kNN, CKA and CKNNA between raw paired features",
}
PROBE_METRICS = {"zero_shot", "retrieval"}
VISION_METRICS = {"kmeans_nmi", "knn", "linear_probe"}
CHECKPOINTS_DIR = ".checkpoints"


@dataclass
class RunConfig:
    """Everything that determines a run's result (its hash names the record).

    ``preset``: None trains the ``"sail-probe"`` recipe, adapted (and the
    changes recorded) below 100k pairs; ``"sail-probe"`` / ``"sail"`` force
    that reference recipe at any size. ``train``: `TrainConfig` fields set
    explicitly (they override single values; the record lists them).
    """

    vision: str
    text: str
    pairs: str = "shapes:train"  # what the alignment probe trains on
    labelled: str = "shapes:test"  # zero-shot classification and vision-quality metrics
    retrieval: str = "shapes:test"  # captioned images for R@k
    metrics: tuple[str, ...] = tuple(METRIC_GROUPS)
    seed: int = 0
    vision_pooling: str | None = None
    text_pooling: str | None = None
    vision_layer: int | None = None
    labelled_train: str | None = None  # the k-NN / linear-probe bank (ImageNet train); None: split --labelled
    knn_k: tuple[int, ...] = (10, 20, 100, 200)  # SAIL evaluation/eval_knn_*.py
    similarity_k: int = 10
    similarity_samples: int | None = 1024  # platonic-rep: scores depend on n, so n is fixed and recorded
    retrieval_max_captions: int | None = 5  # SAIL coco_zs_retrieval.py / CLIP_benchmark: 5 captions an image
    labelled_test_fraction: float = 0.3  # of the labelled set, held out for k-NN / linear probe (split protocol)
    allow_overlap: bool = False  # pairs sharing images with a reported test set is an error unless allowed
    preset: str | None = None
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields set explicitly

    def __post_init__(self):
        self.metrics = tuple(self.metrics)
        self.knn_k = tuple(int(k) for k in self.knn_k)
        unknown = [m for m in self.metrics if m not in METRIC_GROUPS]
        if unknown:
            raise ValidationError(f"unknown metric(s) {unknown}; choose from: {', '.join(METRIC_GROUPS)}")
        if not self.metrics:
            raise ValidationError("no metrics selected; choose from: " + ", ".join(METRIC_GROUPS))
        if not 0.0 < self.labelled_test_fraction < 1.0:
            raise ValidationError(f"labelled_test_fraction must be in (0, 1), got {self.labelled_test_fraction}")
        for name in ("similarity_samples", "retrieval_max_captions"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValidationError(f"{name} must be a positive int or None, got {value!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValidationError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        TrainConfig.preset(self.preset or "sail-probe", **self.train)  # one validation step, before any work

    def as_dict(self) -> dict:
        d = asdict(self)
        d["metrics"] = list(self.metrics)
        d["knn_k"] = list(self.knn_k)
        d["train"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(self.train.items())}
        return d

    def config_hash(self) -> str:
        return stable_hash(self.as_dict(), length=12)

    def group_hash(self) -> str:
        """The hash without the seed: records sharing it are seeds of one experiment."""
        return stable_hash({k: v for k, v in self.as_dict().items() if k != "seed"}, length=12)


def training_defaults_hash() -> str:
    """Changes when a recipe default or the small-data adaptation changes (so old records are not reused)."""
    return stable_hash({"presets": PRESETS, "small": small_data_changes(SMALL_DATA_PAIRS - 1),
                        "threshold": SMALL_DATA_PAIRS}, length=12)


@dataclass
class _Encoded:
    """Embeddings of one data set by both encoders: cache entries (memory-mapped) and small arrays."""

    dataset: Any
    images: Any = None  # CachedEmbeddings
    image_valid: np.ndarray | None = None
    captions: Any = None  # CachedEmbeddings
    caption_image: np.ndarray | None = None  # caption row -> image row
    prompts: np.ndarray | None = None
    prompt_class: np.ndarray | None = None

    def image_array(self) -> np.ndarray:
        """The valid images as fp32 (evaluation sets only: they are small)."""
        return self.images.rows(np.flatnonzero(self.image_valid))


class RunPipeline:
    """Runs one RunConfig. Use `run_pair(config, ...)` unless you need the pieces.

    ``encoders``: a shared pool ``{key: LazyEncoder}`` (a sweep passes one, so
    each encoder loads at most once); ``checkpoint_dir``: where the probe's
    checkpoints go (resumed when present).
    """

    def __init__(self, config: RunConfig, options: EncodeOptions | None = None, *,
                 encoders: dict | None = None, checkpoint_dir: str | Path | None = None):
        self.config = config
        self.options = options or EncodeOptions()
        self.timings: dict[str, float] = {}
        self.details: dict[str, Any] = {}  # chosen hyperparameters etc.: recorded, not metrics
        self.data_info: dict[str, dict] = {}
        self.encoder_info: dict[str, dict] = {}
        self._encoders = encoders if encoders is not None else {}
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.messages: list[str] = []  # the recipe changes, as printed
        self._datasets: dict[str, Any] = {}  # spec -> opened data set (opened once: for the key and the run)

    # ------------------------------------------------------------------ encoders
    def check(self) -> None:
        """Resolve both encoders and check their weights are here, before any other work."""
        self.vision_spec = self.encoder("vision").spec
        self.text_spec = self.encoder("text").spec

    def spec_info(self) -> dict:
        """Registry facts the reports group and label by (family, size, control)."""
        out = {}
        for role, spec in (("vision_info", self.vision_spec), ("text_info", self.text_spec)):
            out[role] = {"name": spec.name, "family": spec.family, "params_m": spec.params_m,
                         "is_control": spec.is_control, "source": spec.source, "hub_id": spec.hub_id,
                         "dim": self.encoder_info.get(spec.modality, {}).get("dim", spec.dim),
                         "layer": getattr(spec, "layer", None)}
        return out

    def encoder_key(self, modality: str) -> tuple:
        cfg = self.config
        if modality == "vision":
            return ("vision", cfg.vision, cfg.vision_pooling, cfg.vision_layer)
        return ("text", cfg.text, cfg.text_pooling)

    def encoder(self, modality: str) -> LazyEncoder:
        key = self.encoder_key(modality)
        if key not in self._encoders:
            cfg, opts = self.config, self.options
            overrides = ({"pooling": cfg.vision_pooling, "layer": cfg.vision_layer} if modality == "vision"
                         else {"pooling": cfg.text_pooling})
            self._encoders[key] = LazyEncoder(modality, key[1], memo_dir=opts.cache().root / MEMO_DIR,
                                              device=opts.device, dtype=opts.dtype, **overrides)
        return self._encoders[key]

    def reuse_key(self) -> str:
        """Everything that changes the record's numbers, computed without loading a model."""
        opts = self.options
        return stable_hash({
            "format": RESULT_FORMAT, "run": self.config.as_dict(), "training_defaults": training_defaults_hash(),
            "encoders": {m: self.encoder(m).identity_key() for m in ("vision", "text")},
            "storage_dtype": opts.storage_dtype, "strict": opts.strict,
            "data": {role: self._dataset(spec).describe().get("fingerprint")
                     for role, spec in self._specs().items()},
        }, length=16)

    def _specs(self) -> dict[str, str]:
        cfg, wanted = self.config, set(self.config.metrics)
        specs = {}
        if wanted & PROBE_METRICS or "similarity" in wanted:
            specs["pairs"] = cfg.pairs
        if wanted & {"kmeans_nmi", "knn", "linear_probe", "zero_shot"}:
            specs["labelled"] = cfg.labelled
        if cfg.labelled_train and wanted & VISION_METRICS:
            specs["labelled_train"] = cfg.labelled_train
        if "retrieval" in wanted:
            specs["retrieval"] = cfg.retrieval
        return specs

    def _dataset(self, spec: str):
        from alignprobe.probe.data.spec import open_dataset

        if spec not in self._datasets:
            self._datasets[spec] = open_dataset(spec, strict=self.options.strict)
        return self._datasets[spec]

    def _encode_set(self, role: str, spec: str, need_images: bool, need_captions: bool,
                    need_prompts: bool) -> _Encoded:
        from alignprobe.probe.data.datasets import class_prompts, flatten_captions
        from alignprobe.probe.embeddings.encoding import ImageSource, TextSource, encode_source

        t0 = time.perf_counter()
        dataset = self._dataset(spec)
        self.data_info[role] = dataset.describe()
        enc = _Encoded(dataset)
        common = dict(cache=self.options.cache(), batch_size=self.options.batch_size,
                      storage_dtype=self.options.storage_dtype, recompute=self.options.recompute,
                      strict=self.options.strict, quiet=self.options.quiet)
        if need_images:
            res = encode_source(self.encoder("vision"), ImageSource(dataset),
                                num_workers=self.options.num_workers, **common)
            enc.images, enc.image_valid = res.embeddings, np.asarray(res.embeddings.valid, bool)
            self.data_info[role]["skipped_images"] = len(res.skipped)
        if need_captions:
            if not dataset.has_captions:
                raise DataError(f"--{role} {spec!r} has no captions; give a captioned data set")
            texts, caption_image = flatten_captions(dataset)
            res = encode_source(self.encoder("text"), TextSource(dataset.name, texts, "captions"), **common)
            enc.captions, enc.caption_image = res.embeddings, np.asarray(caption_image, dtype=np.int64)
        if need_prompts:
            if not dataset.class_names:
                raise DataError(f"--{role} {spec!r} has no class names; give a labelled data set")
            prompts, prompt_class = class_prompts(dataset)
            res = encode_source(self.encoder("text"), TextSource(dataset.name, prompts, "prompts"), **common)
            enc.prompts, enc.prompt_class = res.embeddings.to_numpy(), np.asarray(prompt_class)
        for modality in ("vision", "text"):
            self.encoder_info.setdefault(modality, self.encoder(modality).manifest())
        self.timings[f"encode_{role}"] = time.perf_counter() - t0
        return enc

    # ------------------------------------------------------------------ steps
    def run(self) -> dict:
        cfg = self.config
        wanted = set(cfg.metrics)
        metrics: dict[str, Any] = {}
        self.check()
        specs = self._specs()
        self._check_overlap(specs)
        pairs = self._encode_set("pairs", cfg.pairs, True, True, False) if "pairs" in specs else None
        labelled = None
        if "labelled" in specs:
            labelled = self._encode_set("labelled", cfg.labelled, True, False, "zero_shot" in wanted)
            if wanted & VISION_METRICS:
                metrics.update(self._vision_quality(labelled, wanted))
        probe = None
        if wanted & PROBE_METRICS:
            probe = self._train_probe(pairs)
            val = [h["val_loss"] for h in probe.history_ if h.get("val_loss") is not None]
            if val:
                metrics["probe_val_loss"] = float(min(val))
            metrics["probe_epochs"] = len(probe.history_)
        if "similarity" in wanted:
            metrics.update(self._similarity(pairs, probe))
        if "zero_shot" in wanted:
            metrics.update(self._zero_shot(labelled, probe))
        if "retrieval" in wanted:
            retrieval = self._encode_set("retrieval", cfg.retrieval, True, True, False)
            metrics.update(self._retrieval(retrieval, probe))
        return metrics

    def _check_overlap(self, specs: dict[str, str]) -> None:
        """No silent train/test overlap: the training sets against every reported test set."""
        from alignprobe.probe.data.overlap import check_no_overlap

        checks = [("pairs", test) for test in ("labelled", "retrieval") if "pairs" in specs and test in specs]
        if "labelled_train" in specs:
            checks.append(("labelled_train", "labelled"))
        for train, test in checks:
            overlap = check_no_overlap(self._dataset(specs[train]), self._dataset(specs[test]),
                                       train_role=f"--{train.replace('_', '-')}", test_role=f"--{test}",
                                       allow=self.config.allow_overlap)
            if overlap.n:
                self.details.setdefault("overlap", {})[f"{train}->{test}"] = overlap.to_record(allowed=True)

    def _vision_quality(self, labelled: _Encoded, wanted: set) -> dict:
        """Clustering quality and linear separability, by the protocol the record names.

        With ``labelled_train`` (the paper's: an ImageNet-train bank scored on
        ImageNet val, SAIL ``evaluation/eval_knn_*.py``) the bank is streamed from
        the cache; without it, ``labelled`` is split (``details.vision_protocol``).
        """
        from alignprobe import metrics as M
        from alignprobe.probe.training.probe import resolve_device

        cfg = self.config
        if labelled.dataset.labels is None:
            raise DataError(f"--labelled {cfg.labelled!r} has no labels")
        x = labelled.image_array()
        y = np.asarray(labelled.dataset.labels)[labelled.image_valid]
        bank_x = bank_y = bank_rows = None
        if cfg.labelled_train:
            bank = self._encode_set("labelled_train", cfg.labelled_train, True, False, False)
            if bank.dataset.labels is None:
                raise DataError(f"--labelled-train {cfg.labelled_train!r} has no labels")
            if list(bank.dataset.class_names or []) != list(labelled.dataset.class_names or []):
                raise DataError(f"--labelled-train {cfg.labelled_train!r} and --labelled {cfg.labelled!r} have "
                                f"different class lists; the bank's labels must mean what the evaluated set's do")
            bank_rows = np.flatnonzero(bank.image_valid)
            bank_x, bank_y = bank.images, np.asarray(bank.dataset.labels)[bank_rows]
        t0 = time.perf_counter()
        res = M.vision_quality(x, y, bank_x, bank_y, bank_rows=bank_rows,
                               metrics=[m for m in ("kmeans_nmi", "knn", "linear_probe") if m in wanted],
                               k=cfg.knn_k, seed=cfg.seed, test_fraction=cfg.labelled_test_fraction,
                               device=resolve_device(self.options.device))
        self.details.update(res["details"])
        self.timings["vision_quality"] = time.perf_counter() - t0
        return res["metrics"]

    def _train_probe(self, pairs: _Encoded):
        from alignprobe.probe.training.probe import AlignmentProbe

        t0 = time.perf_counter()
        counts = np.bincount(pairs.caption_image, minlength=len(pairs.image_valid))
        n_usable = int((pairs.image_valid & (counts > 0)).sum())
        if n_usable < 4:
            raise DataError(f"only {n_usable} usable image-caption pairs in --pairs {self.config.pairs!r}; "
                            f"the probe needs at least 4")
        explicit = dict(self.config.train)
        explicit.setdefault("seed", self.config.seed)
        if self.options.device != "auto":
            explicit.setdefault("device", self.options.device)
        preset = self.config.preset or "sail-probe"
        config, changes = resolve_recipe(preset, n_usable, explicit, exact=self.config.preset is not None)
        for line in describe_changes(changes, preset):
            log.info("%s", line)
            self.messages.append(line)
        probe = AlignmentProbe(config, quiet=self.options.quiet, out_dir=self.checkpoint_dir,
                               resume=self.checkpoint_dir is not None)
        probe.fit(pairs.images, pairs.captions, caption_image_index=pairs.caption_image,
                  image_valid=pairs.image_valid)
        self.probe_config = config
        self.details.update({
            "preset": preset, "preset_forced": self.config.preset is not None, "recipe_changes": changes,
            "train_captions": int(probe.train_captions_), "train_images": int(len(probe.train_index_)),
            "probe_best_epoch": int(probe.best_epoch_), "probe_stopped_early": bool(probe.stopped_early_),
        })
        self.timings["probe"] = time.perf_counter() - t0
        return probe

    def _similarity(self, pairs: _Encoded, probe) -> dict:
        """mutual-kNN, CKA, CKNNA of the raw paired features on a fixed seeded sample, with null levels."""
        from alignprobe import metrics as M

        t0 = time.perf_counter()
        # Pairs the probe did not train on when it held some out, else all usable ones.
        first = _first_caption(pairs.caption_image, len(pairs.image_valid))
        rows = probe.val_index_ if probe is not None and len(probe.val_index_) > 1 else \
            np.flatnonzero(pairs.image_valid & (first >= 0))
        rows = rows[M.similarity_sample(len(rows), self.config.similarity_samples, self.config.seed)]
        a, b = pairs.images.rows(rows), pairs.captions.rows(first[rows])
        res = M.similarity_scores(a, b, k=self.config.similarity_k, sample_size=None, seed=self.config.seed)
        self.details.update(res["details"])
        self.details["similarity_rows"] = "held-out pairs" if probe is not None and len(probe.val_index_) > 1 \
            else "all usable pairs"
        self.timings["similarity"] = time.perf_counter() - t0
        return res["metrics"]

    def _zero_shot(self, labelled: _Encoded, probe) -> dict:
        from alignprobe.probe.training.evaluation import zero_shot_metrics

        image = probe.transform_image(labelled.image_array())
        prompts = probe.transform_text(labelled.prompts)
        labels = np.asarray(labelled.dataset.labels)[labelled.image_valid]
        return zero_shot_metrics(image, prompts, labels, len(labelled.dataset.class_names))

    def _retrieval(self, retrieval: _Encoded, probe) -> dict:
        from alignprobe.probe.training.evaluation import retrieval_scores

        from alignprobe import metrics as M

        valid_images = np.flatnonzero(retrieval.image_valid)
        capped = np.zeros(len(retrieval.caption_image), dtype=bool)
        capped[M.cap_captions_per_image(retrieval.caption_image, self.config.retrieval_max_captions)] = True
        keep = np.isin(retrieval.caption_image, valid_images) & capped
        self.details["retrieval_max_captions"] = self.config.retrieval_max_captions
        self.details["retrieval_captions"] = int(keep.sum())
        remap = -np.ones(len(retrieval.image_valid), dtype=np.int64)
        remap[valid_images] = np.arange(len(valid_images))
        image = probe.transform_image(retrieval.images.rows(valid_images))
        text = probe.transform_text(retrieval.captions.rows(np.flatnonzero(keep)))
        return retrieval_scores(image, text, remap[retrieval.caption_image[keep]])


def _first_caption(caption_image: np.ndarray, n_images: int) -> np.ndarray:
    """For each image, the row of its first caption (-1: none)."""
    first = np.full(n_images, -1, dtype=np.int64)
    rows = np.arange(len(caption_image))[::-1]
    first[caption_image[::-1]] = rows  # reversed, so the first caption's row is written last
    return first


# ---------------------------------------------------------------------- public
def record_fields(kind: str, config, pipeline: RunPipeline, options: EncodeOptions, started: str) -> dict:
    """The fields every result record has (probe runs and SAIL training alike):
    what ran, on which encoders and data, with which options, when and where.
    ``config`` is the run's own config (`RunConfig` or `SailRunConfig`)."""
    from alignprobe.reports.records import environment, now_iso

    return {
        "kind": kind,
        "status": "ok",
        "vision": config.vision,
        "text": config.text,
        "config": config.as_dict(),
        "config_hash": config.config_hash(),
        "group_hash": config.group_hash(),
        **pipeline.spec_info(),
        "seed": config.seed,
        "encoders": pipeline.encoder_info,
        "data": pipeline.data_info,
        "encode_options": {k: v for k, v in options.as_dict().items() if k != "quiet"},
        "timings_s": {k: round(v, 3) for k, v in pipeline.timings.items()},
        "started": started,
        "finished": now_iso(),
        "environment": environment(),
    }


def reusable_record(path: Path, reuse_key: str) -> dict | None:
    """The finished record at ``path`` if it was computed from exactly these inputs, else None.

    A damaged (unreadable) record counts as missing: it is recomputed, not fatal.
    """
    from alignprobe.reports.records import lookup_record

    record = lookup_record(path)  # a damaged record is moved aside and treated as missing
    if not isinstance(record, dict) or record.get("status") != "ok":
        return None
    if record.get("reuse_key") != reuse_key:
        log.info("%s was computed with other settings, defaults or inputs; recomputing it", path.name)
        return None
    return record


def run_pair(config: RunConfig, *, out_dir: str | Path = "results", options: EncodeOptions | None = None,
             force: bool = False, encoders: dict | None = None) -> tuple[dict, Path, bool]:
    """Run one pair and write its record; returns (record, path, reused).

    The record is reused when its ``reuse_key`` matches -- the run config, the
    training defaults, each encoder's identity (no model is loaded to tell),
    the data fingerprints, the storage dtype and the result format -- unless
    ``force``. Training checkpoints go to ``out_dir/.checkpoints/<record>/``;
    a killed run resumes from them, and they are removed once the record is written.
    """
    from alignprobe.reports.records import now_iso, record_path, write_record

    options = options or EncodeOptions()
    path = record_path(out_dir, config.vision, config.text, config.config_hash())
    pipeline = RunPipeline(config, options, encoders=encoders)
    key = pipeline.reuse_key()
    if not force:
        record = reusable_record(path, key)
        if record is not None:
            return record, path, True
    pipeline.checkpoint_dir = Path(out_dir) / CHECKPOINTS_DIR / f"{path.stem}__{key}"
    started = now_iso()
    t0 = time.perf_counter()
    metrics = pipeline.run()
    pipeline.timings["total"] = time.perf_counter() - t0
    record = record_fields("probe", config, pipeline, options, started)
    record.update({
        "reuse_key": key,
        "result_format": RESULT_FORMAT,
        "probe_config": pipeline.probe_config.to_dict() if hasattr(pipeline, "probe_config") else None,
        "metrics": metrics,
        "details": pipeline.details,
    })
    write_record(path, record)
    shutil.rmtree(pipeline.checkpoint_dir, ignore_errors=True)
    try:
        pipeline.checkpoint_dir.parent.rmdir()  # only when no other run's checkpoints are in it
    except OSError:
        pass
    return record, path, False
