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

from alignprobe import metrics as M
from alignprobe.backbones.devices import resolve_device
from alignprobe.config import EncodeOptions
from alignprobe.errors import DataError, ValidationError
from alignprobe.hashing import stable_hash
from alignprobe.probe.data.overlap import check_no_overlap
from alignprobe.probe.embeddings.lazy import EncoderPool
from alignprobe.probe.pipelines.baselines_stage import (DEFAULT_BASELINES, check_baselines, score_baselines,
                                                        training_pairs)
from alignprobe.probe.pipelines.subsets import check_n_pairs, nested_subset
from alignprobe.probe.pipelines.workspace import (RESULT_FORMAT, EncodedSet, EncoderPair, Workspace,
                                                  resolve_pair_recipe)
from alignprobe.probe.training.config import PRESETS, TrainConfig
from alignprobe.probe.training.evaluation import evaluate
from alignprobe.probe.training.probe import AlignmentProbe
from alignprobe.reports.records import lookup_record, now_iso, record_path, write_record

log = logging.getLogger("alignprobe.run")

#: Metric groups `--metrics` may select; each maps to the record keys it fills.
METRIC_GROUPS = {
    "kmeans_nmi": "clustering quality: k-means NMI/ARI of the vision features against the labels",
    "knn": "clustering quality: DINO-style weighted k-NN accuracy of the vision features",
    "linear_probe": "linear separability: logistic-regression accuracy of the vision features",
    "zero_shot": "alignment: zero-shot classification through the probe's heads",
    "retrieval": "alignment: image-text retrieval R@1/5/10 through the probe's heads",
    "similarity": "alignment: similarity measures (--similarity) between raw paired features, calibrated",
}
PROBE_METRICS = {"zero_shot", "retrieval"}
VISION_METRICS = {"kmeans_nmi", "knn", "linear_probe"}
CHECKPOINTS_DIR = ".checkpoints"
#: Permutations calibrating each similarity score (Gröger, Wen & Brbić 2026 use 200; the smallest p is 1/201).
#: Measured on the demo (pixels 768-d x MiniLM 384-d, 240 held-out shapes pairs, a loaded 2-core machine):
#: 200 calibrated permutations of the default measures cost 0.7 s of CPU, less than the 10 recomputed random
#: pairings of the old null level (2-4 s), as calibrate_all prepares each side once; so 200 it is.
DEFAULT_PERMUTATIONS = 200


@dataclass
class RunConfig(EncoderPair):
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
    text_layer: int | None = None
    layer_selection: dict[str, Any] | None = None  # the `alignprobe layers` record that chose the layers
    labelled_train: str | None = None  # the k-NN / linear-probe bank (ImageNet train); None: split --labelled
    knn_k: tuple[int, ...] = (10, 20, 100, 200)  # SAIL evaluation/eval_knn_*.py
    similarity_k: int = 10
    similarity: tuple[str, ...] = M.DEFAULT_SIMILARITY_MEASURES  # registered measure names (metrics.list_measures())
    n_permutations: int = DEFAULT_PERMUTATIONS  # permutations calibrating each similarity score
    similarity_alpha: float = 0.05  # level of the calibration threshold
    baselines: tuple[str, ...] = DEFAULT_BASELINES  # training-free baselines beside the probe; () = none
    # A nested seeded subset of the training pairs (count or fraction; None: all) for the probe and the
    # baselines; similarity is then measured on the pairs the probe did not train on.
    n_pairs: int | float | None = None
    similarity_samples: int | None = 1024  # platonic-rep: scores depend on n, so n is fixed and recorded
    retrieval_max_captions: int | None = 5  # SAIL coco_zs_retrieval.py / CLIP_benchmark: 5 captions an image
    labelled_test_fraction: float = 0.3  # of the labelled set, held out for k-NN / linear probe (split protocol)
    allow_overlap: bool = False  # pairs sharing images with a reported test set is an error unless allowed
    preset: str | None = None
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields set explicitly

    def __post_init__(self):
        self.metrics = tuple(self.metrics)
        self.knn_k = tuple(int(k) for k in self.knn_k)
        self.similarity = _check_similarity(self.similarity)
        self.baselines = check_baselines(self.baselines)
        self.n_pairs = check_n_pairs(self.n_pairs)
        if isinstance(self.n_permutations, bool) or not isinstance(self.n_permutations, int) \
                or self.n_permutations < 1:
            raise ValidationError(f"n_permutations must be a positive int (200 is usual); got {self.n_permutations!r}")
        if isinstance(self.similarity_alpha, bool) or not isinstance(self.similarity_alpha, (int, float)) \
                or not 0.0 < self.similarity_alpha < 1.0:
            raise ValidationError(f"similarity_alpha must be in (0, 1); got {self.similarity_alpha!r}")
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
        d["similarity"] = list(self.similarity)
        d["baselines"] = list(self.baselines)
        d["train"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(self.train.items())}
        return d

    def config_hash(self) -> str:
        return stable_hash(self.as_dict(), length=12)

    def group_hash(self) -> str:
        """The hash without the seed: records sharing it are seeds of one experiment."""
        return stable_hash({k: v for k, v in self.as_dict().items() if k != "seed"}, length=12)


