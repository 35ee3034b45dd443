"""`TrainConfig`: the one configuration of the alignment-training engine, and its named recipes.

The SAIL reference trains the alignment probe and the full SAIL heads with one
program (lezhang7/SAIL ``main.py``, switched by ``--linear-type``); so does
alignprobe. Two presets hold the reference's values:

* ``"sail-probe"`` -- ``scripts/alignment_probing.sh`` with ``train/params.py``
  defaults: linear heads into 2048-d, Lion (0.9, 0.99), lr 1e-5, wd 1e-7,
  batch 32,768, 100 epochs, warm-up over ``ceil(0.1 * steps)`` then cosine
  (``main.py``, ``train/scheduler.py``), logit scale 20 and bias -10, the
  sigmoid loss with the extra captions as extra positives, every pair trained
  on (no held-out split), the last partial batch of each epoch dropped
  (``data/__init__.py``: ``drop_last=is_train``).
* ``"sail"`` -- ``scripts/sail_train.sh``: star heads (w = 8) into 1024-d,
  wd 1e-4, otherwise the same.

Below `SMALL_DATA_PAIRS` pairs the recipe barely moves the heads (a few
thousand pairs make one step an epoch), so `resolve_recipe` applies the
measured small-data adaptation -- a visible deviation: each changed value is
returned as a ``recipe_changes`` entry that the pipelines print and record.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from alignprobe.backbones.devices import resolve_device
from alignprobe.errors import ValidationError

from alignprobe.probe.training.config_fields import ConfigDictMixin, is_int, is_real, require
from alignprobe.probe.training.heads import HEAD_KINDS
from alignprobe.probe.training.losses import NORMALIZATIONS
from alignprobe.probe.training.precision import native_bf16
from alignprobe.probe.training.schedules import SCHEDULES
from alignprobe.probe.training.streaming import SAMPLINGS

LOSSES = ("sigmoid", "infonce")
OPTIMIZERS = ("lion", "adamw")
PRECISIONS = ("fp32", "bf16", "fp16")
LOG_BACKENDS = ("tensorboard", "wandb")
LOWER_IS_BETTER = {"val_loss"}
#: Below this many usable pairs `resolve_recipe` adapts the recipe (unless the preset is forced).
SMALL_DATA_PAIRS = 100_000

#: Settings that change where or how fast a run goes, not what it computes. A
#: resumed run may change them, and they are left out of result reuse keys.
#: (``micro_batch`` changes the gradients only by float rounding.)
RUNTIME_FIELDS = ("device", "prefetch", "eval_batch_size", "log_every", "checkpoint_every", "checkpoint_seconds",
                  "log_to", "micro_batch")


@dataclass(frozen=True)
class TrainConfig(ConfigDictMixin):
    """Hyperparameters of alignment training. Defaults are the ``"sail-probe"`` recipe.

    Heads: ``out_dim``, ``image_head`` / ``text_head`` (``linear``, ``mlp``,
    ``star``, ``identity``), star ``width``, ``logit_scale_init`` (log space,
    log 20) and ``logit_bias_init`` (-10).

    Loss: ``loss`` (``sigmoid`` or ``infonce``), sigmoid ``normalization``
    (``n2``: mean over all logits, the reference; ``n``: sum / batch, SigLIP),
    ``chunk_size`` (tile of the exact memory-bounded loss; None: naive),
    ``positives`` (``"all"``: every caption of an image is a positive in each
    step -- the reference's extra-caption block generalised to ragged caption
    counts, equal to it when every image has two; an int k: k captions per
    image per step, drawn by ``caption_sampling``, repeated when an image has
    fewer).

    Input: ``norm_bias_init`` (``zeros``, the reference: ``model/sail_model.py``'s
    ``AlignmentLayer`` starts from ``nn.LayerNorm``'s zero bias; ``center``: each head's LayerNorm bias
    starts at minus the mean LayerNorm output over the training split -- `norm_init`, for
    features whose shared offset swamps their variation, such as mid-depth ViT blocks; ``auto``:
    ``center`` on a side only where that mean holds >= 90 % of the output's energy, else zeros).

    Optimisation: ``optimizer`` (``lion``, the reference's default, or
    ``adamw``), ``lr``, ``weight_decay``, ``betas``, ``eps`` (AdamW),
    ``decay_norm_bias_logit`` (False: decay only weight matrices),
    ``batch_size`` (global, images per step), ``micro_batch`` (two-pass
    GradCache step: ``"auto"``, None for one pass, or rows), ``epochs``,
    ``drop_last`` (True, the reference: an epoch is ``floor(n / batch)`` full
    batches and the remainder, a different one each epoch, waits for the next
    shuffle; False: every image each epoch, in near-equal batches; either way
    a training split smaller than one batch is one batch of all its images),
    ``warmup_fraction`` (warm-up over ``ceil(fraction * steps)`` steps),
    ``schedule``, ``min_lr``, ``grad_clip``.

    Selection: ``val_fraction`` of the images held out (0: none, the
    reference), capped at ``val_max_images``; ``select_by`` (``val_loss`` or an
    evaluation metric of a *selection* set, never of a reported test set);
    ``patience`` / ``min_delta`` / ``min_rel_delta`` (early stopping; None:
    all epochs): training stops once ``patience`` epochs in a row have not
    improved on the best score by more than ``max(min_delta, min_rel_delta *
    |best|)``; the weights kept are those of the best epoch, however small its
    lead.

    Runtime: ``eval_every`` (epochs between evaluations; the reference
    evaluates every 2), ``checkpoint_every`` (steps; None: epoch ends),
    ``checkpoint_seconds`` (epoch-end checkpoints at most this often),
    ``log_every``, ``log_to`` (None, ``tensorboard`` or ``wandb``), ``seed``,
    ``device``, ``precision`` (autocast of the heads and half-precision products in the sigmoid loss; the
    loss's sums and nonlinearities run in fp32),
    ``eval_batch_size``, ``prefetch``.
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
    positives: int | str = "all"
    caption_sampling: str = "random"
    optimizer: str = "lion"
    lr: float = 1e-5
    weight_decay: float = 1e-7
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    decay_norm_bias_logit: bool = False
    norm_bias_init: str = "zeros"
    batch_size: int = 32768
    micro_batch: int | str | None = "auto"
    epochs: int = 100
    drop_last: bool = True
    warmup_fraction: float = 0.1
    schedule: str = "cosine"
    min_lr: float = 0.0
    grad_clip: float | None = None
    val_fraction: float = 0.0
    val_max_images: int | None = 100_000
    select_by: str = "val_loss"
    patience: int | None = None
    min_delta: float = 0.0
    min_rel_delta: float = 0.0
    eval_every: int = 2
    checkpoint_every: int | None = 1000
    checkpoint_seconds: float = 120.0
    log_every: int = 1
    log_to: str | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    eval_batch_size: int = 8192
    prefetch: bool = True

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        choices = {"image_head": HEAD_KINDS, "text_head": HEAD_KINDS, "loss": LOSSES,
                   "normalization": NORMALIZATIONS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
                   "precision": PRECISIONS, "caption_sampling": SAMPLINGS,
                   "norm_bias_init": NORM_BIAS_INITS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValidationError(f"TrainConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        positive_int = lambda v: is_int(v) and v > 0  # noqa: E731
        optional_int = lambda v: v is None or (is_int(v) and v > 0)  # noqa: E731
        for name in ("out_dim", "width", "batch_size", "epochs", "eval_batch_size", "log_every"):
            _check(name, getattr(self, name), positive_int, "a positive int")
        for name in ("chunk_size", "patience", "checkpoint_every", "val_max_images"):
            _check(name, getattr(self, name), optional_int, "None or a positive int")
        _check("positives", self.positives, lambda v: v == "all" or positive_int(v), "'all' or a positive int")
        _check("micro_batch", self.micro_batch, lambda v: v == "auto" or optional_int(v),
               "'auto', None or a positive int")
        _check("seed", self.seed, lambda v: is_int(v) and v >= 0, "a non-negative int")
        _check("eval_every", self.eval_every, lambda v: is_int(v) and v >= 0, "an int >= 0 (0: only at the end)")
        for name in ("lr", "weight_decay", "eps", "min_lr", "min_delta", "min_rel_delta", "checkpoint_seconds"):
            _check(name, getattr(self, name), lambda v: is_real(v) and v >= 0, "a finite float >= 0")
        _check("lr", self.lr, lambda v: v > 0, "> 0")
        _check("warmup_fraction", self.warmup_fraction, lambda v: is_real(v) and 0 <= v <= 1, "a float in [0, 1]")
        _check("val_fraction", self.val_fraction, lambda v: is_real(v) and 0 <= v < 1, "a float in [0, 1)")
        _check("grad_clip", self.grad_clip, lambda v: v is None or (is_real(v) and v > 0), "None or a float > 0")
        _check("betas", self.betas, lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two floats in [0, 1)")
        _check("select_by", self.select_by, lambda v: isinstance(v, str) and v, "'val_loss' or a metric name")
        _check("log_to", self.log_to, lambda v: v is None or v in LOG_BACKENDS, f"None or one of {LOG_BACKENDS}")
        _check("min_rel_delta", self.min_rel_delta, lambda v: v < 1, "< 1 (a fraction of the best score)")
        for name in ("prefetch", "decay_norm_bias_logit", "drop_last"):
            _check(name, getattr(self, name), lambda v: isinstance(v, bool), "True or False")
        if not isinstance(self.device, str) or not self.device:
            raise ValidationError(f"TrainConfig.device must be a device string such as 'auto', 'cpu', 'cuda:0', "
                                  f"got {self.device!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "TrainConfig":
        """The reference recipe ``name`` (``"sail-probe"`` or ``"sail"``), with ``overrides`` applied."""
        if name not in PRESETS:
            raise ValidationError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def result_dict(self) -> dict[str, Any]:
        """The fields that change what training computes (`RUNTIME_FIELDS` left out): the reuse key."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}


def _check(name: str, value, ok, what: str) -> None:
    require("TrainConfig", name, value, ok, what)


_SAIL_PROBE = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
#: The reference recipes (see the module docstring for the files they follow).
PRESETS: dict[str, dict[str, Any]] = {
    "sail-probe": dict(_SAIL_PROBE),
    "sail": {**_SAIL_PROBE, "out_dim": 1024, "image_head": "star", "text_head": "star", "width": 8,
             "weight_decay": 1e-4},
}


#: How each head's input LayerNorm bias starts (`norm_init`): the reference's zeros, or centred.
NORM_BIAS_INITS = ("zeros", "center", "auto")

#: The small-data recipe's training batch cap, and the Lion learning rate of heads other than linear
#: ones (`small_data_changes`).
SMALL_DATA_BATCH, SMALL_DATA_LR = 256, 3e-4
#: The small-data linear probe's optimizer, learning rate and epoch budget (`small_data_changes`).
PROBE_OPTIMIZER, PROBE_LR, PROBE_EPOCHS = "adamw", 1e-2, 30


def small_data_changes(n_pairs: int, *, bf16: bool = False, linear: bool = True,
                       linear_heads: bool | None = None) -> dict[str, Any]:
    """The small-data adaptation for ``n_pairs`` usable pairs (< `SMALL_DATA_PAIRS`).

    Every head: batch ``min(n, 256)``, a 10 % held-out split of the *training pairs* (never a
    reported test set) and early stopping on its loss: stop once 10 epochs in a row have not
    lowered the best held-out loss by more than 1 % of it; the heads' LayerNorm bias starts centred
    on the training split (linear heads; other heads ``"auto"``, below). Linear heads (``linear``:
    the alignment probe, what `run` and `sweep` train) train with AdamW -- the reference's other
    optimizer (``main.py``: any ``--optimizer`` but ``lion``) -- at lr 1e-2 for 30 epochs (warm-up
    over the first 3, cosine to 0 at 30); other
    heads (star, MLP: `train` on a small set), and linear heads for which Lion was asked explicitly,
    keep Lion at lr 3e-4 for the reference's 100 epochs.
    With ``bf16`` (the device multiplies bf16 in hardware: `precision.native_bf16`) the heads also
    train under bf16 autocast, as the reference trains under mixed precision (``train/params.py``
    ``--precision amp``), and the loss's matrix products run in bf16 as inside the reference's
    ``autocast()`` (``train/train.py``); its sums and nonlinearities stay fp32.

    Why these values (benchmarks/README.md, ``probe_recipe.py``: re-measured on the built-in
    ``shapes`` pairs with real encoders against a ridge-regression baseline;
    ``probe_small_data.py`` on planted structure): with the recipe's lr 1e-5 and batch 32,768 a
    few thousand pairs make one step an epoch and the heads barely move. Lion moves every weight by
    the full lr each step, so the lr that works depends on the number of steps: at lr 1e-3 (the
    adaptation until 2026-12-07, with batch 1,024) the held-out loss rose again as soon as the
    warm-up ended; at 3e-4 and batch 256 (~8 steps an epoch on 2,000 pairs) it falls steadily, but
    slowly: the linear probe needed all ~100 epochs (effnet-lite0 x MiniLM: 93 epochs, held-out
    loss 0.0063), and no Lion lr from 3e-4 to 2e-3 did better within 30 or 50 epochs. AdamW scales
    each weight's step by its gradient's running size: at lr 1e-2 it reached a lower held-out loss
    in 30 epochs than Lion in 93 (0.0056 on effnet-lite0, 0.0070 against 0.0080 on pixels), with
    R@10 and zero-shot at least Lion's on both (pixels' zero-shot 0.55 against 0.52), in a third of
    the time; 20 epochs were not enough (effnet-lite0 0.0083). On ``hog``, whose heads overfit within
    ~10 epochs either way, it kept the held-out loss within 3 % of Lion's. Weight decay (0.1 against
    the reference's 1e-7) changed nothing measurable. bf16 autocast gave the same held-out loss and
    R@k to 3 decimals, 1.3-1.5x faster on a CPU with AVX512-BF16.

    The stopping rule is relative because under the cosine schedule the loss
    keeps creeping down until the lr reaches 0, so ``patience`` alone never
    fires; a 1 % gain over 10 epochs is where the remaining epochs cost more
    than they can change the scores.

    The heads' LayerNorm bias starts centred on the training split (``norm_bias_init="center"``,
    `norm_init`): DINOv2-S block 4 x MiniLM on ``shapes`` went from I2T R@10 0.08 (stopped at
    epoch 18; 0.20 with all 100 epochs) to 1.00, where ridge gets 0.997; the features that already
    worked (blocks 8 / 12, effnet-lite0) kept R@10 >= 0.99 and gained R@1 (``probe_diagnose_layer.py``).
    That was measured on linear heads (``linear_heads``). Other heads start ``"auto"``: centred only on
    a side whose training mean holds >= 90 % of the LayerNorm output's energy (`norm_init`); star heads
    centred where it held less matched or lost to the zeros start on the pooled features and lost far
    on inputs of another mean -- class prompts (EfficientNet-Lite0 zero-shot top-1 0.425 against 0.997)
    and patch tokens (segmentation mIoU 0.394 against 1.000) -- while DINOv2-S block 4 (98.9 %) needs it
    (benchmarks/README.md, "probe_diagnose_layer.py", 2026-12-08).

    The batch never exceeds the pairs: below 256 pairs it is all of them,
    and the engine trains a training split smaller than one batch as one
    batch of all its images (recorded in the run's notes), so even a few
    dozen pairs get a step every epoch.

    Every training pair is trained on in every epoch (``drop_last=False``: near-equal batches).
    The reference drops the last partial batch, which at its scale costs < 0.1 % of an epoch;
    with a few hundred pairs it would leave out a sizeable share of them each epoch, so the
    small-data recipe keeps them (a recorded change, like the others).
    """
    linear_heads = linear if linear_heads is None else linear_heads
    changes = dict(batch_size=max(2, min(SMALL_DATA_BATCH, int(n_pairs))), lr=SMALL_DATA_LR,
                   patience=10, min_rel_delta=0.01, val_fraction=0.1, drop_last=False,
                   norm_bias_init="center" if linear_heads else "auto")
    if linear:
        changes.update(optimizer=PROBE_OPTIMIZER, lr=PROBE_LR, epochs=PROBE_EPOCHS)
    if bf16:
        changes["precision"] = "bf16"
    return changes


def resolve_recipe(preset: str, n_pairs: int, explicit: Mapping[str, Any] | None = None, *,
                   exact: bool = False) -> tuple[TrainConfig, list[dict[str, Any]]]:
    """The config a run trains with, and every way it differs from the reference recipe.

    Args:
        preset: ``"sail-probe"`` or ``"sail"``.
        n_pairs: usable training pairs (images with an embedding and a caption).
        explicit: fields the user set (flags, API arguments); they win over everything.
        exact: True (``--preset`` given): the reference recipe at any size, no
            small-data adaptation.

    Returns ``(config, recipe_changes)``: one ``{"field", "reference", "used",
    "why"}`` dict per result-changing field that differs from the preset
    (runtime fields such as ``device`` are not changes of the recipe).
    """
    if preset not in PRESETS:
        raise ValidationError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    explicit = dict(explicit or {})
    unknown = sorted(set(explicit) - set(PRESETS[preset]))
    if unknown:
        raise ValidationError(f"unknown training option(s) {unknown}; known: {sorted(PRESETS[preset])}")
    reference = PRESETS[preset]
    values, why = dict(reference), {}
    if not exact and n_pairs < SMALL_DATA_PAIRS:
        device = resolve_device(explicit.get("device", reference["device"]))
        # The AdamW values were measured for linear heads; a user who picks Lion for them gets Lion's.
        linear_heads = all(explicit.get(f"{side}_head", reference[f"{side}_head"]) == "linear"
                           for side in ("image", "text"))
        linear = linear_heads and explicit.get("optimizer", PROBE_OPTIMIZER) == PROBE_OPTIMIZER
        for name, value in small_data_changes(n_pairs, bf16=native_bf16(device), linear=linear,
                                              linear_heads=linear_heads).items():
            if name not in explicit:
                values[name] = value
                why[name] = f"small data: {n_pairs:,} pairs < {SMALL_DATA_PAIRS:,}"
        if "precision" in why:
            why["precision"] += (f"; mixed precision as the reference's --precision amp, on a {device.type} "
                                 f"that multiplies bf16 natively")
    for name, value in explicit.items():
        values[name] = value
        why[name] = "set explicitly"
    config = TrainConfig(**values)
    resolved = config.to_dict()
    changes = []
    for name in why:
        if name in RUNTIME_FIELDS:
            continue
        ref = list(reference[name]) if isinstance(reference[name], tuple) else reference[name]
        if resolved[name] != ref:
            changes.append({"field": name, "reference": ref, "used": resolved[name], "why": why[name]})
    return config, changes


def describe_changes(changes: list[dict[str, Any]], preset: str) -> list[str]:
    """One printable line per recipe change."""
    return [f"recipe change ({preset}): {c['field']} = {c['used']!r} instead of the reference's "
            f"{c['reference']!r} ({c['why']})" for c in changes]
