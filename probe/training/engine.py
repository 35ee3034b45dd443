"""The alignment-training engine: the probe and full SAIL training are one program.

As in the reference (lezhang7/SAIL ``main.py``, switched by ``--linear-type``),
the alignment probe (linear heads, `TrainConfig.preset("sail-probe")`) and SAIL
training (star heads, ``preset("sail")``) run through this one `Trainer`:

    trainer = Trainer(TrainConfig.preset("sail"), out_dir="runs/dinov2-l__gte")
    trainer.fit(image_cache, caption_cache, caption_image, zero_shot=zs, retrieval=ret)

* batches stream from the memory-mapped embedding cache (`PairStream`),
  shuffled each epoch; every caption of an image is a positive (ragged counts);
* large batches at small-batch memory (two-pass GradCache steps, `step.py`);
* the schedule and the batching of the reference: warm-up then cosine ending
  at ``total - warmup`` (``train/scheduler.py``), the last partial batch of
  each epoch dropped (``drop_last``; ``TrainConfig.drop_last=False`` keeps
  every pair);
* many processes (`torchrun`): each rank's loss sees every rank's texts, so the
  effective batch is the global one; only rank 0 writes;
* periodic zero-shot / retrieval evaluation, optional selection on a held-out
  split or on a selection set, atomic checkpoints (best and latest) and
  bit-for-bit ``resume``; per-step CSV/JSONL logs and TensorBoard / W&B.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from safetensors.torch import load_file

from alignprobe.console import progress

from alignprobe._version import __version__
from alignprobe.errors import AlignprobeError, DataError, NotFittedError, ValidationError
from alignprobe.io import write_json_atomic

from alignprobe.probe.training import distributed as D
from alignprobe.probe.training.model_file import ALIGNED_FORMAT
from alignprobe.probe.training.checkpoint import (ALIGNED_FILE, BEST_FILE, MODEL_FILE, CheckpointStore, rng_state,
                                                  set_rng_state)
from alignprobe.probe.training.config import LOWER_IS_BETTER, RUNTIME_FIELDS, TrainConfig
from alignprobe.probe.training.evaluation import RetrievalData, ZeroShotData, evaluate, half_dtype, project
from alignprobe.probe.training.heads import AlignmentModel
from alignprobe.probe.training.norm_init import AUTO_CENTER_SHARE, center_norm_bias_
from alignprobe.probe.training.schedules import lr_at
from alignprobe.probe.training.step import embed, global_loss, make_optimizer, resolve_micro_batch, train_step
from alignprobe.probe.training.streaming import CaptionIndex, ConcatStore, EmbeddingStore, PairStream, as_store
from alignprobe.probe.training.train_log import TrainLog

log = logging.getLogger("alignprobe.train")

#: `TrainConfig` fields added after checkpoints were first written, with the values that
#: reproduce how such a checkpoint trained (so it still resumes).
LEGACY_FIELDS = {"drop_last": False, "min_rel_delta": 0.0}


def warmup_steps(fraction: float, total_steps: int) -> int:
    """``ceil(fraction * total_steps)``, as the reference's ``main.py`` sets ``args.warmup``."""
    return min(total_steps, math.ceil(fraction * total_steps))


def _extra_sources(extra) -> list:
    """None, one ``(N, d)`` matrix or cache entry, a ``(K, N, d)`` stack or a list of them -> a list."""
    if extra is None:
        return []
    if hasattr(extra, "rows") and hasattr(extra, "manifest"):  # one CachedEmbeddings entry
        return [extra]
    if torch.is_tensor(extra) or isinstance(extra, np.ndarray):
        return [extra[k] for k in range(extra.shape[0])] if extra.ndim == 3 else [extra]
    return list(extra)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _valid_mask(data, n: int) -> np.ndarray:
    valid = data if isinstance(data, np.ndarray) else getattr(data, "valid", None)  # a mask, or a cache's mask
    if valid is None:
        return np.ones(n, dtype=bool)
    return np.asarray(valid, dtype=bool)


# --------------------------------------------------------------------------- loop state


