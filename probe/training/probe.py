"""`AlignmentProbe`: the scikit-learn-style face of the training engine, as `run` and `sweep` use it.

SAIL (Zhang et al., CVPR 2025) measures how well a frozen vision encoder and a
frozen text encoder align by fitting a linear head on each side with the
sigmoid loss and scoring retrieval / zero-shot through them. The fitting is
the one `Trainer` of `engine.py` (the reference trains probe and SAIL heads
with one program too); this class gives it the estimator interface:

    probe = AlignmentProbe().fit(img_emb, txt_emb)             # the sail-probe recipe, adapted below 100k pairs
    probe = AlignmentProbe(TrainConfig.preset("sail-probe"))   # the exact reference recipe at any size
    probe = AlignmentProbe(epochs=10, lr=1e-4)                  # TrainConfig fields as parameters
    img_z, txt_z = probe.transform_image(img_emb), probe.transform_text(txt_emb)

Hyperparameters live only in ``__init__``, each named (`get_params` / `set_params`,
`sklearn.base.clone`), `fit` returns self, learned state ends in ``_``. Inputs may be arrays,
``np.memmap`` or `CachedEmbeddings` entries: batches are read from them, the
whole matrix is never copied to fp32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from safetensors.torch import save_file
from sklearn.base import BaseEstimator

from alignprobe._version import __version__
from alignprobe.backbones.devices import resolve_device
from alignprobe.errors import NotFittedError, ValidationError
from alignprobe.io import atomic_path, write_json_atomic

from alignprobe.probe.training.checkpoint import load_weights
from alignprobe.probe.training.config import TrainConfig, resolve_recipe
from alignprobe.probe.training.engine import Trainer
from alignprobe.probe.training.evaluation import project
from alignprobe.probe.training.heads import AlignmentModel
from alignprobe.probe.training.model_file import ALIGNED_FILE, ALIGNED_FORMAT, MODEL_FILE, inside, read_model_file
from alignprobe.probe.training.streaming import as_store

#: The default of every training hyperparameter of `AlignmentProbe`: take the value from ``config``
#: or the preset. A string, as scikit-learn wants simple defaults (and `clone` keeps them); None
#: cannot serve, since it is a real value of several fields (``chunk_size``, ``patience``, ...), and
#: no field accepts "recipe" as a value.
RECIPE = "recipe"
#: The estimator's own parameters; every other parameter is a `TrainConfig` field of the same name.
_OWN_PARAMS = ("config", "preset", "quiet", "out_dir", "resume")


def _is_recipe(value) -> bool:
    return isinstance(value, str) and value == RECIPE


class AlignmentProbe(BaseEstimator):
    """Fit alignment heads on frozen image/text embedding pairs (SAIL's alignment probe).

    A scikit-learn estimator: every parameter is named in ``__init__`` and stored
    unchanged (checked at `fit`), so `get_params` / `set_params` / `sklearn.base.clone`
    work, e.g. ``clone(AlignmentProbe(epochs=1))``.

    Args:
        config: a resolved `TrainConfig`, used as it is; None: ``preset``
            resolved for the data at fit time (`resolve_recipe`: the
            small-data adaptation below 100k pairs, listed in ``recipe_changes_``).
        preset: the recipe ``config=None`` starts from (``"sail-probe"`` or ``"sail"``).
        quiet: no progress bar.
        out_dir: checkpoint directory; with it a killed fit resumes (``resume=True``)
            from its last checkpoint to the same weights.
        resume: continue the run in ``out_dir`` (a fresh start when there is none).
        out_dim ... prefetch: the `TrainConfig` fields of the same names (see its docstring);
            ``"recipe"`` (`RECIPE`, the default) takes the value from ``config`` or the preset;
            any other value is set explicitly and wins over both.

    Fitted attributes: ``config_``, ``recipe_changes_``, ``model_``,
    ``device_``, ``history_`` (one dict per epoch), ``initial_val_loss_``, ``best_epoch_``,
    ``best_val_loss_`` (None without a held-out split), ``stopped_early_``,
    ``train_index_`` / ``val_index_`` (image rows), ``train_captions_``, ``norm_bias_centred_``
    (side -> whether its LayerNorm bias started centred), ``n_features_image_`` /
    ``n_features_text_``, ``trainer_``.
    """

    # One parameter per TrainConfig field (tests/test_probe_sklearn.py checks that they match).
    def __init__(self, config: TrainConfig | None = None, *, preset: str = "sail-probe", quiet: bool = False,
                 out_dir: str | Path | None = None, resume: bool = False,
                 out_dim=RECIPE, image_head=RECIPE, text_head=RECIPE, width=RECIPE, logit_scale_init=RECIPE,
                 logit_bias_init=RECIPE, loss=RECIPE, normalization=RECIPE, chunk_size=RECIPE, positives=RECIPE,
                 caption_sampling=RECIPE, optimizer=RECIPE, lr=RECIPE, weight_decay=RECIPE, betas=RECIPE,
                 eps=RECIPE, decay_norm_bias_logit=RECIPE, norm_bias_init=RECIPE, batch_size=RECIPE,
                 micro_batch=RECIPE, epochs=RECIPE,
                 drop_last=RECIPE, warmup_fraction=RECIPE, schedule=RECIPE, min_lr=RECIPE, grad_clip=RECIPE,
                 val_fraction=RECIPE, val_max_images=RECIPE, select_by=RECIPE, patience=RECIPE, min_delta=RECIPE,
                 min_rel_delta=RECIPE, eval_every=RECIPE, checkpoint_every=RECIPE, checkpoint_seconds=RECIPE,
                 log_every=RECIPE, log_to=RECIPE, seed=RECIPE, device=RECIPE, precision=RECIPE,
                 eval_batch_size=RECIPE, prefetch=RECIPE):
        # scikit-learn's rule: store the parameters as given; `fit` validates them.
        self.config, self.preset, self.quiet, self.out_dir, self.resume = config, preset, quiet, out_dir, resume
        self.out_dim, self.image_head, self.text_head, self.width = out_dim, image_head, text_head, width
        self.logit_scale_init, self.logit_bias_init, self.loss = logit_scale_init, logit_bias_init, loss
        self.normalization, self.chunk_size, self.positives = normalization, chunk_size, positives
        self.caption_sampling, self.optimizer = caption_sampling, optimizer
        self.lr, self.weight_decay = lr, weight_decay
        self.betas, self.eps, self.decay_norm_bias_logit = betas, eps, decay_norm_bias_logit
        self.norm_bias_init = norm_bias_init
        self.batch_size, self.micro_batch, self.epochs, self.drop_last = batch_size, micro_batch, epochs, drop_last
        self.warmup_fraction, self.schedule, self.min_lr, self.grad_clip = warmup_fraction, schedule, min_lr, grad_clip
        self.val_fraction, self.val_max_images, self.select_by = val_fraction, val_max_images, select_by
        self.patience, self.min_delta, self.min_rel_delta = patience, min_delta, min_rel_delta
        self.eval_every, self.checkpoint_every = eval_every, checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.log_every, self.log_to, self.seed, self.device = log_every, log_to, seed, device
        self.precision, self.eval_batch_size, self.prefetch = precision, eval_batch_size, prefetch

    def set_params(self, **params) -> "AlignmentProbe":
        unknown = sorted(set(params) - set(self._get_param_names()))
        if unknown:  # scikit-learn raises a bare ValueError; this says what the names are
            raise ValidationError(f"unknown AlignmentProbe parameter(s) {unknown}; known: {list(_OWN_PARAMS)} "
                                  f"and the TrainConfig fields")
        return super().set_params(**params)

    def training_options(self) -> dict[str, Any]:
        """The `TrainConfig` fields set explicitly (every parameter not left at `RECIPE`)."""
        return {name: getattr(self, name) for name in TrainConfig.__dataclass_fields__
                if not _is_recipe(getattr(self, name))}

    def _resolve_config(self, n_usable: int) -> tuple[TrainConfig, list[dict[str, Any]]]:
        if self.config is not None and not isinstance(self.config, TrainConfig):
            raise ValidationError(f"config must be a TrainConfig or None, got {type(self.config).__name__}")
        if self.config is not None:
            return self.config.replace(**self.training_options()), []
        return resolve_recipe(self.preset, n_usable, self.training_options())

    # ---- fit
    def fit(self, image_emb, text_emb, extra_text_emb=None, caption_image_index=None, *,
            image_valid=None, zero_shot=None, retrieval=None) -> "AlignmentProbe":
        """Fit the heads.

        Args:
            image_emb: ``(N, d_img)`` image embeddings (array, memmap, tensor or cache entry).
            text_emb: ``(N, d_txt)`` captions row-paired with the images, or
                ``(M, d_txt)`` with ``caption_image_index``.
            extra_text_emb: more captions row-paired with the images (SAIL's
                extra captions): ``(N, d_txt)``, ``(K, N, d_txt)`` or a list.
            caption_image_index: ``(M,)`` image row of each caption (COCO's 5
                a picture; ragged counts are fine: every caption is a positive).
            image_valid: ``(N,)`` bool, False for images that failed to encode.
            zero_shot, retrieval: evaluation sets scored during and after training.

        Returns self.
        """
        n_images = int(image_emb.shape[0])
        counts = np.ones(n_images, dtype=np.int64)
        if caption_image_index is not None:
            index = caption_image_index.cpu().numpy() if torch.is_tensor(caption_image_index) \
                else np.asarray(caption_image_index)
            if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
                raise ValidationError(f"caption_image_index must be a 1-D int array (one image row per caption), "
                                      f"got {index.dtype} {index.shape}")
            if len(index) and (index.min() < 0 or index.max() >= n_images):
                raise ValidationError(f"caption_image_index values must lie in [0, {n_images - 1}]")
            counts = np.bincount(index, minlength=n_images)
        valid = image_valid if image_valid is not None else getattr(image_emb, "valid", None)
        valid = np.ones(n_images, bool) if valid is None else np.asarray(valid, bool)
        n_usable = int(((counts > 0) & valid).sum()) if valid.shape == (n_images,) else n_images
        config, changes = self._resolve_config(n_usable)
        trainer = Trainer(config, self.out_dir, quiet=self.quiet, overwrite=not self.resume)
        trainer.fit(image_emb, text_emb, caption_image_index, extra_text_emb=extra_text_emb,
                    image_valid=image_valid, zero_shot=zero_shot, retrieval=retrieval, resume=self.resume)
        self.trainer_, self.config_, self.recipe_changes_ = trainer, config, changes
        self.model_, self.device_ = trainer.model_, trainer.device_
        self.history_, self.initial_val_loss_ = trainer.history_, trainer.initial_val_loss_
        self.best_epoch_, self.stopped_early_ = trainer.best_epoch_, trainer.stopped_early_
        self.best_val_loss_ = trainer.best_score_ if config.select_by == "val_loss" else None
        self.train_index_, self.val_index_ = trainer.train_index_, trainer.val_index_
        self.train_captions_, self.norm_bias_centred_ = trainer.train_captions_, trainer.centred_sides_
        self.n_features_image_ = self.model_.image_head.in_dim
        self.n_features_text_ = self.model_.text_head.in_dim
        return self

    # ---- use
    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this AlignmentProbe is not fitted yet; call fit(image_emb, text_emb) or "
                                 "AlignmentProbe.load(dir) first")

    def transform_image(self, x, batch_size: int | None = None):
        """``(N, d_img)`` -> L2-normalised ``(N, out_dim)`` fp32, same type as ``x`` (numpy or torch, CPU)."""
        return self._transform(x, "image", batch_size)

    def transform_text(self, x, batch_size: int | None = None):
        """``(M, d_txt)`` -> L2-normalised ``(M, out_dim)`` fp32, same type as ``x`` (numpy or torch, CPU)."""
        return self._transform(x, "text", batch_size)

    def _transform(self, x, side: str, batch_size: int | None):
        self._check_fitted()
        head = self.model_.image_head if side == "image" else self.model_.text_head
        dim = int(x.shape[1]) if getattr(x, "ndim", 2) == 2 else None
        if dim != head.in_dim:
            raise ValidationError(f"{side} embeddings have shape {tuple(x.shape)} but the probe was fitted on "
                                  f"dimension {head.in_dim}; use embeddings from the same {side} encoder and pooling")
        as_store(f"{side} embeddings", x)  # validates the dtype
        out = project(head, x, self.device_, batch_size or self.config_.eval_batch_size, self.config_.precision)
        return torch.from_numpy(out) if torch.is_tensor(x) else out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fitted model's weights (CPU copies)."""
        self._check_fitted()
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model_.state_dict().items()}

    # ---- persistence
    def save(self, directory, metadata: dict[str, Any] | None = None) -> Path:
        """Write the trained-model format SAIL runs write too: ``model.safetensors`` and
        ``aligned.json`` (last, so a directory with it is complete); `load_aligned` reads it.

        ``metadata``: what the probe was trained on; its ``"vision"`` / ``"text"`` encoder
        entries (each with a ``"request"``, an `EncoderRequest.to_dict()`) let `load_aligned`
        rebuild the encoders."""
        self._check_fitted()
        directory = Path(directory)
        with atomic_path(directory / MODEL_FILE) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(tmp))
        metadata = dict(metadata or {})
        write_json_atomic(directory / ALIGNED_FILE, {
            "format": ALIGNED_FORMAT, "kind": "probe", "alignprobe_version": __version__,
            "vision": metadata.pop("vision", None), "text": metadata.pop("text", None),
            "model_config": self.model_.config(), "train_config": self.config_.to_dict(),
            "weights": MODEL_FILE, "finished": True, "recipe_changes": self.recipe_changes_,
            "history": self.history_, "best_epoch": self.best_epoch_, "best_val_loss": self.best_val_loss_,
            "initial_val_loss": self.initial_val_loss_,
            "stopped_early": self.stopped_early_, "train_captions": self.train_captions_,
            "norm_bias_centred": self.norm_bias_centred_,
            "train_index": [int(i) for i in self.train_index_], "val_index": [int(i) for i in self.val_index_],
            "metadata": metadata,
        })
        return directory

    @classmethod
    def load(cls, directory, device: str | None = None, quiet: bool = True) -> "AlignmentProbe":
        """A fitted probe from a directory written by `save` (this format or the older
        ``probe.json``); ``device`` overrides the saved one."""
        meta, file = read_model_file(directory)
        if "train_index" not in meta:
            raise ValidationError(f"{file} is a SAIL training run, not a saved AlignmentProbe; load it with "
                                  f"alignprobe.load_aligned")
        config = TrainConfig.from_dict(meta.get("train_config") or meta["config"])  # "config": the old format
        if device is not None:
            config = config.replace(device=device)
        probe = cls(config, quiet=quiet)
        probe.config_, probe.device_ = config, resolve_device(config.device)
        model = AlignmentModel.from_config(meta["model_config"])
        weights = inside(file.parent, meta.get("weights", MODEL_FILE), f"{file}'s weights")
        try:
            model.load_state_dict(load_weights(weights))
        except RuntimeError as err:  # the tensors do not fit the heads the file describes
            raise ValidationError(f"the weights {weights} do not fit {file} ({err}); refit the probe") from None
        probe.model_ = model.to(probe.device_).eval()
        probe.recipe_changes_, probe.history_ = meta["recipe_changes"], meta["history"]
        probe.initial_val_loss_ = meta["initial_val_loss"]
        probe.best_epoch_, probe.best_val_loss_ = meta["best_epoch"], meta["best_val_loss"]
        probe.stopped_early_, probe.train_captions_ = meta["stopped_early"], meta["train_captions"]
        probe.norm_bias_centred_ = meta.get("norm_bias_centred", {})  # files before 2026-12-08: {}
        probe.train_index_ = np.asarray(meta["train_index"], dtype=np.int64)
        probe.val_index_ = np.asarray(meta["val_index"], dtype=np.int64)
        probe.n_features_image_, probe.n_features_text_ = model.image_head.in_dim, model.text_head.in_dim
        probe.metadata_ = {**meta.get("metadata", {}), **{k: meta[k] for k in ("vision", "text") if meta.get(k)}}
        return probe
