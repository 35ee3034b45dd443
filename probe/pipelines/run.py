"""`alignprobe run`: probe the alignment of one vision x text pair, end to end.

registry -> encode (cached) -> vision-quality metrics + linear alignment probe
-> alignment scores -> one JSON result record. Every step reads embeddings
from the cache, so a sweep over M x N pairs encodes M + N times.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alignprobe.config import EncodeOptions
from alignprobe.errors import DataError, ValidationError

log = logging.getLogger("alignprobe.run")

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


@dataclass
class RunConfig:
    """Everything that determines a run's result (its hash names the record)."""

    vision: str
    text: str
    pairs: str = "shapes:train"  # what the alignment probe trains on
    labelled: str = "shapes:test"  # zero-shot classification and vision-quality metrics
    retrieval: str = "shapes:test"  # captioned images for R@k
    metrics: tuple[str, ...] = tuple(METRIC_GROUPS)
    seed: int = 0
    vision_pooling: str | None = None
    text_pooling: str | None = None
    knn_k: tuple[int, ...] = (10, 20)
    similarity_k: int = 10
    labelled_test_fraction: float = 0.3  # of the labelled set, held out for k-NN / linear probe
    probe: dict[str, Any] = field(default_factory=dict)  # ProbeConfig overrides

    def __post_init__(self):
        self.metrics = tuple(self.metrics)
        unknown = [m for m in self.metrics if m not in METRIC_GROUPS]
        if unknown:
            raise ValidationError(
                f"unknown metric(s) {unknown}; choose from: {', '.join(METRIC_GROUPS)}"
            )
        if not self.metrics:
            raise ValidationError("no metrics selected; choose from: " + ", ".join(METRIC_GROUPS))
        if not 0.0 < self.labelled_test_fraction < 1.0:
            raise ValidationError(
                f"labelled_test_fraction must be in (0, 1), got {self.labelled_test_fraction}"
            )

    def as_dict(self) -> dict:
        d = asdict(self)
        d["metrics"] = list(self.metrics)
        d["knn_k"] = list(self.knn_k)
        return d

    def config_hash(self) -> str:
        from alignprobe.probe.embeddings.cache import stable_hash

        return stable_hash(self.as_dict(), length=12)

    def group_hash(self) -> str:
        """The hash without the seed: records sharing it are seeds of one experiment."""
        from alignprobe.probe.embeddings.cache import stable_hash

        return stable_hash({k: v for k, v in self.as_dict().items() if k != "seed"}, length=12)


@dataclass
class _Encoded:
    """Embeddings of one data set by both encoders, as in-memory float32 arrays."""

    dataset: Any
    images: np.ndarray | None = None
    image_valid: np.ndarray | None = None
    captions: np.ndarray | None = None
    caption_image: np.ndarray | None = None  # caption row -> image row
    prompts: np.ndarray | None = None
    prompt_class: np.ndarray | None = None