def _check_similarity(names) -> tuple[str, ...]:
    """Registered measure names, in order; an unknown name is an error listing the valid ones."""
    names = tuple([names] if isinstance(names, str) else names)
    valid = M.list_measures()
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValidationError(f"unknown similarity measure(s) {unknown}; choose from: {', '.join(valid)}")
    if not names:
        raise ValidationError("similarity must name at least one measure; choose from: " + ", ".join(valid))
    if len(set(names)) != len(names):
        raise ValidationError(f"duplicate similarity measures in {list(names)}")
    return names


class RunPipeline:
    """Runs one RunConfig through a `Workspace`. Use `run_pair(config, ...)` unless you need the pieces.

    ``pool``: a shared `EncoderPool` (a sweep passes one, so each encoder loads at
    most once); ``checkpoint_dir``: where the probe's checkpoints go (resumed when present).
    After `run`: ``details`` (chosen hyperparameters etc.: recorded, not metrics),
    ``messages`` (the recipe changes, as printed), ``probe_config`` and ``probe`` (None before the probe trains).
    """

    def __init__(self, config: RunConfig, options: EncodeOptions | None = None, *,
                 pool: EncoderPool | None = None, checkpoint_dir: str | Path | None = None):
        self.config = config
        self.options = options or EncodeOptions()
        self.workspace = Workspace(config.request("vision"), config.request("text"), self.options, pool=pool)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.details: dict[str, Any] = {}
        self.messages: list[str] = []
        self.probe_config: TrainConfig | None = None
        self.probe: AlignmentProbe | None = None  # the fitted probe, after `run` (its train_index_ etc.)

    @property
    def timings(self) -> dict[str, float]:
        return self.workspace.timings

    def reuse_key(self) -> str:
        """Everything that changes the record's numbers, computed without loading a model."""
        return self.workspace.reuse_key(self.config.as_dict(), self.data_specs())

    def data_specs(self) -> dict[str, str]:
        """The data sets this run reads, by role (what its metrics need)."""
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

    # ------------------------------------------------------------------ steps
    def run(self) -> dict:
        cfg, ws = self.config, self.workspace
        wanted = set(cfg.metrics)
        metrics: dict[str, Any] = {}
        ws.check()
        specs = self.data_specs()
        self._check_overlap(specs)
        pairs = ws.encode("pairs", cfg.pairs, captions=True) if "pairs" in specs else None
        labelled = None
        if "labelled" in specs:
            labelled = ws.encode("labelled", cfg.labelled, prompts="zero_shot" in wanted)
            if wanted & VISION_METRICS:
                metrics.update(self._vision_quality(labelled, wanted))
        probe = None
        if wanted & PROBE_METRICS:
            probe = self.probe = self._train_probe(pairs)
            val = [h["val_loss"] for h in probe.history_ if h.get("val_loss") is not None]
            if val:
                metrics["probe_val_loss"] = float(min(val))
            metrics["probe_epochs"] = len(probe.history_)
            metrics["n_pairs"] = self.details["n_pairs"]
        if "similarity" in wanted:
            metrics.update(self._similarity(pairs, probe))
        if wanted & PROBE_METRICS:
            sets = self._evaluation_sets(labelled, wanted)
            metrics.update(evaluate(probe.transform_image, probe.transform_text, **sets))
            if cfg.baselines:
                metrics.update(self._baselines(pairs, probe, sets))
        return metrics

    def _evaluation_sets(self, labelled: EncodedSet | None, wanted: set) -> dict:
        """The zero-shot and retrieval sets, built once: the probe and every baseline are scored on them."""
        cfg, sets = self.config, {}
        if "zero_shot" in wanted:
            sets["zero_shot"] = labelled.zero_shot()
        if "retrieval" in wanted:
            retrieval = self.workspace.encode("retrieval", cfg.retrieval, captions=True).retrieval(
                cfg.retrieval_max_captions)
            self.details["retrieval_max_captions"] = cfg.retrieval_max_captions
            self.details["retrieval_captions"] = int(len(retrieval.caption_image))
            sets["retrieval"] = retrieval
        return sets

    def _baselines(self, pairs: EncodedSet, probe: AlignmentProbe, sets: dict) -> dict:
        """Training-free baselines fitted on the probe's training pairs, scored on the probe's sets."""
        t0 = time.perf_counter()
        x, y = training_pairs(pairs.images, pairs.captions, pairs.caption_image, probe.train_index_)
        metrics, details = score_baselines(self.config.baselines, x, y, **sets)
        self.details.update(details)
        self.timings["baselines"] = time.perf_counter() - t0
        return metrics

    def _check_overlap(self, specs: dict[str, str]) -> None:
        """No silent train/test overlap: the training sets against every reported test set."""
        checks = [("pairs", test) for test in ("labelled", "retrieval") if "pairs" in specs and test in specs]
        if "labelled_train" in specs:
            checks.append(("labelled_train", "labelled"))
        for train, test in checks:
            overlap = check_no_overlap(self.workspace.dataset(specs[train]), self.workspace.dataset(specs[test]),
                                       train_role=f"--{train.replace('_', '-')}", test_role=f"--{test}",
                                       allow=self.config.allow_overlap)
            if overlap.n:
                self.details.setdefault("overlap", {})[f"{train}->{test}"] = overlap.to_record(allowed=True)

    def _vision_quality(self, labelled: EncodedSet, wanted: set) -> dict:
        """Clustering quality and linear separability, by the protocol the record names.

        With ``labelled_train`` (the paper's: an ImageNet-train bank scored on
        ImageNet val, SAIL ``evaluation/eval_knn_*.py``) the bank is streamed from
        the cache; without it, ``labelled`` is split (``details.vision_protocol``).
        """
        cfg = self.config
        x, y = labelled.image_array(), labelled.valid_labels()
        bank_x = bank_y = bank_rows = None
        if cfg.labelled_train:
            bank = self.workspace.encode("labelled_train", cfg.labelled_train)
            if list(bank.dataset.class_names or []) != list(labelled.dataset.class_names or []):
                raise DataError(f"labelled_train {cfg.labelled_train!r} (--labelled-train) and labelled {cfg.labelled!r} (--labelled) have "
                                f"different class lists; the bank's labels must mean what the evaluated set's do")
            bank_y = bank.valid_labels()
            bank_rows = np.flatnonzero(bank.image_valid)
            bank_x = bank.images
        t0 = time.perf_counter()
        res = M.vision_quality(x, y, bank_x, bank_y, bank_rows=bank_rows,
                               metrics=[m for m in ("kmeans_nmi", "knn", "linear_probe") if m in wanted],
                               k=cfg.knn_k, seed=cfg.seed, test_fraction=cfg.labelled_test_fraction,
                               device=resolve_device(self.options.device))
        self.details.update(res["details"])
        self.timings["vision_quality"] = time.perf_counter() - t0
        return res["metrics"]

    def _probe_rows(self, pairs: EncodedSet) -> np.ndarray:
        """The image rows the probe may use: the usable pairs, or their nested seeded subset (``n_pairs``)."""
        first = pairs.first_caption()
        usable = np.flatnonzero(pairs.image_valid & (first >= 0))
        if len(usable) < 4:
            raise DataError(f"only {len(usable)} usable image-caption pairs in pairs {self.config.pairs!r} (--pairs); "
                            f"the probe needs at least 4")
        rows = nested_subset(usable, self.config.n_pairs, self.config.seed)
        self.details.update({"n_pairs": int(len(rows)), "n_pairs_requested": self.config.n_pairs,
                             "n_pairs_available": int(len(usable))})
        return rows

    def _train_probe(self, pairs: EncodedSet) -> AlignmentProbe:
        t0 = time.perf_counter()
        rows = self._probe_rows(pairs)
        n_usable = len(rows)
        image_valid = np.zeros(len(pairs.image_valid), dtype=bool)
        image_valid[rows] = True  # the rows outside the subset are invisible to the probe
        config, changes, notes, preset = resolve_pair_recipe(
            "sail-probe", self.config.preset, self.config.train, seed=self.config.seed, device=self.options.device,
            usable_pairs=n_usable)
        for line in notes:
            log.info("%s", line)
        self.messages.extend(notes)
        probe = AlignmentProbe(config, quiet=self.options.quiet, out_dir=self.checkpoint_dir,
                               resume=self.checkpoint_dir is not None)
        probe.fit(pairs.images, pairs.captions, caption_image_index=pairs.caption_image, image_valid=image_valid)
        self.probe_config = config
        self.details.update({
            "preset": preset, "preset_forced": self.config.preset is not None, "recipe_changes": changes,
            "train_captions": int(probe.train_captions_), "train_images": int(len(probe.train_index_)),
            "probe_best_epoch": int(probe.best_epoch_), "probe_stopped_early": bool(probe.stopped_early_),
        })
        self.timings["probe"] = time.perf_counter() - t0
        return probe

    def similarity_rows(self, pairs: EncodedSet, probe) -> tuple[np.ndarray, bool]:
        """(image rows of the seeded similarity sample, whether they are held out from the probe).

        The pairs the probe did not train on (its held-out split, plus the pairs
        outside an ``n_pairs`` subset) when there are some, else all usable ones.
        """
        first = pairs.first_caption()
        rows = np.flatnonzero(pairs.image_valid & (first >= 0))
        held_out = False
        if probe is not None:
            unseen = np.setdiff1d(rows, probe.train_index_)
            held_out = len(unseen) > 1
            rows = unseen if held_out else rows
        return rows[M.similarity_sample(len(rows), self.config.similarity_samples, self.config.seed)], held_out

    def _similarity(self, pairs: EncodedSet, probe) -> dict:
        """The chosen measures of the raw paired features on a fixed seeded sample, permutation-calibrated.

        Each score gets ``_calibrated``, ``_p``, ``_threshold`` and ``_null`` (the mean
        of the same permutations) by Algorithm 1 of Gröger, Wen & Brbić (ICML 2026).
        """
        cfg = self.config
        t0 = time.perf_counter()
        rows, held_out = self.similarity_rows(pairs, probe)
        a, b = pairs.images.rows(rows), pairs.captions.rows(pairs.first_caption()[rows])
        res = M.similarity_scores(a, b, k=cfg.similarity_k, sample_size=None, seed=cfg.seed, measures=cfg.similarity,
                                  n_permutations=cfg.n_permutations, alpha=cfg.similarity_alpha)
        self.details.update(res["details"])
        self.details["similarity_measures"] = list(cfg.similarity)
        self.details["similarity_rows"] = "held-out pairs" if held_out else "all usable pairs"
        self.timings["similarity"] = time.perf_counter() - t0
        return res["metrics"]


