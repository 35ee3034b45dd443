"""The alignment probe: fit an `AlignmentModel` on pre-computed embedding pairs.

SAIL (Zhang et al., CVPR 2025) measures how well a frozen vision encoder and a
frozen text encoder align by fitting a linear head on each side with the
sigmoid loss and scoring retrieval / zero-shot through them. `ProbeConfig`
holds the recipe (`ProbeConfig.sail_probe()`, and `ProbeConfig.sail_train()`
for the star-head SAIL recipe), `AlignmentProbe` fits it:

    probe = AlignmentProbe(ProbeConfig.small_data(len(pairs))).fit(img_emb, txt_emb)
    img_z, txt_z = probe.transform_image(img_emb), probe.transform_text(txt_emb)

Inputs may be numpy arrays, ``np.memmap`` (e.g. fp16 caches) or torch tensors;
large inputs are converted to fp32 batch by batch, never all at once.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from alignprobe._version import __version__
from alignprobe.errors import AlignprobeError, NotFittedError, ValidationError
from alignprobe.io import atomic_path, write_json_atomic

from alignprobe.probe.training.config_fields import ConfigDictMixin, is_int as _is_int, is_real as _is_real, require
from alignprobe.probe.training.heads import HEAD_KINDS, AlignmentModel
from alignprobe.probe.training.losses import NORMALIZATIONS, pairwise_infonce_loss, pairwise_sigmoid_loss
from alignprobe.probe.training.schedules import SCHEDULES, lr_at, warmup_steps_for

LOSSES = ("sigmoid", "infonce")
OPTIMIZERS = ("adamw", "lion")
PRECISIONS = ("fp32", "bf16")
# Below this many pairs the SAIL recipe (lr 1e-5, batch 32,768) barely moves
# the heads: there are only a handful of steps per epoch.
SMALL_DATA_PAIRS = 100_000
CHECKPOINT_FORMAT = "alignprobe.alignment_probe/1"
MODEL_FILE, SPLIT_FILE, META_FILE = "model.safetensors", "split.safetensors", "probe.json"


@dataclass(frozen=True)
class ProbeConfig(ConfigDictMixin):
    """Hyperparameters of an alignment probe. Defaults are the SAIL probe recipe.

    Heads: ``out_dim``, ``image_head`` / ``text_head`` (``linear``, ``mlp``,
    ``star``, ``identity``), star ``width``, initial ``logit_scale_init``
    (log space) and ``logit_bias_init``.

    Loss: ``loss`` (``sigmoid`` or ``infonce``), sigmoid ``normalization``
    (``n2``: mean over all logits, SAIL; ``n``: sum / batch, SigLIP),
    ``chunk_size`` (tile size of the exact memory-bounded loss; None: naive).

    Optimisation: ``optimizer`` (``adamw`` or ``lion``), ``lr``,
    ``weight_decay``, ``betas``, ``eps`` (AdamW only), ``decay_norm_bias_logit``
    (False: weight decay only on weight matrices, not on LayerNorm gains,
    biases, logit scale and bias), ``batch_size``, ``epochs``, ``warmup`` (an
    int counts steps, a float in [0, 1] is a fraction of all steps; the paper
    does not state one, 5% is our choice), ``schedule`` (``cosine`` or
    ``constant``), ``min_lr``, ``grad_clip`` (max global grad norm, or None).

    Validation: ``val_fraction`` of the images is held out (seeded); the
    weights of the epoch with the lowest validation loss are kept; training
    stops after ``patience`` epochs without an improvement larger than
    ``min_delta`` (None: run all epochs).

    Runtime: ``seed``, ``device`` (``auto``: CUDA when available, else CPU),
    ``precision`` (``bf16`` autocasts the heads; the loss is always fp32),
    ``preload_bytes`` (inputs whose fp32 copy is at most this big are converted
    once and kept on the device; larger ones are read batch by batch),
    ``eval_batch_size`` (rows per batch of `transform_image` /
    `transform_text`; memory only, not results).
    """

    out_dim: int = 2048
    image_head: str = "linear"
    text_head: str = "linear"
    width: int = 8
    logit_scale_init: float = math.log(20.0)
    logit_bias_init: float = -10.0
    loss: str = "sigmoid"
    normalization: str = "n2"
    chunk_size: int | None = 4096
    optimizer: str = "adamw"
    lr: float = 1e-5
    weight_decay: float = 1e-7
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    decay_norm_bias_logit: bool = False
    batch_size: int = 32768
    epochs: int = 100
    warmup: int | float = 0.05
    schedule: str = "cosine"
    min_lr: float = 0.0
    grad_clip: float | None = None
    val_fraction: float = 0.1
    patience: int | None = 10
    min_delta: float = 0.0
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    preload_bytes: int = 2 * 1024**3
    eval_batch_size: int = 8192

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        choices = {
            "image_head": HEAD_KINDS, "text_head": HEAD_KINDS, "loss": LOSSES,
            "normalization": NORMALIZATIONS, "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES, "precision": PRECISIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValidationError(f"ProbeConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("out_dim", "width", "batch_size", "epochs", "eval_batch_size"):
            _require(name, getattr(self, name), lambda v: _is_int(v) and v > 0, "a positive int")
        _require("chunk_size", self.chunk_size, lambda v: v is None or (_is_int(v) and v > 0), "None or a positive int")
        _require("patience", self.patience, lambda v: v is None or (_is_int(v) and v > 0), "None or a positive int")
        _require("seed", self.seed, lambda v: _is_int(v) and v >= 0, "a non-negative int")
        _require("preload_bytes", self.preload_bytes, lambda v: _is_int(v) and v >= 0, "a non-negative int")
        for name in ("lr", "weight_decay", "eps", "min_lr", "min_delta"):
            _require(name, getattr(self, name), lambda v: _is_real(v) and v >= 0, "a finite float >= 0")
        _require("lr", self.lr, lambda v: v > 0, "> 0")
        _require("val_fraction", self.val_fraction, lambda v: _is_real(v) and 0 <= v < 1, "a float in [0, 1)")
        _require("grad_clip", self.grad_clip, lambda v: v is None or (_is_real(v) and v > 0), "None or a float > 0")
        _require("betas", self.betas, lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two floats in [0, 1)")
        warmup_steps_for(self.warmup, 1)  # validates the type and range
        if not isinstance(self.device, str) or not self.device:
            raise ValidationError(f"ProbeConfig.device must be a device string such as 'auto', 'cpu', 'cuda:0', got {self.device!r}")

    # ---- presets
    @classmethod
    def sail_probe(cls, **overrides) -> "ProbeConfig":
        """The SAIL alignment-probe recipe: linear heads into 2048-d, sigmoid loss,
        batch 32,768, AdamW (0.9, 0.99), lr 1e-5, wd 1e-7, 100 epochs.
        Meant for millions of pairs; see `small_data` below ~100k."""
        return cls(**overrides)

    @classmethod
    def sail_train(cls, **overrides) -> "ProbeConfig":
        """The SAIL training recipe: star heads (w = 8) into 1024-d, Lion,
        lr 1e-5, wd 1e-4, batch 32,768, 100 epochs."""
        values = dict(out_dim=1024, image_head="star", text_head="star", width=8,
                      optimizer="lion", lr=1e-5, weight_decay=1e-4)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def small_data(cls, n_pairs: int | None = None, **overrides) -> "ProbeConfig":
        """The probe recipe adjusted for small pair sets (< ~100k pairs, e.g. the
        built-in datasets): batch ``min(n_train, 1024)``, lr 1e-3, 200 epochs
        with early stopping (patience 20). Measured on planted-structure data
        (benchmarks/README.md, "probe_loss.py"): with the recipe's lr 1e-5 the
        validation loss of a few-thousand-pair set barely moves in 100 epochs.
        """
        batch = 1024 if n_pairs is None else max(2, min(1024, int(n_pairs)))
        values = dict(batch_size=batch, lr=1e-3, weight_decay=1e-4, epochs=200, patience=20)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def auto(cls, n_pairs: int, **overrides) -> "ProbeConfig":
        """`small_data` below 100k pairs, the `sail_probe` recipe above."""
        if n_pairs < SMALL_DATA_PAIRS:
            return cls.small_data(n_pairs, **overrides)
        return cls.sail_probe(**overrides)


def _require(name: str, value, ok, what: str) -> None:
    require("ProbeConfig", name, value, ok, what)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise ValidationError(f"device {device!r} is not a valid torch device: {err}") from None


# --------------------------------------------------------------------------- inputs


class _Rows:
    """Rows of an ``(N, d)`` float array, tensor or memmap, fetched as fp32 on a device.

    Inputs whose fp32 copy fits in ``preload_bytes`` are converted once; larger
    ones (typically fp16 memmaps of millions of rows) are read batch by batch,
    so the whole set is never copied to fp32.
    """

    def __init__(self, name: str, data, device: torch.device, preload_bytes: int):
        if not (torch.is_tensor(data) or isinstance(data, np.ndarray)):
            data = np.asarray(data)
        if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] == 0:
            raise ValidationError(f"{name} must be a 2-D (rows, dim) array with rows > 0, got shape {tuple(data.shape)}")
        floating = data.is_floating_point() if torch.is_tensor(data) else np.issubdtype(data.dtype, np.floating)
        if not floating:
            raise ValidationError(f"{name} must hold floats (fp16/bf16/fp32/fp64), got dtype {data.dtype}")
        self.name, self.data, self.device = name, data, device
        self.n, self.dim = int(data.shape[0]), int(data.shape[1])
        self._full = None
        if self.n * self.dim * 4 <= preload_bytes:
            self._full = self._convert(data, lambda i: i)

    def _convert(self, block, row_of) -> torch.Tensor:
        """fp32 copy of ``block`` on the device; ``row_of(i)``: data row of block row ``i``."""
        if not torch.is_tensor(block):
            block = torch.from_numpy(np.ascontiguousarray(block))
        block = block.to(device=self.device, dtype=torch.float32)
        finite = torch.isfinite(block).all(dim=1)
        if not bool(finite.all()):
            bad = row_of(int(torch.nonzero(~finite)[0, 0]))
            raise ValidationError(
                f"{self.name} contains NaN or Inf (first bad row: {bad}); "
                f"re-encode those samples or drop them before fitting"
            )
        return block

    def take(self, rows: np.ndarray | slice) -> torch.Tensor:
        """fp32 rows on the device; ``rows`` is a sorted index array or a slice."""
        if self._full is not None:
            if isinstance(rows, slice):
                return self._full[rows]
            return self._full[torch.from_numpy(rows).to(self.device)]
        if isinstance(rows, slice):
            return self._convert(self.data[rows], lambda i: (rows.start or 0) + i)
        index = torch.from_numpy(rows) if torch.is_tensor(self.data) else rows
        return self._convert(self.data[index], lambda i: int(rows[i]))


def _extra_sources(extra, n_images: int, text_dim: int, device, preload_bytes) -> list[_Rows]:
    if extra is None:
        return []
    if torch.is_tensor(extra) or isinstance(extra, np.ndarray):
        if extra.ndim == 2:
            blocks = [extra]
        elif extra.ndim == 3:
            blocks = [extra[k] for k in range(extra.shape[0])]
        else:
            raise ValidationError(
                f"extra_text_emb must be (N, d), (K, N, d) or a list of (N, d) arrays, got shape {tuple(extra.shape)}"
            )
    else:
        blocks = list(extra)
    sources = [_Rows(f"extra_text_emb[{k}]", b, device, preload_bytes) for k, b in enumerate(blocks)]
    for k, src in enumerate(sources):
        if src.n != n_images or src.dim != text_dim:
            raise ValidationError(
                f"extra_text_emb[{k}] has shape ({src.n}, {src.dim}); it must be ({n_images}, {text_dim}): "
                f"one extra caption embedding per image, from the same text encoder as text_emb"
            )
    return sources


# --------------------------------------------------------------------------- probe


class AlignmentProbe:
    """Fit alignment heads on frozen image/text embedding pairs (SAIL's alignment probe).

    Args:
        config: a `ProbeConfig`; None picks `ProbeConfig.auto(n_pairs)` at fit time.
        quiet: no progress bar.
        **overrides: `ProbeConfig` fields that replace those of ``config``.

    Fitted attributes: ``config_`` (the config used), ``model_`` (the
    `AlignmentModel`, on ``device_``), ``history_`` (one dict per epoch:
    ``epoch``, ``train_loss``, ``val_loss``, ``lr``, ``seconds``, ``logit_scale``,
    ``logit_bias``), ``initial_val_loss_``, ``best_epoch_`` (0: the initial
    weights), ``best_val_loss_``, ``stopped_early_``, ``train_index_`` /
    ``val_index_`` (sorted rows of ``image_emb``; for row-paired data also of
    ``text_emb``).

    Validation losses are comparable within a run; with the ``n2`` sigmoid
    loss their value depends on the batch size, so across runs compare
    retrieval or zero-shot scores instead.
    """

    def __init__(self, config: ProbeConfig | None = None, *, quiet: bool = False, **overrides):
        if config is not None and not isinstance(config, ProbeConfig):
            raise ValidationError(f"config must be a ProbeConfig or None, got {type(config).__name__}")
        if config is not None and overrides:
            config = config.replace(**overrides)
        elif overrides:
            ProbeConfig(**overrides)  # fail now on a bad override, not at fit time
        self.config = config
        self.quiet = quiet
        self.overrides = overrides

    def __repr__(self) -> str:
        fitted = "fitted" if hasattr(self, "model_") else "not fitted"
        return f"AlignmentProbe({self.config!r}, {fitted})"

    # ---- fit

    def fit(self, image_emb, text_emb, extra_text_emb=None, caption_image_index=None) -> "AlignmentProbe":
        """Fit the heads.

        Args:
            image_emb: ``(N, d_img)`` image embeddings (array, memmap or tensor).
            text_emb: ``(N, d_txt)`` caption embeddings, row ``i`` captioning
                image ``i``; or ``(M, d_txt)`` with ``caption_image_index``.
            extra_text_emb: more positive captions per image (SAIL
                multi-positive): ``(N, d_txt)``, ``(K, N, d_txt)`` or a list of
                ``(N, d_txt)``.
            caption_image_index: ``(M,)`` ints, the image row of each caption,
                for datasets with several captions per image (COCO). Batches
                are drawn over captions; an image captioned twice in a batch
                appears once, with both captions as its positives.

        Returns self.
        """
        n_pairs = len(caption_image_index) if caption_image_index is not None else len(text_emb)
        config = self.config if self.config is not None else ProbeConfig.auto(n_pairs, **self.overrides)
        device = resolve_device(config.device)
        images = _Rows("image_emb", image_emb, device, config.preload_bytes)
        texts = _Rows("text_emb", text_emb, device, config.preload_bytes)
        extras = _extra_sources(extra_text_emb, images.n, texts.dim, device, config.preload_bytes)
        caption_image = self._check_caption_index(caption_image_index, images.n, texts.n)

        train_images, val_images = self._split(images.n, config)
        train_pairs = self._pairs_of(train_images, caption_image)
        val_pairs = self._pairs_of(val_images, caption_image)
        if len(train_pairs) < 2:
            raise ValidationError(f"need at least 2 training pairs after holding out val_fraction={config.val_fraction}, got {len(train_pairs)}")

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = AlignmentModel(
                images.dim, texts.dim, config.out_dim, config.image_head, config.text_head,
                config.width, config.logit_scale_init, config.logit_bias_init,
            )
        model.to(device)
        self.config_, self.device_, self.model_ = config, device, model
        self._images, self._texts, self._extras, self._caption_image = images, texts, extras, caption_image
        try:
            self._train(train_pairs, val_pairs)
        except BaseException:
            # an interrupted fit must not leave a probe that looks fitted
            for name in ("config_", "device_", "model_", "history_"):
                self.__dict__.pop(name, None)
            raise
        finally:
            del self._images, self._texts, self._extras, self._caption_image
        self.train_index_, self.val_index_ = train_images, val_images
        self.n_features_image_, self.n_features_text_ = images.dim, texts.dim
        return self

    @staticmethod
    def _check_caption_index(index, n_images: int, n_texts: int) -> np.ndarray | None:
        if index is None:
            if n_texts != n_images:
                raise ValidationError(
                    f"image_emb has {n_images} rows and text_emb {n_texts}; row-paired data needs equal "
                    f"rows, or pass caption_image_index (the image row of each caption)"
                )
            return None
        index = index.cpu().numpy() if torch.is_tensor(index) else np.asarray(index)
        if index.shape != (n_texts,) or not np.issubdtype(index.dtype, np.integer):
            raise ValidationError(f"caption_image_index must be {n_texts} ints (one per text_emb row), got {index.dtype} {index.shape}")
        if index.min() < 0 or index.max() >= n_images:
            raise ValidationError(f"caption_image_index values must lie in [0, {n_images - 1}]")
        return index.astype(np.int64)

    @staticmethod
    def _split(n_images: int, config: ProbeConfig) -> tuple[np.ndarray, np.ndarray]:
        n_val = int(round(config.val_fraction * n_images))
        if config.val_fraction > 0:
            n_val = max(n_val, 1)
        perm = np.random.default_rng([config.seed, 0]).permutation(n_images)
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])

    @staticmethod
    def _pairs_of(image_rows: np.ndarray, caption_image: np.ndarray | None) -> np.ndarray:
        if caption_image is None:
            return image_rows
        return np.flatnonzero(np.isin(caption_image, image_rows))

    def _optimizer(self) -> torch.optim.Optimizer:
        config, model = self.config_, self.model_
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if config.decay_norm_bias_logit:
            groups = [{"params": [p for _, p in named], "weight_decay": config.weight_decay}]
        else:
            # Decaying LayerNorm gains, biases or the logit scale/bias pulls them
            # towards 0, which is not a prior anyone wants for them.
            groups = [
                {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": config.weight_decay},
                {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
            ]
        if config.optimizer == "lion":
            from lion_pytorch import Lion  # imported lazily: only Lion users pay for it

            return Lion(groups, lr=config.lr, betas=config.betas)
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)

    def _batch_loss(self, pairs: np.ndarray) -> torch.Tensor:
        """Loss of one batch of pair ids (sorted, so memmapped reads are sequential)."""
        config, model = self.config_, self.model_
        if self._caption_image is None:
            image_rows, text_positive = pairs, np.arange(len(pairs))
        else:
            image_rows, text_positive = np.unique(self._caption_image[pairs], return_inverse=True)
        blocks = [self._texts.take(pairs)] + [src.take(image_rows) for src in self._extras]
        positives = [text_positive] + [np.arange(len(image_rows))] * len(self._extras)
        with torch.autocast(self.device_.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            image_out = model.image_head(self._images.take(image_rows))
            text_out = model.text_head(torch.cat(blocks) if len(blocks) > 1 else blocks[0])
        scale = model.logit_scale.exp()
        positive_index = torch.from_numpy(np.concatenate(positives)).to(self.device_)
        if config.loss == "sigmoid":
            return pairwise_sigmoid_loss(
                image_out, text_out, positive_index, scale, model.logit_bias,
                config.normalization, config.chunk_size,
            )
        sizes = [len(b) for b in blocks]
        losses = [
            pairwise_infonce_loss(image_out, out, index, scale, config.chunk_size)
            for out, index in zip(text_out.split(sizes), positive_index.split(sizes))
        ]
        return torch.stack(losses).mean()

    def _batches(self, pairs: np.ndarray, rng: np.random.Generator | None) -> list[np.ndarray]:
        # Equal-sized batches (differing by at most one) rather than a ragged
        # last batch: the sigmoid loss of a tiny batch is a noisy, off-scale step.
        n_batches = max(1, math.ceil(len(pairs) / self.config_.batch_size))
        order = rng.permutation(pairs) if rng is not None else pairs
        return [np.sort(b) for b in np.array_split(order, n_batches)]

    @torch.no_grad()
    def _evaluate(self, pairs: np.ndarray) -> float | None:
        if len(pairs) == 0:
            return None
        total = 0.0
        for batch in self._batches(pairs, None):
            total += float(self._batch_loss(batch)) * len(batch)
        return total / len(pairs)

    def _train(self, train_pairs: np.ndarray, val_pairs: np.ndarray) -> None:
        config, model = self.config_, self.model_
        optimizer = self._optimizer()
        steps_per_epoch = max(1, math.ceil(len(train_pairs) / config.batch_size))
        total_steps = steps_per_epoch * config.epochs
        warmup = warmup_steps_for(config.warmup, total_steps)
        shuffle_rng = np.random.default_rng([config.seed, 1])
        params = [p for p in model.parameters() if p.requires_grad]

        self.history_: list[dict[str, Any]] = []
        self.initial_val_loss_ = self._evaluate(val_pairs)
        best_loss, best_epoch, best_state = self.initial_val_loss_, 0, _cpu_state(model)
        bad_epochs, step = 0, 0
        self.stopped_early_ = False
        bar = tqdm(total=total_steps, desc="alignment probe", unit="step", disable=self.quiet, leave=False)
        try:
            for epoch in range(1, config.epochs + 1):
                start, loss_sum, seen, lr = time.perf_counter(), 0.0, 0, config.lr
                model.train()
                for batch in self._batches(train_pairs, shuffle_rng):
                    lr = lr_at(step, total_steps, config.lr, warmup, config.schedule, config.min_lr)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    loss = self._batch_loss(batch)
                    if not torch.isfinite(loss):
                        raise AlignprobeError(
                            f"the probe's loss became {float(loss)} at epoch {epoch}, step {step}; "
                            f"lower lr (now {lr:g}) or set grad_clip"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                    optimizer.step()
                    model.clamp_()
                    loss_sum += loss.item() * len(batch)
                    seen += len(batch)
                    step += 1
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{loss_sum / max(1, seen):.4g}", refresh=False)
                model.eval()
                val_loss = self._evaluate(val_pairs)
                self.history_.append({
                    "epoch": epoch,
                    "train_loss": loss_sum / len(train_pairs),
                    "val_loss": val_loss,
                    "lr": lr,
                    "seconds": time.perf_counter() - start,
                    "logit_scale": model.logit_scale.detach().exp().item(),
                    "logit_bias": model.logit_bias.detach().item(),
                })
                if val_loss is None:
                    continue
                bar.set_postfix(epoch=epoch, val_loss=f"{val_loss:.4g}", refresh=False)
                if val_loss < best_loss - config.min_delta:
                    best_loss, best_epoch, best_state, bad_epochs = val_loss, epoch, _cpu_state(model), 0
                else:
                    bad_epochs += 1
                    if config.patience is not None and bad_epochs >= config.patience:
                        self.stopped_early_ = True
                        break
        finally:
            bar.close()
        if self.initial_val_loss_ is None:
            self.best_epoch_, self.best_val_loss_ = len(self.history_), None
        else:
            model.load_state_dict(best_state)
            self.best_epoch_, self.best_val_loss_ = best_epoch, best_loss
        model.eval()

    # ---- use

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this AlignmentProbe is not fitted yet; call fit(image_emb, text_emb) or AlignmentProbe.load(dir) first")

    def transform_image(self, x, batch_size: int | None = None):
        """``(N, d_img)`` -> L2-normalised ``(N, out_dim)`` fp32, same type as ``x`` (numpy or torch, CPU)."""
        return self._transform(x, "image", batch_size)

    def transform_text(self, x, batch_size: int | None = None):
        """``(M, d_txt)`` -> L2-normalised ``(M, out_dim)`` fp32, same type as ``x`` (numpy or torch, CPU)."""
        return self._transform(x, "text", batch_size)

    def _transform(self, x, side: str, batch_size: int | None):
        self._check_fitted()
        model, config = self.model_, self.config_
        head = model.image_head if side == "image" else model.text_head
        rows = _Rows(f"{side} embeddings", x, self.device_, preload_bytes=0)
        if rows.dim != head.in_dim:
            raise ValidationError(
                f"{side} embeddings have dimension {rows.dim} but the probe was fitted on {head.in_dim}; "
                f"use embeddings from the same {side} encoder and pooling"
            )
        batch_size = batch_size or config.eval_batch_size
        out = torch.empty(rows.n, head.out_dim, dtype=torch.float32)
        model.eval()
        with torch.inference_mode():
            for start in range(0, rows.n, batch_size):
                block = rows.take(slice(start, start + batch_size))
                with torch.autocast(self.device_.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                    z = head(block)
                # normalised in fp32: a bf16 norm would perturb cosine scores
                out[start : start + block.shape[0]] = torch.nn.functional.normalize(z.float(), dim=-1).cpu()
        return out if torch.is_tensor(x) else out.numpy()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fitted model's weights (CPU copies)."""
        self._check_fitted()
        return _cpu_state(self.model_)

    # ---- persistence

    def save(self, directory, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``model.safetensors``, ``split.safetensors`` and ``probe.json`` into ``directory``.

        Each file is written atomically; ``probe.json`` is written last, so a
        directory with it is complete. ``metadata`` (JSON-serialisable: encoder
        ids, dataset fingerprint, ...) is stored alongside for the caller's
        cache checks and returned by `load` as ``metadata_``.
        """
        from safetensors.torch import save_file

        self._check_fitted()
        directory = Path(directory)
        with atomic_path(directory / MODEL_FILE) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp))
        with atomic_path(directory / SPLIT_FILE) as tmp:
            save_file({"train_index": torch.from_numpy(self.train_index_.astype(np.int64)),
                       "val_index": torch.from_numpy(self.val_index_.astype(np.int64))}, str(tmp))
        write_json_atomic(directory / META_FILE, {
            "format": CHECKPOINT_FORMAT,
            "alignprobe_version": __version__,
            "config": self.config_.to_dict(),
            "model_config": self.model_.config(),
            "history": self.history_,
            "initial_val_loss": self.initial_val_loss_,
            "best_epoch": self.best_epoch_,
            "best_val_loss": self.best_val_loss_,
            "stopped_early": self.stopped_early_,
            "metadata": metadata or {},
        })
        return directory

    @classmethod
    def load(cls, directory, device: str | None = None, quiet: bool = True) -> "AlignmentProbe":
        """A fitted probe from a directory written by `save`; ``device`` overrides the saved one."""
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise ValidationError(f"{directory} holds no {META_FILE}; it is not a saved AlignmentProbe (or saving was interrupted)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValidationError(f"{meta_path} has format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
        config = ProbeConfig.from_dict(meta["config"])
        if device is not None:
            config = config.replace(device=device)
        probe = cls(config, quiet=quiet)
        probe.config_, probe.device_ = config, resolve_device(config.device)
        model = AlignmentModel.from_config(meta["model_config"])
        model.load_state_dict(load_file(str(directory / MODEL_FILE)))
        probe.model_ = model.to(probe.device_).eval()
        split = load_file(str(directory / SPLIT_FILE))
        probe.train_index_, probe.val_index_ = split["train_index"].numpy(), split["val_index"].numpy()
        probe.history_ = meta["history"]
        probe.initial_val_loss_ = meta["initial_val_loss"]
        probe.best_epoch_, probe.best_val_loss_ = meta["best_epoch"], meta["best_val_loss"]
        probe.stopped_early_ = meta["stopped_early"]
        probe.n_features_image_, probe.n_features_text_ = model.image_head.in_dim, model.text_head.in_dim
        probe.metadata_ = meta["metadata"]
        return probe


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