class RunPipeline:
    """Runs one RunConfig. Use `run_pair(config, ...)` unless you need the pieces."""

    def __init__(self, config: RunConfig, options: EncodeOptions | None = None):
        self.config = config
        self.options = options or EncodeOptions()
        self.timings: dict[str, float] = {}
        self.details: dict[str, Any] = {}  # chosen hyperparameters etc.: recorded, not metrics
        self.data_info: dict[str, dict] = {}
        self.encoder_info: dict[str, dict] = {}
        self._encoders: dict[str, Any] = {}

    # ------------------------------------------------------------------ encoders
    def check(self) -> None:
        """Resolve both encoders and check their weights are here, before any other work."""
        from alignprobe.backbones import check_available
        from alignprobe.probe.embeddings.encode_job import resolve_model

        self.vision_spec = resolve_model(self.config.vision, "vision")
        self.text_spec = resolve_model(self.config.text, "text")
        check_available(self.vision_spec)
        check_available(self.text_spec)

    def spec_info(self) -> dict:
        """Registry facts the reports group and label by (family, size, control)."""
        out = {}
        for role, spec in (("vision_info", self.vision_spec), ("text_info", self.text_spec)):
            out[role] = {"name": spec.name, "family": spec.family, "params_m": spec.params_m,
                         "is_control": spec.is_control, "source": spec.source, "hub_id": spec.hub_id,
                         "dim": self.encoder_info.get(spec.modality, {}).get("dim", spec.dim)}
        return out

    def encoder(self, modality: str):
        if modality not in self._encoders:
            from alignprobe.backbones import create_text_encoder, create_vision_encoder

            if modality == "vision":
                enc = create_vision_encoder(self.config.vision, device=self.options.device,
                                            dtype=self.options.dtype, pooling=self.config.vision_pooling)
            else:
                enc = create_text_encoder(self.config.text, device=self.options.device,
                                          dtype=self.options.dtype, pooling=self.config.text_pooling)
            self._encoders[modality] = enc
            self.encoder_info[modality] = enc.manifest()
        return self._encoders[modality]

    def _encode_set(self, role: str, spec: str, need_images: bool, need_captions: bool,
                    need_prompts: bool) -> _Encoded:
        from alignprobe.probe.data.spec import class_prompts, flatten_captions, open_dataset
        from alignprobe.probe.embeddings.encoding import ImageSource, TextSource, encode_source

        t0 = time.perf_counter()
        dataset = open_dataset(spec, strict=self.options.strict)
        self.data_info[role] = dataset.describe()
        enc = _Encoded(dataset)
        common = dict(cache=self.options.cache(), batch_size=self.options.batch_size,
                      storage_dtype=self.options.storage_dtype, recompute=self.options.recompute,
                      strict=self.options.strict, quiet=self.options.quiet)
        if need_images:
            res = encode_source(self.encoder("vision"), ImageSource(dataset),
                                num_workers=self.options.num_workers, **common)
            enc.images = res.embeddings.to_numpy()
            enc.image_valid = res.embeddings.valid
            self.data_info[role]["skipped_images"] = len(res.skipped)
        if need_captions:
            if not dataset.has_captions:
                raise DataError(f"--{role} {spec!r} has no captions; give a captioned data set")
            texts, caption_image = flatten_captions(dataset)
            res = encode_source(self.encoder("text"), TextSource(dataset.name, texts, "captions"), **common)
            enc.captions, enc.caption_image = res.embeddings.to_numpy(), np.asarray(caption_image)
        if need_prompts:
            if not dataset.class_names:
                raise DataError(f"--{role} {spec!r} has no class names; give a labelled data set")
            prompts, prompt_class = class_prompts(dataset)
            res = encode_source(self.encoder("text"), TextSource(dataset.name, prompts, "prompts"), **common)
            enc.prompts, enc.prompt_class = res.embeddings.to_numpy(), np.asarray(prompt_class)
        self.timings[f"encode_{role}"] = time.perf_counter() - t0
        return enc

    # ------------------------------------------------------------------ steps
    def run(self) -> dict:
        cfg = self.config
        wanted = set(cfg.metrics)
        metrics: dict[str, Any] = {}
        self.check()
        need_probe = bool(wanted & PROBE_METRICS)
        need_labelled = bool(wanted & {"kmeans_nmi", "knn", "linear_probe", "zero_shot"})

        pairs = None
        if need_probe or "similarity" in wanted:
            pairs = self._encode_set("pairs", cfg.pairs, True, True, False)
        labelled = None
        if need_labelled:
            labelled = self._encode_set("labelled", cfg.labelled, True, False, "zero_shot" in wanted)
            metrics.update(self._vision_quality(labelled, wanted))

        probe = None
        if need_probe:
            probe = self._train_probe(pairs)
            metrics["probe_val_loss"] = float(min(h["val_loss"] for h in probe.history_))
            metrics["probe_epochs"] = len(probe.history_)
            self.details["probe_best_epoch"] = int(probe.best_epoch_)
            self.details["probe_stopped_early"] = bool(probe.stopped_early_)
        if "similarity" in wanted:
            metrics.update(self._similarity(pairs, probe))
        if "zero_shot" in wanted:
            metrics.update(self._zero_shot(labelled, probe))
        if "retrieval" in wanted:
            retrieval = self._encode_set("retrieval", cfg.retrieval, True, True, False)
            metrics.update(self._retrieval(retrieval, probe))
        return metrics

    def _labelled_split(self, n: int, labels: np.ndarray):
        from sklearn.model_selection import train_test_split

        index = np.arange(n)
        try:
            return train_test_split(index, test_size=self.config.labelled_test_fraction,
                                    random_state=self.config.seed, stratify=labels)
        except ValueError:  # a class too small to stratify: fall back to a plain seeded split
            return train_test_split(index, test_size=self.config.labelled_test_fraction,
                                    random_state=self.config.seed)

    def _vision_quality(self, labelled: _Encoded, wanted: set) -> dict:
        from alignprobe import metrics as M

        if labelled.dataset.labels is None:
            raise DataError(f"--labelled {self.config.labelled!r} has no labels")
        valid = labelled.image_valid
        x = labelled.images[valid]
        y = np.asarray(labelled.dataset.labels)[valid]
        out: dict[str, Any] = {}
        t0 = time.perf_counter()
        if "kmeans_nmi" in wanted:
            res = M.kmeans_nmi(x, y, seed=self.config.seed)
            out["kmeans_nmi"], out["kmeans_ari"] = float(res["nmi"]), float(res["ari"])
            self.timings["kmeans_nmi"] = time.perf_counter() - t0
        train, test = self._labelled_split(len(y), y)
        if "knn" in wanted:
            t0 = time.perf_counter()
            ks = tuple(k for k in self.config.knn_k if k <= len(train))
            res = M.knn_accuracy(x[train], y[train], x[test], y[test], k=ks)
            for k, acc in _knn_items(res):
                out[f"knn_top1@{k}"] = float(acc)
            self.timings["knn"] = time.perf_counter() - t0
        if "linear_probe" in wanted:
            t0 = time.perf_counter()
            res = M.linear_probe_accuracy(x[train], y[train], x[test], y[test], seed=self.config.seed)
            out["linear_probe_top1"] = float(res["top1"])
            if res.get("top5") is not None:  # None when there are fewer than 5 classes
                out["linear_probe_top5"] = float(res["top5"])
            self.details["linear_probe_l2"] = float(res["l2"])
            self.timings["linear_probe"] = time.perf_counter() - t0
        return out

    def _train_probe(self, pairs: _Encoded):
        from alignprobe.probe.training.probe import AlignmentProbe, ProbeConfig

        t0 = time.perf_counter()
        image_rows, main_caption, extra_caption = _pair_rows(pairs)
        images = pairs.images[image_rows]
        texts = pairs.captions[main_caption]
        extra = pairs.captions[extra_caption] if extra_caption is not None else None
        overrides = dict(self.config.probe)
        overrides.setdefault("seed", self.config.seed)
        if self.options.device != "auto":
            overrides.setdefault("device", self.options.device)
        # Below 100k pairs the SAIL recipe (lr 1e-5, batch 32,768) barely moves the
        # heads; `auto` switches to the measured small-data settings (see trainer).
        probe_config = ProbeConfig.auto(len(image_rows), **overrides)
        probe = AlignmentProbe(probe_config, quiet=self.options.quiet).fit(images, texts, extra_text_emb=extra)
        self.probe_config = probe_config
        self.pair_image_rows = image_rows
        self.timings["probe"] = time.perf_counter() - t0
        return probe

    def _similarity(self, pairs: _Encoded, probe) -> dict:
        from alignprobe import metrics as M

        t0 = time.perf_counter()
        image_rows, main_caption, _ = _pair_rows(pairs)
        held_out = probe.val_index_ if probe is not None else np.arange(len(image_rows))
        a = pairs.images[image_rows[held_out]]
        b = pairs.captions[main_caption[held_out]]
        k = min(self.config.similarity_k, len(a) - 1)
        out = {
            "mutual_knn": float(M.mutual_knn(a, b, k)),
            "cka": float(M.cka(a, b)),
            "cknna": float(M.cknna(a, b, k)),
        }
        self.timings["similarity"] = time.perf_counter() - t0
        return out

    def _zero_shot(self, labelled: _Encoded, probe) -> dict:
        from alignprobe import metrics as M

        valid = labelled.image_valid
        image = probe.transform_image(labelled.images[valid])
        prompts = probe.transform_text(labelled.prompts)
        n_classes = len(labelled.dataset.class_names)
        class_emb = _to_numpy(prompts).reshape(n_classes, -1, _to_numpy(prompts).shape[-1])
        topk = (1, min(5, n_classes))
        res = M.zero_shot_accuracy(_to_numpy(image), class_emb, np.asarray(labelled.dataset.labels)[valid],
                                   topk=topk)
        return {"zero_shot_top1": float(res[1]), "zero_shot_top5": float(res[topk[1]])}

    def _retrieval(self, retrieval: _Encoded, probe) -> dict:
        from alignprobe import metrics as M

        valid_images = np.flatnonzero(retrieval.image_valid)
        keep = np.isin(retrieval.caption_image, valid_images)
        remap = -np.ones(len(retrieval.image_valid), dtype=np.int64)
        remap[valid_images] = np.arange(len(valid_images))
        image = _to_numpy(probe.transform_image(retrieval.images[valid_images]))
        text = _to_numpy(probe.transform_text(retrieval.captions[keep]))
        res = M.retrieval_metrics(image, text, remap[retrieval.caption_image[keep]], ks=(1, 5, 10))
        return {f"{direction}_r{k}": float(value) for direction, by_k in res.items() for k, value in by_k.items()}


