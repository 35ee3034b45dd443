"""The training flags of `train`, `run` and `sweep`: one table of `TrainConfig` fields.

Each row names a `TrainConfig` field, its flag, its click type, its help and the commands that
take it; the options are generated from the table and their values map back to the fields by it,
so a new training setting is one row. A flag that is left out keeps the recipe's value (the
preset's, adapted on small data), because only the flags the user gave are passed on.

The choices are written out (not imported from the engine) so that `alignprobe --help` does not
import torch; `tests/test_cli_train_options.py` checks that they match the engine's and that every
row names a real field.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from alignprobe.cli_common import POSITIVE_FLOAT, POSITIVE_INT, given, renamed_option

TRAIN, PROBE = frozenset({"train"}), frozenset({"train", "run", "sweep"})
HEADS = click.Choice(["linear", "mlp", "star", "identity"])


class IntOr(click.ParamType):
    """A positive integer or one of a few words (``none`` -> None, ``auto``, ``all``)."""

    name = "int"

    def __init__(self, *words: str):
        self.words = words

    def get_metavar(self, param, ctx=None):
        return f"[N|{'|'.join(self.words)}]"

    def convert(self, value, param, ctx):
        text = str(value).strip().lower()
        if text in self.words:
            return None if text == "none" else text
        try:
            number = int(text)
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"{value!r} is not a positive integer or one of {', '.join(self.words)}", param, ctx)
        return number


@dataclass(frozen=True)
class TrainFlag:
    """One `TrainConfig` field as a flag: `field`, `flag`, click `type`, `help`, the `commands` that take it,
    and `old`: deprecated spellings still accepted for one release."""

    field: str
    flag: str
    type: Any
    help: str
    commands: frozenset = TRAIN
    old: tuple[str, ...] = ()
    is_flag: bool = False

    @property
    def dest(self) -> str:
        return f"train__{self.field}"  # a namespace of its own: no clash with the commands' other kwargs


TRAIN_FLAGS: tuple[TrainFlag, ...] = (
    TrainFlag("image_head", "--image-head", HEADS, "Vision-side head [--head's, else the preset's]."),
    TrainFlag("text_head", "--text-head", HEADS, "Text-side head [--head's, else the preset's]."),
    TrainFlag("width", "--width", POSITIVE_INT, "Star head width factor [8]."),
    TrainFlag("out_dim", "--dim", POSITIVE_INT, "Shared space dimension [1024 sail, 2048 sail-probe]."),
    TrainFlag("batch_size", "--train-batch-size", click.IntRange(min=2),
              "Training batch: pairs per step, global over processes [32,768; min(n, 256) on small data].",
              PROBE, old=("--probe-batch-size",)),
    TrainFlag("micro_batch", "--micro-batch", IntOr("auto", "none"),
              "Rows per micro-batch of the two-pass (GradCache) step; 'none': one pass; 'auto': one pass when "
              "it fits in half the free memory [auto]."),
    TrainFlag("optimizer", "--optimizer", click.Choice(["lion", "adamw"]),
              "[lion; adamw for linear heads on small data]"),
    TrainFlag("lr", "--lr", POSITIVE_FLOAT,
              "Peak learning rate [1e-5; on small data 1e-2 for linear heads with AdamW, else 3e-4].", PROBE),
    TrainFlag("weight_decay", "--weight-decay", click.FloatRange(min=0), "[1e-4 sail, 1e-7 sail-probe]"),
    TrainFlag("decay_norm_bias_logit", "--decay-all", None,
              "Also decay LayerNorm gains, biases and the logit scale/bias (default: weight matrices only).",
              is_flag=True),
    TrainFlag("norm_bias_init", "--norm-bias-init", click.Choice(["zeros", "center", "auto"]),
              "Start of the heads' LayerNorm bias: 'zeros' (the reference), 'center' (minus the training "
              "split's mean normalised feature) or 'auto' (center a side only where that mean holds >= 90% "
              "of the energy) [zeros; on small data center for linear heads, auto for others]. Centred star / "
              "MLP heads misread inputs of another mean (patch tokens, prompts; README).", PROBE),
    TrainFlag("epochs", "--epochs", click.IntRange(min=1),
              "[100; on small data 30 for linear heads with AdamW, with early stopping]", PROBE),
    TrainFlag("warmup_fraction", "--warmup-fraction", click.FloatRange(0, 1),
              "Warm-up over ceil(fraction x steps) steps, then the schedule [0.1]."),
    TrainFlag("schedule", "--schedule", click.Choice(["cosine", "constant"]), "[cosine]"),
    TrainFlag("grad_clip", "--grad-clip", POSITIVE_FLOAT, "Max global gradient norm [none]."),
    TrainFlag("loss", "--loss", click.Choice(["sigmoid", "infonce"]), "[sigmoid]"),
    TrainFlag("normalization", "--normalization", click.Choice(["n2", "n"]),
              "Sigmoid loss: mean over the N x N logits (n2, SAIL) or sum / N (n, SigLIP) [n2]."),
    TrainFlag("chunk_size", "--chunk-size", IntOr("none"),
              "Tile size of the exact chunked loss; 'none': naive [4096]."),
    TrainFlag("positives", "--positives", IntOr("all"),
              "Captions per image per step: 'all' (every caption a positive, ragged counts) or N [all]."),
    TrainFlag("caption_sampling", "--caption-sampling", click.Choice(["random", "fixed"]),
              "Draw each image's captions at random each epoch, or always the first ones [random]."),
    TrainFlag("precision", "--precision", click.Choice(["fp32", "bf16", "fp16"]),
              "Autocast of the heads and the loss's products (its sums stay fp32) [fp32; bf16 on small data where the device "
              "computes bf16 natively].", PROBE),
    TrainFlag("val_fraction", "--val-fraction", click.FloatRange(0, 1, max_open=True),
              "Hold out this share of the training pairs' images for early stopping [0; 0.1 on small data]. "
              "Never a reported test set.", PROBE),
    TrainFlag("patience", "--patience", IntOr("none"), "Early-stopping patience in epochs ['none'; 10 on small data]."),
    TrainFlag("select_by", "--select-by", None,
              "Keep the epoch best by val_loss or a metric (zero_shot_top1, i2t_r1...) of --selection [val_loss]."),
    TrainFlag("eval_every", "--eval-every", click.IntRange(min=0),
              "Evaluate zero-shot/retrieval every N epochs [2, as the reference; 0: at the end]."),
    TrainFlag("log_to", "--log-to", click.Choice(["tensorboard", "wandb"]),
              "Also log training to TensorBoard or W&B (optional extras; W&B honours WANDB_MODE=offline).", PROBE),
    TrainFlag("checkpoint_every", "--checkpoint-every", IntOr("none"),
              "Also checkpoint every N steps; 'none': epoch ends only [1000]."),
)


def train_flag_options(command: str):
    """A decorator adding the `TRAIN_FLAGS` rows that `command` takes."""

    def decorate(func):
        for row in reversed([r for r in TRAIN_FLAGS if command in r.commands]):
            attrs = dict(default=None, help=row.help)
            if row.is_flag:
                attrs["is_flag"] = True
            else:
                attrs["type"] = row.type
            option = (renamed_option(row.flag, row.dest, old=row.old, **attrs) if row.old
                      else click.option(row.flag, row.dest, **attrs))
            func = option(func)
        return func

    return decorate


def train_flag_values(kwargs: dict) -> dict[str, Any]:
    """Pop the `TRAIN_FLAGS` values from `kwargs`: ``{TrainConfig field: value}`` for each flag the user
    gave (an explicit 'none' is kept as None; a flag left out is left out, so the recipe decides)."""
    ctx = click.get_current_context()
    values = {}
    for row in TRAIN_FLAGS:
        if row.dest not in kwargs:
            continue
        value = kwargs.pop(row.dest)
        if given(ctx, row.dest) or (row.old and value is not None):
            values[row.field] = value
    return values