def reusable_record(path: Path, reuse_key: str) -> dict | None:
    """The finished record at ``path`` if it was computed from exactly these inputs, else None.

    A damaged (unreadable) record counts as missing: it is recomputed, not fatal.
    """
    record = lookup_record(path)  # a damaged record is moved aside and treated as missing
    if not isinstance(record, dict) or record.get("status") != "ok":
        return None
    if record.get("reuse_key") != reuse_key:
        log.info("%s was computed with other settings, defaults or inputs; recomputing it", path.name)
        return None
    return record


def run_pair(config: RunConfig, *, out_dir: str | Path = "results", options: EncodeOptions | None = None,
             force: bool = False, pool: EncoderPool | None = None) -> tuple[dict, Path, bool]:
    """Run one pair and write its record; returns (record, path, reused).

    The record is reused when its ``reuse_key`` matches -- the run config, the
    training defaults, each encoder's identity (no model is loaded to tell),
    the data fingerprints, the storage dtype and the result format -- unless
    ``force``. Training checkpoints go to ``out_dir/.checkpoints/<record>/``;
    a killed run resumes from them, and they are removed once the record is written.
    """
    options = options or EncodeOptions()
    path = record_path(out_dir, config.vision, config.text, config.config_hash())
    pipeline = RunPipeline(config, options, pool=pool)
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
    record = pipeline.workspace.record_fields("probe", config, started)
    record.update({
        "reuse_key": key,
        "result_format": RESULT_FORMAT,
        "probe_config": pipeline.probe_config.to_dict() if pipeline.probe_config is not None else None,
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