@dataclass
class BestEpoch:
    """The epoch whose weights are kept, and the early-stopping count.

    ``update`` records each epoch's selection score. The weights kept are those
    of the best score so far, however small its lead; early stopping counts
    the epochs since the score last beat ``anchor`` -- the best score when
    progress was last *significant* -- by more than ``max(min_delta,
    min_rel_delta * |anchor|)``. So a loss that keeps creeping down by less
    than the threshold, epoch after epoch, still stops after ``patience``
    epochs, and the weights kept are its lowest. With both thresholds 0 the
    anchor is the best score and the rule is plain patience.
    """

    higher_is_better: bool = False
    min_delta: float = 0.0
    min_rel_delta: float = 0.0
    patience: int | None = None
    score: float | None = None
    epoch: int = 0
    step: int = 0
    metrics: dict = field(default_factory=dict)
    anchor: float | None = None
    bad_epochs: int = 0

    def _gain(self, score: float, than: float) -> float:
        return score - than if self.higher_is_better else than - score

    def update(self, score: float | None, epoch: int, step: int, metrics: dict, *,
               keep_anyway: bool = False) -> bool:
        """Record epoch ``epoch`` (1-based); True when its weights become the kept ones.

        ``keep_anyway``: there is no selection score at all (no held-out split):
        the latest epoch is the one kept.
        """
        if keep_anyway:
            self._keep(score, epoch, step, metrics)
            self.bad_epochs = 0
            return True
        if score is None:
            return False
        if self.anchor is None or self._gain(score, self.anchor) > max(
                self.min_delta, self.min_rel_delta * abs(self.anchor)):
            self.anchor, self.bad_epochs = score, 0
        else:
            self.bad_epochs += 1
        if self.score is None or self._gain(score, self.score) > 0:
            self._keep(score, epoch, step, metrics)
            return True
        return False

    def _keep(self, score, epoch, step, metrics) -> None:
        self.score, self.epoch, self.step, self.metrics = score, epoch, step, dict(metrics)

    def restore(self, score: float | None, epoch: int, step: int, metrics: dict, bad_epochs: int,
                anchor: float | None) -> "BestEpoch":
        """Set the tracked values (from a checkpoint); returns self."""
        self._keep(score, epoch, step, metrics)
        self.bad_epochs, self.anchor = bad_epochs, anchor
        return self

    @property
    def exhausted(self) -> bool:
        """``patience`` epochs in a row without significant progress."""
        return self.patience is not None and self.bad_epochs >= self.patience


@dataclass
class LoopState:
    """Where the training loop is; what a checkpoint's ``state.json`` holds.

    ``to_dict`` writes the keys checkpoints have always had (plus ``stop_anchor``),
    so older checkpoints resume.
    """

    config: dict
    world_size: int
    positives: int | str
    n_train: int
    n_val: int
    best: BestEpoch
    format: str = ALIGNED_FORMAT
    epoch: int = 0           # epochs completed
    batch: int = 0           # batches of the current epoch completed
    step: int = 0            # optimizer steps completed
    loss_sum: float = 0.0    # the current epoch's training loss, summed over its images
    seen: int = 0            # the current epoch's images so far
    stopped: bool = False
    initial_val_loss: float | None = None
    history: list = field(default_factory=list)

    def after_step(self, batch_index: int, loss: float, images: int) -> None:
        self.step += 1
        self.batch = batch_index + 1
        self.loss_sum += loss * images
        self.seen += images

    @property
    def train_loss(self) -> float:
        return self.loss_sum / max(1, self.seen)

    def next_epoch(self) -> None:
        self.epoch, self.batch, self.loss_sum, self.seen = self.epoch + 1, 0, 0.0, 0

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {"format": self.format, "config": self.config, "world_size": self.world_size,
                "positives": self.positives, "n_train": self.n_train, "n_val": self.n_val,
                "epoch": self.epoch, "batch": self.batch, "step": self.step, "loss_sum": self.loss_sum,
                "seen": self.seen, "best": {"score": best.score, "epoch": best.epoch, "step": best.step,
                                            **best.metrics},
                "bad_epochs": best.bad_epochs, "stop_anchor": best.anchor, "stopped": self.stopped,
                "initial_val_loss": self.initial_val_loss, "history": self.history}

    @classmethod
    def from_dict(cls, values: dict[str, Any], tracker: BestEpoch) -> "LoopState":
        """Rebuild from ``to_dict``'s output; ``tracker`` brings the stopping settings."""
        best = dict(values["best"])
        score, epoch, step = best.pop("score"), best.pop("epoch"), best.pop("step")
        # Checkpoints from before the relative threshold: the anchor was the best score.
        tracker.restore(score, epoch, step, best, values["bad_epochs"], values.get("stop_anchor", score))
        return cls(config=values["config"], world_size=values["world_size"], positives=values["positives"],
                   n_train=values["n_train"], n_val=values["n_val"], best=tracker, format=values["format"],
                   epoch=values["epoch"], batch=values["batch"], step=values["step"],
                   loss_sum=values["loss_sum"], seen=values["seen"], stopped=values["stopped"],
                   initial_val_loss=values["initial_val_loss"], history=values["history"])


class _Pairs(NamedTuple):
    """The training data `Trainer._prepare_pairs` assembles from `fit`'s arguments."""

    images: EmbeddingStore
    captions: EmbeddingStore
    caption_image: np.ndarray   # (M,) image row of each caption, over every caption source
    index: CaptionIndex
    usable: np.ndarray          # image rows with an embedding and at least one caption


