"""The workspace every pipeline encodes through: opened data sets, pooled encoders, encoded sets.

`run` (the probe protocol), `train`, `eval`, the layer sweep and `sweep` all
build on one `Workspace`: it opens each data spec once, keeps the pair's
encoders lazily loaded in an `EncoderPool` keyed by `EncoderRequest`, and turns a
data set into an `EncodedSet` (memory-mapped cache entries plus the small arrays
that go with them). The pieces each pipeline used to write for itself live here
once: usable-pair counting, zero-shot data, retrieval data with the reference's
5-captions-an-image cap, the recipe resolution for a pair and the record fields.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from alignprobe.backbones.devices import resolve_device
from alignprobe.backbones.request import EncoderRequest
from alignprobe.config import EncodeOptions
from alignprobe.errors import DataError
from alignprobe.hashing import stable_hash
from alignprobe.metrics.retrieval import cap_captions_per_image
from alignprobe.probe.data.datasets import class_prompts, flatten_captions
from alignprobe.probe.data.spec import open_dataset
from alignprobe.probe.embeddings.cache import open_cache
from alignprobe.probe.embeddings.encoding import ImageSource, TextSource, encode_source
from alignprobe.probe.embeddings.lazy import MEMO_DIR, EncoderPool, LazyEncoder
from alignprobe.probe.training import distributed as D
from alignprobe.probe.training.config import (PRESETS, SMALL_DATA_PAIRS, TrainConfig, describe_changes,
                                             resolve_recipe, small_data_changes)
from alignprobe.probe.training.evaluation import RetrievalData, ZeroShotData
from alignprobe.probe.training.precision import HALF_PRECISION_SCOPE, native_bf16
from alignprobe.reports.records import environment, now_iso

#: Bumped whenever a record's numbers would change for the same inputs (new metric definitions, ...).
RESULT_FORMAT = 2
#: The reference's COCO retrieval protocol (SAIL coco_zs_retrieval.py, CLIP_benchmark): 5 captions an image.
RETRIEVAL_MAX_CAPTIONS = 5


class EncoderPair:
    """Mixin of the run configs (`RunConfig`, `SailRunConfig`): their two `EncoderRequest`s.

    The configs keep the flat fields a user sets (``vision``, ``vision_pooling``,
    ``vision_layer``, ``text``, ``text_pooling``, ``text_layer``); this is the one place they become identities.
    """

    vision: str
    text: str
    vision_pooling: str | None
    vision_layer: int | None
    text_pooling: str | None
    text_layer: int | None

    def request(self, modality: str) -> EncoderRequest:
        if modality == "vision":
            return EncoderRequest.create("vision", self.vision, pooling=self.vision_pooling, layer=self.vision_layer)
        return EncoderRequest.create("text", self.text, pooling=self.text_pooling, layer=self.text_layer)

    def requests(self) -> dict[str, EncoderRequest]:
        return {"vision": self.request("vision"), "text": self.request("text")}


@dataclass
class EncodedSet:
    """One data set encoded by the pair's encoders: cache entries (memory-mapped) and small arrays.

    ``images``: `CachedEmbeddings` ``(n_images, d_img)`` with ``image_valid`` (bool,
    ``(n_images,)``); ``captions``: ``(n_captions, d_txt)`` with ``caption_image``
    (int64, the image row of each caption); ``prompts``: ``(C * T, d_txt)`` fp32, class-major,
    with ``prompt_class``.
    """

    role: str
    spec: str
    dataset: Any
    images: Any = None
    image_valid: np.ndarray | None = None
    captions: Any = None
    caption_image: np.ndarray | None = None
    prompts: np.ndarray | None = None
    prompt_class: np.ndarray | None = None

    def image_array(self) -> np.ndarray:
        """The valid images as fp32 (evaluation sets only: they are small)."""
        return self.images.rows(np.flatnonzero(self.image_valid))

    def valid_labels(self) -> np.ndarray:
        """The labels of the valid images; a `DataError` naming the set when it has none."""
        if self.dataset.labels is None:
            raise DataError(f"{self.role} set {self.spec!r} has no labels; give a labelled data set")
        return np.asarray(self.dataset.labels)[self.image_valid]

    def usable_pairs(self) -> int:
        """Images that were read and have at least one caption: what a training run can use."""
        counts = np.bincount(self.caption_image, minlength=len(self.image_valid))
        return int((self.image_valid & (counts > 0)).sum())

    def first_caption(self) -> np.ndarray:
        """For each image, the row of its first caption (-1: none)."""
        first = np.full(len(self.image_valid), -1, dtype=np.int64)
        rows = np.arange(len(self.caption_image))[::-1]
        first[self.caption_image[::-1]] = rows  # reversed, so the first caption's row is written last
        return first

    def zero_shot(self) -> ZeroShotData:
        return ZeroShotData(self.image_array(), self.valid_labels(), self.prompts, len(self.dataset.class_names),
                            self.dataset.name)

    def retrieval(self, max_captions: int | None = RETRIEVAL_MAX_CAPTIONS) -> RetrievalData:
        """The valid images and at most ``max_captions`` captions of each (None: all)."""
        valid = np.flatnonzero(self.image_valid)
        capped = np.zeros(len(self.caption_image), dtype=bool)
        capped[cap_captions_per_image(self.caption_image, max_captions)] = True
        keep = np.isin(self.caption_image, valid) & capped
        remap = -np.ones(len(self.image_valid), dtype=np.int64)
        remap[valid] = np.arange(len(valid))
        return RetrievalData(self.images.rows(valid), self.captions.rows(np.flatnonzero(keep)),
                             remap[self.caption_image[keep]], self.dataset.name)


class Workspace:
    """Data sets and encoders of one vision x text pair (see the module docstring).

    Args:
        vision, text: the pair's `EncoderRequest`s.
        options: encoding options (cache, batch size, device, dtype, strictness).
        pool: a shared `EncoderPool` (a sweep passes one; None: a pool of this workspace's own).
        dist: the torchrun context; the training pairs are then encoded shard by shard across ranks.

    After encoding, ``data_info`` (per role), ``encoder_info`` (manifests) and
    ``timings`` describe what was done; the record fields come from `record_fields`.
    """

    def __init__(self, vision: EncoderRequest, text: EncoderRequest, options: EncodeOptions | None = None, *,
                 pool: EncoderPool | None = None, dist: D.DistContext = D.SINGLE):
        self.requests = {"vision": vision, "text": text}
        self.options = options or EncodeOptions()
        self.cache = open_cache(self.options)
        self.pool = pool if pool is not None else EncoderPool(
            memo_dir=self.cache.root / MEMO_DIR, device=self.options.device, dtype=self.options.dtype,
            trust_remote_code=self.options.trust_remote_code)
        self.dist = dist
        self.data_info: dict[str, dict] = {}
        self.encoder_info: dict[str, dict] = {}
        self.timings: dict[str, float] = {}
        self.datasets: dict[str, Any] = {}  # spec -> opened data set (opened once: for the key and the run)

    # ------------------------------------------------------------------ encoders and data
    def encoder(self, modality: str) -> LazyEncoder:
        return self.pool.get(self.requests[modality])

    def check(self) -> None:
        """Resolve both encoders and check their weights are here, before any other work."""
        for modality in self.requests:
            self.encoder(modality)

    def spec_info(self) -> dict:
        """Registry facts the reports group and label by (family, size, control)."""
        out = {}
        for modality in ("vision", "text"):
            spec = self.encoder(modality).spec
            out[f"{modality}_info"] = {
                "name": spec.name, "family": spec.family, "params_m": spec.params_m, "is_control": spec.is_control,
                "source": spec.source, "hub_id": spec.hub_id,
                "dim": self.encoder_info.get(modality, {}).get("dim", spec.dim), "layer": spec.layer}
        return out

    def dataset(self, spec: str):
        if spec not in self.datasets:
            self.datasets[spec] = open_dataset(spec, strict=self.options.strict)
        return self.datasets[spec]

    def fingerprint(self, spec: str) -> str | None:
        return self.dataset(spec).describe().get("fingerprint")

    def identity(self) -> dict:
        """What identifies the pair's encoders without loading them (for reuse keys)."""
        return {m: self.encoder(m).identity_key() for m in ("vision", "text")}

    def reuse_key(self, config: dict, specs: dict[str, str]) -> str:
        """Everything that changes a record's numbers, computed without loading a model: the run's
        config, the training defaults, both encoders' identities (for a CPU image encoder the backend
        that will run, onnxruntime or torch under ALIGNPROBE_ONNX=0), the fingerprints of the data sets
        it reads (``{role: spec}``, files named inside a spec included), the storage dtype,
        strictness and the result format. `run` and `train` reuse a finished record only on a match."""
        return stable_hash({
            "format": RESULT_FORMAT, "run": config, "training_defaults": training_defaults_hash(self.options.device),
            "encoders": self.identity(), "storage_dtype": self.options.storage_dtype, "strict": self.options.strict,
            "data": {role: self.fingerprint(spec) for role, spec in sorted(specs.items())},
        }, length=16)

    # ------------------------------------------------------------------ encoding
    def _encode(self, modality: str, source, *, distributed: bool = False, **extra):
        opts = self.options
        common = dict(cache=self.cache, batch_size=opts.batch_size, storage_dtype=opts.storage_dtype,
                      recompute=opts.recompute, strict=opts.strict,
                      quiet=opts.quiet or not self.dist.is_main, **extra)
        encoder = self.encoder(modality)
        shard = (self.dist.rank, self.dist.world_size) if distributed else (0, 1)
        result = encode_source(encoder, source, shard=shard, **common)
        if distributed and self.dist.enabled:
            D.barrier(self.dist)
            if result.embeddings is None:  # another rank finished last: the entry is complete now
                result = encode_source(encoder, source, **common)
        if result.embeddings is None:
            raise DataError(f"{source.name} is not completely encoded (other shards are missing); rerun to "
                            f"finish it")
        return result

    def encode(self, role: str, spec: str, *, images: bool = True, captions: bool = False,
               prompts: bool = False, distributed: bool = False) -> EncodedSet:
        """Encode data set ``spec`` (used as ``role``: pairs, labelled, retrieval, ...) with the pair's
        encoders: its images, its captions and / or its class prompts (cached; reused when cached).

        ``distributed``: under torchrun, every rank encodes its share of the cache shards and
        all then open the complete entry (the training pairs); otherwise only the calling rank encodes.
        """
        t0 = time.perf_counter()
        dataset = self.dataset(spec)
        self.data_info[role] = dataset.describe()
        out = EncodedSet(role, spec, dataset)
        if images:
            res = self._encode("vision", ImageSource(dataset), distributed=distributed,
                               num_workers=self.options.num_workers)
            out.images, out.image_valid = res.embeddings, np.asarray(res.embeddings.valid, bool)
            self.data_info[role]["skipped_images"] = int((~out.image_valid).sum())
        if captions:
            if not dataset.has_captions:
                raise DataError(f"the {role} set {spec!r} has no captions; give a captioned data set "
                                f"(CSV, webdataset, COCO, ...)")
            texts, caption_image = flatten_captions(dataset)
            res = self._encode("text", TextSource(dataset.name, texts, "captions"), distributed=distributed)
            out.captions, out.caption_image = res.embeddings, np.asarray(caption_image, dtype=np.int64)
        if prompts:
            if not dataset.class_names:
                raise DataError(f"the {role} set {spec!r} has no class names; give a labelled data set")
            texts, prompt_class = class_prompts(dataset)
            res = self._encode("text", TextSource(dataset.name, texts, "prompts"))
            out.prompts, out.prompt_class = res.embeddings.to_numpy(), np.asarray(prompt_class)
        for modality in ("vision", "text"):
            if modality not in self.encoder_info and (images or modality == "text"):
                self.encoder_info[modality] = self.encoder(modality).manifest()
        self.timings[f"encode_{role}"] = self.timings.get(f"encode_{role}", 0.0) + time.perf_counter() - t0
        return out

    def zero_shot_data(self, role: str, spec: str) -> ZeroShotData:
        """A labelled set's valid images and class prompts, as in-memory embeddings."""
        return self.encode(role, spec, images=True, prompts=True).zero_shot()

    def retrieval_data(self, role: str, spec: str, max_captions: int | None = RETRIEVAL_MAX_CAPTIONS
                       ) -> RetrievalData:
        """A captioned set's valid images and (capped) captions, as in-memory embeddings."""
        return self.encode(role, spec, images=True, captions=True).retrieval(max_captions)

    # ------------------------------------------------------------------ records
    def record_fields(self, kind: str, config, started: str) -> dict:
        """The fields every result record has (probe runs and SAIL training alike): what ran, on
        which encoders (their `EncoderRequest`s) and data, with which options, when and where.
        ``config`` is the run's own config (`RunConfig` or `SailRunConfig`)."""
        return {
            "kind": kind,
            "status": "ok",
            # The request's label (NAME@N, NAME[pooling]): runs of one model at two layers or poolings are
            # two rows of a report, never "several configurations of one pair".
            "vision": self.requests["vision"].label,
            "text": self.requests["text"].label,
            "vision_request": self.requests["vision"].to_dict(),
            "text_request": self.requests["text"].to_dict(),
            "config": config.as_dict(),
            "config_hash": config.config_hash(),
            "group_hash": config.group_hash(),
            **self.spec_info(),
            "seed": config.seed,
            "encoders": self.encoder_info,
            "data": self.data_info,
            "encode_options": {k: v for k, v in self.options.as_dict().items() if k != "quiet"},
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "started": started,
            "finished": now_iso(),
            "environment": environment(),
        }


def training_defaults_hash(device: str = "auto") -> str:
    """Changes when a recipe default or the small-data adaptation changes (so old records are not reused).

    The adaptation trains under bf16 only where ``device`` multiplies bf16 natively, so the
    hash names that choice (and what bf16 covers): a results directory moved to a machine that
    picks the other precision does not reuse records trained under the first.
    """
    bf16 = native_bf16(resolve_device(device))
    return stable_hash({"presets": PRESETS, "small": small_data_changes(SMALL_DATA_PAIRS - 1, bf16=bf16),
                        "small_other_heads": small_data_changes(SMALL_DATA_PAIRS - 1, bf16=bf16, linear=False),
                        "threshold": SMALL_DATA_PAIRS, "half_precision": HALF_PRECISION_SCOPE}, length=12)


def resolve_pair_recipe(default_preset: str, preset: str | None, train: dict, *, seed: int, device: str,
                        usable_pairs: int) -> tuple[TrainConfig, list, list[str], str]:
    """The training recipe of one pair: ``preset`` (None: ``default_preset``, adapted below 100k
    pairs) with the explicitly set ``train`` fields, the seed and the device.

    Returns ``(config, changes, notes, preset)``; ``notes`` are the lines the caller prints (to its
    own logger) for the changes.
    """
    explicit = dict(train)
    explicit.setdefault("seed", seed)
    if device != "auto":
        explicit.setdefault("device", device)
    name = preset or default_preset
    config, changes = resolve_recipe(name, usable_pairs, explicit, exact=preset is not None)
    return config, changes, describe_changes(changes, name), name
