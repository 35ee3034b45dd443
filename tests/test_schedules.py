"""Fidelity to the SAIL reference's schedule and batching (lezhang7/SAIL at b39de67).

Each expectation is computed here independently, from the reference's own formulas:

* ``train/scheduler.py``: ``_warmup_lr = base_lr * (step + 1) / warmup_length``; ``cosine_lr``:
  ``e = step - warmup_length``, ``es = steps - warmup_length``,
  ``lr = 0.5 * (1 + np.cos(np.pi * e / es)) * base_lr``;
* ``main.py``: ``total_steps = dataloader.num_batches * epochs``, ``warmup = ceil(0.1 * total_steps)``;
* ``data/__init__.py``: the training ``DataLoader(..., drop_last=is_train)``, ``num_batches = len(dataloader)``.
"""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from alignprobe.probe.training.config import TrainConfig, resolve_recipe, small_data_changes
from alignprobe.probe.training.engine import Trainer
from alignprobe.probe.training.schedules import lr_at
from alignprobe.probe.training.streaming import PairStream

import helpers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_cosine_lr(base_lr: float, warmup_length: int, steps: int, step: int) -> float:
    """lezhang7/SAIL train/scheduler.py, cosine_lr's _lr_adjuster, verbatim in substance."""
    if step < warmup_length:
        return base_lr * (step + 1) / warmup_length
    e = step - warmup_length
    es = steps - warmup_length
    return 0.5 * (1 + np.cos(np.pi * e / es)) * base_lr


def reference_num_batches(n: int, batch_size: int) -> int:
    """len() of the reference's training DataLoader (drop_last=True)."""
    return len(torch.utils.data.DataLoader(range(n), batch_size=batch_size, drop_last=True))