# --------------------------------------------------------------------------- trainer


def held_out_split(usable: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) of ``usable``: ``config.val_fraction`` of them (at least one
    when the fraction is positive, at most ``val_max_images``) drawn by ``config.seed``, both sorted.
    The trainer and the layer search use it, so the search scores exactly the pairs the probe holds out."""
    n_val = int(round(config.val_fraction * len(usable)))
    if config.val_fraction > 0:
        n_val = max(n_val, 1)
    if config.val_max_images is not None:
        n_val = min(n_val, config.val_max_images)
    perm = np.random.default_rng([config.seed, 0]).permutation(len(usable))
    return np.sort(usable[perm[n_val:]]), np.sort(usable[perm[:n_val]])


class Trainer:
    """Train alignment heads with the SAIL recipe (see the module docstring).

    Args:
        config: a `TrainConfig` (already resolved: see `resolve_recipe`); None: `TrainConfig()`,
            the ``"sail-probe"`` recipe.
        out_dir: run directory for checkpoints, logs and ``aligned.json``
            (None: nothing is written, nothing can be resumed).
        quiet: no progress bar.
        dist: the process's `DistContext` (None: from torchrun's environment).
        metadata: JSON-able facts stored in ``aligned.json`` -- the encoders
            (``{"vision": {"name", "pooling", "dim", ...}, "text": {...}}``),
            data descriptions; `load_aligned` needs the encoder names.
        overwrite: allow starting afresh in an ``out_dir`` that holds a run.
        notes: lines to report with the run (e.g. why the config was adjusted).
        **overrides: `TrainConfig` fields replacing those of ``config``.

    After `fit`: ``model_`` (the best epoch's weights), ``history_`` (one dict
    per epoch), ``best_epoch_``, ``best_score_``, ``select_by_``,
    ``metrics_`` (evaluation of the kept weights), ``stopped_early_``,
    ``notes_`` (what was adjusted and why), ``train_index_``/``val_index_``
    (image rows), ``positives_``, ``train_captions_`` (captions the loss
    saw per epoch), ``steps_``, ``checkpoint_`` (path of
    ``aligned.json`` or None).
    """

    def __init__(self, config: TrainConfig | None = None, out_dir: str | Path | None = None, *,
                 quiet: bool = False, dist: D.DistContext | None = None, metadata: dict | None = None,
                 overwrite: bool = False, notes: Sequence[str] = (), **overrides):
        if config is not None and not isinstance(config, TrainConfig):
            raise ValidationError(f"config must be a TrainConfig or None, got {type(config).__name__}")
        if overrides and config is not None:
            config = config.replace(**overrides)
        self.config, self.overrides = config, overrides
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.quiet, self.metadata, self.overwrite = quiet, dict(metadata or {}), overwrite
        self.dist = dist
        self.extra_notes = list(notes)

    # ------------------------------------------------------------------ fit
    def fit(self, image_emb, text_emb, caption_image=None, *, extra_text_emb=None, image_valid=None,
            zero_shot: ZeroShotData | None = None, retrieval: RetrievalData | None = None,
            selection: tuple[ZeroShotData | None, RetrievalData | None] | None = None,
            resume: bool = False, callbacks: Sequence[Callable[["Trainer", str, dict], None]] = ()
            ) -> "Trainer":
        """Train the heads.

        Args:
            image_emb: ``(N, d_img)`` image embeddings: a `CachedEmbeddings`
                entry (memory-mapped; read batch by batch), array, memmap or tensor.
            text_emb: ``(M, d_txt)`` caption embeddings, same kinds.
            caption_image: ``(M,)`` image row of each caption; None: row ``i``
                captions image ``i`` (``M == N``).
            extra_text_emb: more caption sources row-paired with the images
                (``(N, d_txt)`` each, a list of them): every image's extra
                captions (SAIL's LLM-written captions).
            image_valid: ``(N,)`` bool, False for images that could not be
                encoded (default: the cache's ``valid`` mask, else all).
            zero_shot, retrieval: evaluation sets (`ZeroShotData`, `RetrievalData`),
                scored every ``eval_every`` epochs and for the kept weights.
            selection: ``(zero_shot, retrieval)`` sets for ``select_by`` a
                metric: a selection set of its own, never a reported test set.
            resume: continue from ``out_dir``'s latest checkpoint (a fresh
                start when there is none).
            callbacks: ``f(trainer, event, info)`` after each ``"step"`` and ``"epoch"``.

        Returns self.
        """
        self.dist_ = self.dist or D.init_distributed()
        pairs = self._prepare_pairs(image_emb, text_emb, caption_image, extra_text_emb, image_valid)
        config = self.config if self.config is not None else TrainConfig(**self.overrides)
        if config.precision == "fp16" and not torch.cuda.is_available():
            raise ValidationError("precision='fp16' needs a CUDA device; use 'bf16' or 'fp32'")
        self.config_, self.positives_, self.notes_ = config, config.positives, list(self.extra_notes)
        self.centred_sides_: dict[str, bool] = {}  # side -> whether its LayerNorm bias started centred
        if self.positives_ != "all" and int(pairs.index.counts[pairs.usable].min()) < self.positives_:
            self.notes_.append(f"some images have fewer than positives={self.positives_} captions; "
                               f"their captions repeat")
        self.device_ = D.rank_device(self.dist_, config.device)
        if len(pairs.usable) < self.dist_.world_size * 2:
            raise DataError(f"{len(pairs.usable)} images are too few for {self.dist_.world_size} ranks")
        self._build_streams(pairs, config)
        self._zero_shot, self._retrieval = zero_shot, retrieval
        self._selection = tuple(selection) if selection is not None else (None, None)
        if config.select_by != "val_loss" and not any(s is not None for s in self._selection):
            raise ValidationError(
                f"select_by={config.select_by!r} picks the epoch by a downstream score, which needs a selection "
                f"set of its own (selection=(zero_shot, retrieval); `train --selection SPEC`): selecting on a "
                f"reported test set would inflate its score")
        if config.select_by == "val_loss" and self._val_stream is None and config.val_fraction > 0:
            self.notes_.append("the held-out split is smaller than the number of ranks; the last epoch is kept")
        self._build_model(pairs.images.dim, pairs.captions.dim, config)
        if config.norm_bias_init in ("center", "auto"):  # a resumed run then restores its own biases
            self._center_norms(pairs)
        self._store = CheckpointStore(self.out_dir) if self.out_dir is not None else None
        try:
            self._train(resume, callbacks)
        except BaseException:
            self.__dict__.pop("history_", None)
            raise
        return self

    def _prepare_pairs(self, image_emb, text_emb, caption_image, extra_text_emb, image_valid) -> _Pairs:
        """Stores over the inputs, every caption source as one, and the usable image rows."""
        images = as_store("image_emb", image_emb)
        main = as_store("text_emb", text_emb)
        if caption_image is None:
            if main.n != images.n:
                raise ValidationError(
                    f"image_emb has {images.n} rows and text_emb {main.n}; row-paired captions need equal "
                    f"rows, or pass caption_image (the image row of each caption)")
            caption_image = np.arange(images.n)
        caption_image = caption_image.cpu().numpy() if torch.is_tensor(caption_image) else np.asarray(caption_image)
        if caption_image.shape != (main.n,):
            raise ValidationError(f"caption_image must have one entry per text_emb row ({main.n}), got shape "
                                  f"{caption_image.shape}")
        stores, owners = [main], [caption_image]
        for k, extra in enumerate(_extra_sources(extra_text_emb)):
            store = as_store(f"extra_text_emb[{k}]", extra)
            if store.n != images.n:
                raise ValidationError(f"extra_text_emb[{k}] has {store.n} rows; extra captions are row-paired "
                                      f"with the {images.n} images")
            stores.append(store)
            owners.append(np.arange(images.n))
        captions = stores[0] if len(stores) == 1 else ConcatStore("captions", stores)
        caption_image = np.concatenate(owners).astype(np.int64)
        index = CaptionIndex(caption_image, images.n)
        valid = _valid_mask(image_valid if image_valid is not None else getattr(image_emb, "valid", None), images.n)
        if valid.shape != (images.n,):
            raise ValidationError(f"image_valid must be a bool mask of shape ({images.n},), got {valid.shape}")
        usable = np.flatnonzero(valid & (index.counts > 0))
        if len(usable) < 4:
            raise DataError(f"only {len(usable)} images have an embedding and a caption; training needs at least 4")
        return _Pairs(images, captions, caption_image, index, usable)

    def _build_streams(self, pairs: _Pairs, config: TrainConfig) -> None:
        """The train / held-out split and a `PairStream` over each."""
        train_rows, val_rows = held_out_split(pairs.usable, config)
        self.train_index_, self.val_index_ = train_rows, val_rows
        counts = pairs.index.counts
        self.train_captions_ = (int(counts[train_rows].sum()) if self.positives_ == "all"
                                else self.positives_ * len(train_rows))
        stream_args = dict(caption_index=pairs.index, rank=self.dist_.rank, world_size=self.dist_.world_size,
                           positives=self.positives_, seed=config.seed, prefetch=config.prefetch)
        self._train_stream = PairStream(pairs.images, pairs.captions, pairs.caption_image, train_rows,
                                        batch_size=config.batch_size, sampling=config.caption_sampling,
                                        drop_last=config.drop_last, stream=0, **stream_args)
        if self._train_stream.batch_exceeds_data:
            self.notes_.append(
                f"batch_size {config.batch_size:,} exceeds the {self._train_stream.images_per_epoch:,} training "
                f"images: each epoch is one batch of all of them")
        self._val_stream = None
        if len(val_rows) >= self.dist_.world_size:
            # The held-out loss scores every held-out image, whatever drop_last says about training.
            self._val_stream = PairStream(pairs.images, pairs.captions, pairs.caption_image, val_rows,
                                          batch_size=config.batch_size, sampling="fixed", shuffle=False, stream=1,
                                          **stream_args)

    def _build_model(self, image_dim: int, text_dim: int, config: TrainConfig) -> None:
        """Seeded heads on the device, the micro-batch, the optimizer and the fp16 grad scaler."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = AlignmentModel(image_dim, text_dim, config.out_dim, config.image_head, config.text_head,
                                   config.width, config.logit_scale_init, config.logit_bias_init)
        self.model_ = model.to(self.device_)
        self.micro_batch_ = config.micro_batch
        if config.micro_batch == "auto":
            share = -(-config.batch_size // self.dist_.world_size)
            per_image = self.train_captions_ / max(1, len(self.train_index_))
            self.micro_batch_ = resolve_micro_batch(self.model_, share, math.ceil(share * per_image), self.device_,
                                                    config.precision)
            if self.micro_batch_ is not None:
                self.notes_.append(f"micro_batch auto: {share:,} images a step do not fit one pass in half the "
                                   f"free memory; two-pass steps with micro-batches of {self.micro_batch_:,}")
        self._step_config = config.replace(micro_batch=self.micro_batch_)
        self._optimizer = self._make_optimizer()
        self._scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None

    def _center_norms(self, pairs: _Pairs) -> None:
        """Start each head's LayerNorm bias at minus its training split's mean output (`norm_init`);
        with ``norm_bias_init="auto"`` only where that mean holds >= `AUTO_CENTER_SHARE` of the energy."""
        min_share = AUTO_CENTER_SHARE if self.config_.norm_bias_init == "auto" else 0.0
        caption_rows, _ = pairs.index.all_of(self.train_index_)
        for side, head, store, rows in (("image", self.model_.image_head, pairs.images, self.train_index_),
                                        ("text", self.model_.text_head, pairs.captions, caption_rows)):
            done = center_norm_bias_(head, store, rows, min_share)
            if done is None:
                continue
            share, centred = done
            self.centred_sides_[side] = centred
            if centred:
                self.notes_.append(f"{side} LayerNorm bias centred on the training split (the mean held "
                                   f"{share:.1%} of the normalised features' energy)")
            else:
                self.notes_.append(f"{side} LayerNorm bias left at zeros (norm_bias_init 'auto': the training "
                                   f"mean held {share:.1%} of the normalised features' energy, below "
                                   f"{AUTO_CENTER_SHARE:.0%})")

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.model_, self.config_)

    # ------------------------------------------------------------------ the step
    def _embed(self, head: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return embed(head, x, self.micro_batch_, self.device_, self.config_.precision)

    def _loss(self, zi: torch.Tensor, zt: torch.Tensor, positive_index: torch.Tensor, n_global: int) -> torch.Tensor:
        config, model = self.config_, self.model_
        return global_loss(zi, zt, positive_index, model.logit_scale.exp(), model.logit_bias, n_global=n_global,
                           loss=config.loss, normalization=config.normalization, chunk_size=config.chunk_size,
                           positives=self.positives_, ctx=self.dist_, matmul_dtype=half_dtype(config.precision))

    def _train_step(self, batch) -> tuple[float, float]:
        device = self.device_
        return train_step(self.model_, self._optimizer, batch.images.to(device, non_blocking=True),
                         batch.texts.to(device, non_blocking=True),
                         batch.positive_index.to(device, non_blocking=True), batch.global_size,
                         self._step_config,
                         positives=self.positives_, ctx=self.dist_, scaler=self._scaler)

    @torch.no_grad()
    def _val_loss(self) -> float | None:
        if self._val_stream is None:
            return None
        self.model_.eval()
        total, count = 0.0, 0
        for batch in self._val_stream.epoch(0):
            images, texts = batch.images.to(self.device_), batch.texts.to(self.device_)
            zi, zt = self._embed(self.model_.image_head, images), self._embed(self.model_.text_head, texts)
            loss = self._loss(zi, zt, batch.positive_index.to(self.device_), batch.global_size)
            total += D.sum_scalar(loss.item(), self.dist_) * batch.global_size
            count += batch.global_size
        self.model_.train()
        return total / count

    def _evaluate(self, sets: tuple | None = None) -> dict[str, float]:
        """Zero-shot / retrieval metrics of the current weights on ``sets`` (default: the
        reported evaluation sets); computed on rank 0, shared with every rank."""
        zero_shot, retrieval = sets if sets is not None else (self._zero_shot, self._retrieval)
        metrics: dict[str, float] = {}
        if self.dist_.is_main and (zero_shot is not None or retrieval is not None):
            self.model_.eval()
            metrics = evaluate(self.transform_image, self.transform_text, zero_shot, retrieval)
            self.model_.train()
        return D.broadcast_object(metrics, self.dist_)

    # ------------------------------------------------------------------ the loop
    def _train(self, resume: bool, callbacks) -> None:
        config, ctx = self.config_, self.dist_
        self._total_steps = len(self._train_stream) * config.epochs
        self._warmup = warmup_steps(config.warmup_fraction, self._total_steps)
        self.select_by_ = config.select_by
        self._last_save = time.monotonic()
        state, best_state = self._start(resume)
        self._log = TrainLog(self.out_dir, enabled=ctx.is_main, backend=config.log_to, run_config=config.to_dict(),
                             resume_step=state.step if state.step > 0 else None)
        bar = progress(total=self._total_steps, initial=state.step, desc="training heads", unit="step",
                       disable=self.quiet or not ctx.is_main, dynamic_ncols=True)
        self.model_.train()
        try:
            while state.epoch < config.epochs and not state.stopped:
                started = time.perf_counter()
                self._run_epoch(state, best_state, bar, callbacks)
                best_state = self._end_epoch(state, best_state, started, bar, callbacks)
        finally:
            bar.close()
            self._log.close()
        self._finish(state, best_state)

    def _lr(self, step: int) -> float:
        config = self.config_
        return lr_at(step, self._total_steps, config.lr, self._warmup, config.schedule, config.min_lr)

    def _tracker(self) -> BestEpoch:
        config = self.config_
        return BestEpoch(higher_is_better=config.select_by not in LOWER_IS_BETTER, min_delta=config.min_delta,
                         min_rel_delta=config.min_rel_delta, patience=config.patience)

    def _start(self, resume: bool) -> tuple[LoopState, dict]:
        """The loop state and kept weights to start from: a checkpoint's (``resume``) or fresh ones."""
        state, best_state = None, None
        if resume and self._store is not None and self._store.exists():
            state, best_state = self._restore()
        elif self._store is not None and (self._store.exists() or (self.out_dir / ALIGNED_FILE).exists()):
            if not self.overwrite:
                raise ValidationError(
                    f"{self.out_dir} already holds a training run; pass resume=True (--resume) to continue "
                    f"it or overwrite=True (--overwrite) to start afresh")
            D.barrier(self.dist_)  # every rank has seen the old run before rank 0 removes it
            if self.dist_.is_main:
                self._store.clear()
            D.barrier(self.dist_)
        elif resume and self.dist_.is_main:
            log.info("nothing to resume in %s; starting afresh", self.out_dir)
        if state is None:
            state = self._fresh_state()
        if state.step == 0 and state.initial_val_loss is None:
            state.initial_val_loss = self._val_loss()
        return state, best_state if best_state is not None else _cpu_state(self.model_)

    def _run_epoch(self, state: LoopState, best_state: dict, bar, callbacks) -> None:
        """The optimizer steps of epoch ``state.epoch``, from batch ``state.batch`` on."""
        config, model = self.config_, self.model_
        epoch = state.epoch
        for batch in self._train_stream.epoch(epoch, start=state.batch):
            t0 = time.perf_counter()
            lr = self._lr(state.step)
            for group in self._optimizer.param_groups:
                group["lr"] = lr
            loss, grad_norm = self._train_step(batch)
            if not math.isfinite(loss):
                raise AlignprobeError(
                    f"the loss became {loss} at epoch {epoch + 1}, step {state.step}; lower the "
                    f"learning rate (now {lr:g}), set grad_clip, or use precision='fp32'")
            seconds = time.perf_counter() - t0
            state.after_step(batch.index, loss, batch.global_size)
            speed = batch.global_size / max(seconds, 1e-9)
            if state.step % config.log_every == 0:
                self._log.step({
                    "step": state.step, "epoch": epoch + 1, "batch": batch.index + 1, "loss": loss,
                    "lr": lr, "grad_norm": grad_norm, "logit_scale": float(model.logit_scale.detach().exp()),
                    "logit_bias": float(model.logit_bias.detach()), "samples_per_s": speed, "seconds": seconds})
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4g}", samples_s=f"{speed:.0f}", refresh=False)
            if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                self._save(state, best_state, force=True)
            for cb in callbacks:
                cb(self, "step", {"step": state.step, "epoch": epoch, "loss": loss})

    def _end_epoch(self, state: LoopState, best_state: dict, started: float, bar, callbacks) -> dict:
        """Validation, evaluation, selection, early stopping and the checkpoint; returns the kept weights."""
        config, model = self.config_, self.model_
        epoch = state.epoch + 1
        val_loss = self._val_loss()
        metrics, selection = {}, {}
        if (config.eval_every and epoch % config.eval_every == 0) or epoch == config.epochs:
            metrics = self._evaluate()
            if config.select_by != "val_loss":
                selection = self._evaluate(self._selection)
        row = {"epoch": epoch, "step": state.step, "train_loss": state.train_loss, "val_loss": val_loss,
               "lr": self._lr(max(0, state.step - 1)), "seconds": time.perf_counter() - started,
               "logit_scale": float(model.logit_scale.detach().exp()),
               "logit_bias": float(model.logit_bias.detach()), **metrics}
        state.history.append(row)
        row.update({f"selection_{k}": v for k, v in selection.items()})
        score = val_loss if config.select_by == "val_loss" else selection.get(config.select_by)
        if config.select_by != "val_loss" and selection and score is None:
            raise ValidationError(f"select_by={config.select_by!r} is not among the selection set's "
                                  f"metrics {sorted(selection)}")
        no_selection = score is None and config.select_by == "val_loss" and self._val_stream is None
        if state.best.update(score, epoch, state.step, metrics, keep_anyway=no_selection):
            best_state = _cpu_state(model)
        state.stopped = state.best.exhausted
        state.next_epoch()
        self._log.epoch(row)
        bar.set_postfix(epoch=epoch, val_loss=f"{val_loss:.4g}" if val_loss is not None else "-", refresh=False)
        self._save(state, best_state, force=state.epoch == config.epochs or state.stopped)
        for cb in callbacks:
            cb(self, "epoch", row)
        return best_state

    def _fresh_state(self) -> LoopState:
        return LoopState(config=self.config_.to_dict(), world_size=self.dist_.world_size, positives=self.positives_,
                         n_train=len(self.train_index_), n_val=len(self.val_index_), best=self._tracker())

    def _restore(self) -> tuple[LoopState, dict]:
        ckpt = self._store.load("latest", device=self.device_)
        state = ckpt["state"]
        # Fields added since a checkpoint was written: the values that reproduce how it trained.
        saved = {**LEGACY_FIELDS, **{k: v for k, v in state["config"].items() if k not in RUNTIME_FIELDS}}
        now = {k: v for k, v in self.config_.to_dict().items() if k not in RUNTIME_FIELDS}
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if changed:
            raise ValidationError(
                f"cannot resume {self.out_dir}: the configuration differs from the checkpoint's in {changed} "
                f"(saved: {[saved.get(k) for k in changed]}, now: {[now.get(k) for k in changed]}); "
                f"rerun with the saved settings, or start afresh with overwrite")
        mine = {"world_size": self.dist_.world_size, "positives": self.positives_,
                "n_train": len(self.train_index_), "n_val": len(self.val_index_)}
        for key, value in mine.items():
            if state[key] != value:
                raise ValidationError(f"cannot resume {self.out_dir}: {key} was {state[key]} and is now {value} "
                                      f"(resume with the same data and number of processes)")
        self.model_.load_state_dict(ckpt["model"])
        self._optimizer.load_state_dict(ckpt["optimizer"]["optimizer"])
        if self._scaler is not None and ckpt["optimizer"].get("scaler"):
            self._scaler.load_state_dict(ckpt["optimizer"]["scaler"])
        set_rng_state(ckpt["rng"])
        best_dir = self._store.path("best")
        if (ckpt["dir"] / BEST_FILE).is_file():
            best_state = load_file(str(ckpt["dir"] / BEST_FILE))
        elif best_dir is not None:  # a checkpoint of format 1: the best weights in their own step
            best_state = load_file(str(best_dir / MODEL_FILE))
        else:
            best_state = _cpu_state(self.model_)
        if self.dist_.is_main:
            log.info("resuming %s at epoch %d, batch %d (step %d)", self.out_dir, state["epoch"] + 1,
                     state["batch"], state["step"])
        return LoopState.from_dict(state, self._tracker()), best_state

    def _save(self, state: LoopState, best_state: dict, force: bool = False) -> None:
        """Checkpoint (latest weights, the best so far, optimizer, RNG, loop state) and ``aligned.json``.

        Epoch-end saves are throttled to one per ``checkpoint_seconds``: a
        small set trains hundreds of one-second epochs, and writing 50 MB with
        fsync after each would cost more than the training. A kill loses at
        most that much work; the resumed run is the same run bit for bit.
        """
        if self._store is None or not self.dist_.is_main:
            return
        now = time.monotonic()
        if not force and now - self._last_save < self.config_.checkpoint_seconds:
            return
        optimizer = {"optimizer": self._optimizer.state_dict(),
                     "scaler": self._scaler.state_dict() if self._scaler is not None else None}
        self._store.save(state.step, _cpu_state(self.model_), optimizer, rng_state(), state.to_dict(),
                         ("latest",), best_state=best_state)
        self._last_save = time.monotonic()
        self._write_aligned(state, metrics=None)

    def _finish(self, state: LoopState, best_state: dict) -> None:
        self.history_ = state.history
        self.initial_val_loss_ = state.initial_val_loss
        self.steps_ = state.step
        self.stopped_early_ = state.stopped
        self.best_epoch_, self.best_score_ = state.best.epoch, state.best.score
        self.model_.load_state_dict(best_state)
        self.model_.eval()
        self.metrics_ = self._evaluate()
        self.metrics_.update(self._bookkeeping())
        self.checkpoint_ = None
        if self._store is not None and self.dist_.is_main:
            self.checkpoint_ = self._write_aligned(state, metrics=self.metrics_)
            self._store.prune()
        D.barrier(self.dist_)

    def _bookkeeping(self) -> dict[str, float]:
        val = [h["val_loss"] for h in self.history_ if h.get("val_loss") is not None]
        out = {"train_epochs": float(len(self.history_)), "train_best_epoch": float(self.best_epoch_)}
        if val:
            out["train_val_loss"] = float(self.history_[self.best_epoch_ - 1]["val_loss"]
                                         if self.best_epoch_ else min(val))
        return out

    def _write_aligned(self, state: LoopState, metrics: dict | None) -> Path:
        latest = self._store.path("latest")
        weights = latest / BEST_FILE if latest is not None and (latest / BEST_FILE).is_file() else \
            (self._store.path("best") or latest) / MODEL_FILE
        record = {
            "format": ALIGNED_FORMAT,
            "alignprobe_version": __version__,
            **{k: self.metadata.get(k) for k in ("vision", "text")},
            "model_config": self.model_.config(),
            "train_config": self.config_.to_dict(),
            # the store hands out resolved paths (`model_file.inside`); the run directory may be
            # relative (`--run-dir runs/x`, `run`'s default `results/`)
            "weights": str(weights.resolve().relative_to(self.out_dir.resolve())),
            "best": {"epoch": state.best.epoch, "step": state.best.step,
                     "select_by": self.config_.select_by, "score": state.best.score},
            "epochs_run": len(state.history),
            "steps": state.step,
            "steps_per_epoch": len(self._train_stream),
            "images_per_epoch": self._train_stream.images_per_epoch,
            "finished": metrics is not None,
            "stopped_early": state.stopped,
            "positives": self.positives_,
            "train_captions": self.train_captions_,
            "n_train": len(self.train_index_),
            "n_val": len(self.val_index_),
            "world_size": self.dist_.world_size,
            "metrics": metrics,
            "notes": self.notes_,
            "norm_bias_centred": self.centred_sides_,
            "history": state.history,
            "metadata": {k: v for k, v in self.metadata.items() if k not in ("vision", "text")},
        }
        path = self.out_dir / ALIGNED_FILE
        write_json_atomic(path, record)
        return path

    # ------------------------------------------------------------------ use
    def _check_fitted(self) -> None:
        if not hasattr(self, "history_"):
            raise NotFittedError("this Trainer is not fitted yet; call fit(...) first")

    def transform_image(self, x) -> np.ndarray:
        """``(N, d_img)`` embeddings -> L2-normalised ``(N, out_dim)`` fp32 numpy."""
        return project(self.model_.image_head, x, self.device_, self.config_.eval_batch_size,
                       self.config_.precision)

    def transform_text(self, x) -> np.ndarray:
        """``(M, d_txt)`` embeddings -> L2-normalised ``(M, out_dim)`` fp32 numpy."""
        return project(self.model_.text_head, x, self.device_, self.config_.eval_batch_size,
                       self.config_.precision)

    def summary(self) -> list[str]:
        """Human-readable lines: adjustments, the epoch kept and why."""
        self._check_fitted()
        lines = list(self.notes_)
        if self.best_score_ is not None and self.config_.select_by == "val_loss":
            init = f" (initial {self.initial_val_loss_:.4g})" if self.initial_val_loss_ is not None else ""
            lines.append(
                f"kept the weights of epoch {self.best_epoch_} of {len(self.history_)}: lowest held-out "
                f"sigmoid loss {self.best_score_:.4g}{init} on {len(self.val_index_)} held-out images"
                + ("; stopped early" if self.stopped_early_ else ""))
        elif self.best_score_ is not None:
            lines.append(f"kept the weights of epoch {self.best_epoch_} of {len(self.history_)}: best "
                         f"{self.config_.select_by} {self.best_score_:.4g}"
                         + ("; stopped early" if self.stopped_early_ else ""))
        else:
            lines.append(f"no held-out split: kept the last epoch ({len(self.history_)})")
        return lines


