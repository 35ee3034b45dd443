"""The one table of training flags (`alignprobe.cli_train_options.TRAIN_FLAGS`) against the engine's
`TrainConfig`: every row names a real field, its choices are the engine's, and the options generated
from it are those of `train`, `run` and `sweep`."""
from __future__ import annotations

import dataclasses

import click
import pytest

from alignprobe.cli import main
from alignprobe.cli_train_options import TRAIN_FLAGS
from alignprobe.probe.training import config as engine
from alignprobe.probe.training.heads import HEAD_KINDS
from alignprobe.probe.training.losses import NORMALIZATIONS
from alignprobe.probe.training.schedules import SCHEDULES
from alignprobe.probe.training.streaming import SAMPLINGS

ENGINE_CHOICES = {"image_head": HEAD_KINDS, "text_head": HEAD_KINDS, "optimizer": engine.OPTIMIZERS,
                  "loss": engine.LOSSES, "normalization": NORMALIZATIONS, "schedule": SCHEDULES,
                  "precision": engine.PRECISIONS, "caption_sampling": SAMPLINGS, "log_to": engine.LOG_BACKENDS,
                  "norm_bias_init": engine.NORM_BIAS_INITS}


def test_every_row_is_a_train_config_field_once():
    fields = {f.name for f in dataclasses.fields(engine.TrainConfig)}
    names = [row.field for row in TRAIN_FLAGS]
    assert set(names) <= fields and len(names) == len(set(names))
    flags = [row.flag for row in TRAIN_FLAGS]
    assert len(flags) == len(set(flags))


@pytest.mark.parametrize("row", [r for r in TRAIN_FLAGS if isinstance(r.type, click.Choice)], ids=lambda r: r.field)
def test_choices_are_the_engines(row):
    assert sorted(row.type.choices) == sorted(ENGINE_CHOICES[row.field])


def test_generated_options_are_those_of_each_command():
    for command in ("train", "run", "sweep"):
        opts = {o for p in main.commands[command].params for o in p.opts}
        for row in TRAIN_FLAGS:
            assert (row.flag in opts) == (command in row.commands), (command, row.flag)
    # the hidden old spellings are accepted but not shown
    run_help = main.commands["run"].get_help(click.Context(main.commands["run"]))
    assert "--train-batch-size" in run_help and "--probe-batch-size" not in run_help