@pytest.mark.parametrize("total,base_lr", [(40, 1e-5), (7, 1.0), (3000, 1e-3), (1, 0.5), (11, 2e-4)])
def test_cosine_equals_the_reference_scheduler_at_every_step(total, base_lr):
    warmup = math.ceil(0.1 * total)  # main.py
    ours = [lr_at(s, total, base_lr, warmup, "cosine") for s in range(total)]
    theirs = [reference_cosine_lr(base_lr, warmup, total, s) for s in range(total)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
    if total > warmup + 1:
        # the end point is total - warmup, one past the last step: the last step's lr is small, not 0
        assert 0 < ours[-1] < ours[warmup]


def test_cosine_end_point_is_not_one_step_early():
    # The old end point (total - warmup - 1) reached 0 at the last step; 40 steps, warm-up 4.
    old = [0.5 * (1 + math.cos(math.pi * min(1.0, (s - 4) / 35))) for s in range(4, 40)]
    ours = [lr_at(s, 40, 1.0, 4) for s in range(4, 40)]
    assert old[-1] == pytest.approx(0.0, abs=1e-12) and ours[-1] > 0
    assert sum(ours) > sum(old)  # the "2.4 % less learning rate over 40 steps", now gone


@pytest.mark.parametrize("n,batch,world", [(100, 32, 1), (96, 32, 1), (31, 8, 1), (100, 32, 2), (130, 40, 2)])
def test_drop_last_gives_the_reference_number_of_full_batches(n, batch, world):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((n, 4)).astype(np.float32)
    texts = rng.standard_normal((n, 3)).astype(np.float32)
    streams = [PairStream(images, texts, np.arange(n), np.arange(n), batch_size=batch, positives=1, seed=1,
                          drop_last=True, rank=r, world_size=world, prefetch=False) for r in range(world)]
    # The reference splits a per-rank batch over a DistributedSampler; ours is the global batch.
    per_rank = batch // world
    assert len(streams[0]) == reference_num_batches(n // world, per_rank)
    seen_by_epoch = []
    for epoch in range(3):
        plans = streams[0].plan(epoch)
        assert all(len(b) == per_rank * world for b in plans)  # every batch full
        rows = np.concatenate(plans)
        assert len(np.unique(rows)) == len(rows) == streams[0].images_per_epoch
        seen_by_epoch.append(set(rows.tolist()))
        # the ranks' shares of one batch make up the global batch
        shares = [s.epoch(epoch).__next__() for s in streams]
        assert sum(b.images.shape[0] for b in shares) == per_rank * world
    if streams[0].images_per_epoch < n:
        assert len(set.union(*seen_by_epoch)) > streams[0].images_per_epoch  # a different remainder each epoch


def test_keeping_the_last_batch_trains_every_pair_each_epoch():
    n = 100
    x = np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32)
    stream = PairStream(x, x, np.arange(n), np.arange(n), batch_size=32, positives=1, drop_last=False,
                        prefetch=False)
    plans = stream.plan(0)
    assert len(plans) == 4 and sorted(np.concatenate(plans).tolist()) == list(range(n))
    assert max(map(len, plans)) - min(map(len, plans)) <= 1  # near-equal, no noisy remainder


@pytest.mark.parametrize("drop_last", [True, False])
def test_batch_larger_than_the_data_is_one_batch_of_all(drop_last):
    x = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
    stream = PairStream(x, x, np.arange(30), np.arange(30), batch_size=1024, positives=1, drop_last=drop_last,
                        prefetch=False)
    assert stream.batch_exceeds_data and len(stream) == 1 and stream.images_per_epoch == 30
    [batch] = list(stream.epoch(0))
    assert batch.images.shape[0] == 30


@pytest.mark.parametrize("n_pairs", [4, 9, 40, 500, 1100, 2000, 99_999])
def test_the_small_data_recipe_never_leaves_an_epoch_without_a_step(n_pairs):
    config, _ = resolve_recipe("sail-probe", n_pairs)
    assert config.batch_size == small_data_changes(n_pairs)["batch_size"] <= max(2, n_pairs)
    n_val = max(1, round(config.val_fraction * n_pairs))
    train = n_pairs - n_val
    x = np.zeros((n_pairs, 2), dtype=np.float32)
    stream = PairStream(x, x, np.arange(n_pairs), np.arange(train), batch_size=config.batch_size, positives=1,
                        drop_last=config.drop_last, prefetch=False)
    assert len(stream) >= 1 and stream.images_per_epoch == train  # every training pair, every epoch


def planted(n, seed=0):
    return helpers.planted(n, seed, d_img=10, d_txt=8, latent=4)


def test_engine_lr_per_step_and_step_count_follow_the_reference(tmp_path):
    image, text = planted(90)
    config = TrainConfig(out_dim=8, batch_size=16, epochs=3, lr=1e-3, device="cpu", checkpoint_every=None,
                         prefetch=False)
    trainer = Trainer(config, tmp_path / "run", quiet=True).fit(image, text)
    steps_per_epoch = reference_num_batches(90, 16)  # 5: 10 pairs an epoch wait for the next shuffle
    total = steps_per_epoch * 3
    warmup = math.ceil(0.1 * total)
    assert trainer.steps_ == total
    with open(tmp_path / "run" / "log_steps.csv", newline="") as fh:
        logged = [float(r["lr"]) for r in csv.DictReader(fh)]
    np.testing.assert_allclose(logged, [reference_cosine_lr(1e-3, warmup, total, s) for s in range(total)],
                               rtol=1e-12)
    record = json.loads((tmp_path / "run" / "aligned.json").read_text())
    assert record["train_config"]["drop_last"] is True  # the record says which
    assert record["steps_per_epoch"] == steps_per_epoch and record["images_per_epoch"] == 80

    kept = Trainer(config.replace(drop_last=False), quiet=True).fit(image, text)
    assert kept.steps_ == 6 * 3  # ceil(90 / 16) near-equal batches of every pair


def test_a_set_smaller_than_the_batch_trains_and_says_so(tmp_path):
    image, text = planted(12)
    config, _ = resolve_recipe("sail-probe", 12, dict(out_dim=8, epochs=3, device="cpu", checkpoint_every=None))
    trainer = Trainer(config, tmp_path / "run", quiet=True).fit(image, text)
    assert trainer.steps_ == 3  # one batch of the 11 training pairs an epoch (batch 12)
    record = json.loads((tmp_path / "run" / "aligned.json").read_text())
    assert any("exceeds the 11 training images" in note for note in record["notes"])


def test_a_run_killed_mid_epoch_resumes_bit_for_bit_with_drop_last(tmp_path):
    image, text = planted(100)
    # 80 training pairs, batch 16: 5 full steps an epoch; checkpoints at steps 3, 6, ...
    config = TrainConfig(out_dim=8, batch_size=16, epochs=3, lr=1e-3, val_fraction=0.2, device="cpu",
                         checkpoint_every=3, prefetch=False)
    whole = Trainer(config, tmp_path / "a", quiet=True).fit(image, text)

    class Killed(BaseException):
        pass

    def kill(trainer, event, info):
        if event == "step" and info["step"] == 5:  # the last checkpoint is step 3, batch 3 of epoch 1
            raise Killed

    with pytest.raises(Killed):
        Trainer(config, tmp_path / "b", quiet=True).fit(image, text, callbacks=[kill])
    latest = json.loads((tmp_path / "b" / "checkpoints" / "latest.json").read_text())
    state = json.loads((tmp_path / "b" / "checkpoints" / latest["dir"] / "state.json").read_text())
    assert (state["step"], state["epoch"], state["batch"]) == (3, 0, 3)  # mid-epoch
    resumed = Trainer(config, tmp_path / "b", quiet=True).fit(image, text, resume=True)
    assert resumed.steps_ == whole.steps_ == 15
    for name, value in whole.model_.state_dict().items():
        assert torch.equal(value, resumed.model_.state_dict()[name]), name
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(resumed.history_) == strip(whole.history_)