def _knn_items(res) -> list[tuple[int, float]]:
    """k-NN results as (k, top-1) pairs, whatever nesting the metric returns."""
    items = []
    for k, value in res.items():
        if isinstance(value, dict):
            value = value.get("top1")
        try:
            items.append((int(str(k).split("@")[-1]), float(value)))
        except (TypeError, ValueError):
            continue
    return items


def _pair_rows(pairs: _Encoded):
    """Rows for training: valid images, their first caption, and a second caption if all have one."""
    valid = np.flatnonzero(pairs.image_valid)
    first = {}
    second = {}
    for row, image in enumerate(pairs.caption_image):
        if image not in first:
            first[image] = row
        elif image not in second:
            second[image] = row
    valid = np.array([i for i in valid if i in first], dtype=np.int64)
    if len(valid) < 4:
        raise DataError(f"only {len(valid)} usable image-caption pairs; the probe needs at least 4")
    main = np.array([first[i] for i in valid], dtype=np.int64)
    extra = None
    if all(i in second for i in valid):
        extra = np.array([second[i] for i in valid], dtype=np.int64)
    return valid, main, extra


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


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


def run_pair(config: RunConfig, *, out_dir: str | Path = "results", options: EncodeOptions | None = None,
             force: bool = False) -> tuple[dict, Path, bool]:
    """Run one pair and write its record; returns (record, path, reused).

    A record with the same config hash is reused unless `force`: a finished
    result is never recomputed by accident, and never silently overwritten.
    """
    from alignprobe.reports.records import now_iso, read_record, record_path, write_record

    options = options or EncodeOptions()
    path = record_path(out_dir, config.vision, config.text, config.config_hash())
    if path.exists() and not force:
        record = read_record(path)
        if record.get("status") == "ok":
            return record, path, True
    pipeline = RunPipeline(config, options)
    started = now_iso()
    t0 = time.perf_counter()
    metrics = pipeline.run()
    pipeline.timings["total"] = time.perf_counter() - t0
    record = record_fields("probe", config, pipeline, options, started)
    record.update({
        "probe_config": pipeline.probe_config.to_dict() if hasattr(pipeline, "probe_config") else None,
        "metrics": metrics,
        "details": pipeline.details,
    })
    write_record(path, record)
    return record, path, False
