"""SAIL training: loss pieces, streaming, the two-pass step, resume, planted non-linear structure."""
import json
import math

import numpy as np
import pytest
import torch

from alignprobe.errors import ValidationError
from alignprobe.probe.training.heads import AlignmentHead
from alignprobe.probe.training.losses import pairwise_sigmoid_loss, sigmoid_loss
from alignprobe.probe.training.evaluation import retrieval_scores
from alignprobe.probe.training.config import TrainConfig
from alignprobe.probe.training.engine import Trainer
from alignprobe.probe.training.streaming import PairStream
from alignprobe.probe.training.probe import AlignmentProbe

import helpers


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**changes):
    values = dict(out_dim=8, image_head="star", text_head="star", width=2, batch_size=64, micro_batch=24,
                  chunk_size=16, optimizer="lion", lr=1e-3, epochs=3, warmup_fraction=0.2, val_fraction=0.2,
                  device="cpu", checkpoint_every=None, positives=2)
    values.update(changes)
    return TrainConfig(**values)


def planted(n, seed=0):
    """Paired features with a second caption per image."""
    return helpers.planted(n, seed, d_img=12, d_txt=10, latent=4, extra=True)


# --------------------------------------------------------------------------- hand-computed pieces


def test_star_head_public_and_hand_computed():
    import alignprobe.probe as P

    assert P.AlignmentHead is AlignmentHead
    head = AlignmentHead(2, 1, kind="star", width=1)  # hidden width 1 * 2
    with torch.no_grad():
        head.norm.weight.fill_(1.0)
        head.norm.bias.zero_()
        # rows 0-1: branch 1 (through ReLU6), rows 2-3: branch 2 (linear)
        head.net.fc_in.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]]))
        head.net.fc_in.bias.copy_(torch.tensor([0.5, 7.0, -1.0, 0.0]))
        head.net.fc_out.weight.copy_(torch.tensor([[3.0, -2.0]]))
        head.net.fc_out.bias.fill_(0.25)
    x = torch.tensor([[3.0, 1.0]])
    s = 1.0 / math.sqrt(1.0 + 1e-5)  # LayerNorm: mean 2, variance 1 -> [s, -s]
    relu6 = lambda v: min(max(v, 0.0), 6.0)  # noqa: E731
    h1 = [relu6(2 * s + 0.5), relu6(-s + 7.0)]  # the second is capped at 6
    h2 = [s - s - 1.0, s + s]
    expected = 3.0 * h1[0] * h2[0] - 2.0 * h1[1] * h2[1] + 0.25
    assert h1[1] == 6.0
    assert head(x).item() == pytest.approx(expected, rel=1e-5)


def test_multi_positive_loss_hand_computed():
    # two images, one raw and one extra caption each; scale 1, bias 0, so logits are cosines
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    raw = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # cos: [[1, 0], [0, 1]]
    extra = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # cos: [[0, 1], [1, 0]], but row j still captions image j
    sp = lambda v: math.log1p(math.exp(v))  # -logsigmoid(y L) = softplus(-y L)  # noqa: E731
    terms = [sp(-1), sp(0), sp(0), sp(-1),  # raw block: positives 1 on the diagonal, negatives 0
             sp(-0), sp(1), sp(1), sp(-0)]  # extra block: positives 0 on the diagonal, negatives 1
    expected_n2 = sum(terms) / 8
    assert sigmoid_loss(images, raw, 1.0, 0.0, extra).item() == pytest.approx(expected_n2, rel=1e-6)
    assert sigmoid_loss(images, raw, 1.0, 0.0, extra, normalization="n").item() == pytest.approx(sum(terms) / 2, rel=1e-6)
    for chunk in (1, 3):
        assert sigmoid_loss(images, raw, 1.0, 0.0, extra, chunk_size=chunk).item() == pytest.approx(expected_n2, rel=1e-6)


def test_chunked_loss_with_divisor_equals_naive_values_and_gradients():
    g = torch.Generator().manual_seed(3)
    leaves = {"img": torch.randn(29, 6, generator=g), "txt": torch.randn(58, 6, generator=g),
              "t": torch.tensor(math.log(10.0)), "b": torch.tensor(-3.0)}
    index = torch.cat([torch.arange(29), torch.arange(29)])
    index[5] = -1  # a pure negative (a text gathered from another rank)

    def run(chunk):
        p = {k: v.clone().requires_grad_() for k, v in leaves.items()}
        loss = pairwise_sigmoid_loss(p["img"], p["txt"], index, p["t"].exp(), p["b"], chunk_size=chunk,
                                     divisor=123.0)
        loss.backward()
        return loss.detach(), {k: v.grad for k, v in p.items()}

    naive, naive_grads = run(None)
    ref = pairwise_sigmoid_loss(leaves["img"], leaves["txt"], index, leaves["t"].exp(), leaves["b"], "n2") * 58 * 29 / 123
    assert naive.item() == pytest.approx(ref.item(), rel=1e-6)
    for chunk in (4, 29, 64):
        loss, grads = run(chunk)
        assert abs(loss.item() - naive.item()) < 1e-5
        for k in grads:
            assert (grads[k] - naive_grads[k]).abs().max().item() < 1e-5, k
    with pytest.raises(ValidationError, match="divisor must be None or a number > 0, got 0"):
        pairwise_sigmoid_loss(leaves["img"], leaves["txt"], index, 1.0, 0.0, divisor=0)


# --------------------------------------------------------------------------- config


def test_config_validation_names_the_field():
    for bad in (dict(lr=0), dict(micro_batch=0), dict(image_head="cnn"), dict(precision="fp8"),
                dict(caption_sampling="all"), dict(eval_every=-1)):
        with pytest.raises(ValidationError, match="TrainConfig"):
            TrainConfig(**bad)


# --------------------------------------------------------------------------- streaming


class RowCounter:
    """A CachedEmbeddings stand-in that records every gather (and refuses to be loaded whole)."""

    def __init__(self, data):
        self.data, self.manifest, self.calls = data, {"identity": {}}, []
        self.shape = data.shape

    def rows(self, index, dtype=np.float32):
        index = np.asarray(index)
        self.calls.append(len(index))
        return self.data[index].astype(dtype)

    def to_numpy(self, dtype=np.float32):  # pragma: no cover - must not be called
        raise AssertionError("the whole cache was loaded")


def test_stream_gathers_batches_shuffles_and_draws_captions():
    n = 48
    images = RowCounter(np.arange(n, dtype=np.float32)[:, None].repeat(3, 1))
    # image i has 1 + i % 3 captions; caption value encodes its image
    caption_image = np.concatenate([np.arange(n)] + [np.arange(n)[np.arange(n) % 3 >= k] for k in (1, 2)])
    captions = RowCounter(np.stack([caption_image, np.arange(len(caption_image))], 1).astype(np.float32))
    stream = PairStream(images, captions, caption_image, np.arange(n), batch_size=16, positives=2, seed=0)
    assert len(stream) == 3
    plans = [np.concatenate(stream.plan(e)) for e in range(2)]
    assert sorted(plans[0]) == list(range(n)) and not np.array_equal(plans[0], plans[1])
    picked = {}
    for epoch in range(12):
        for batch in stream.epoch(epoch):
            imgs = batch.images[:, 0].long()
            assert batch.texts.shape == (2 * len(imgs), 2)
            owner = batch.texts[:, 0].long()
            assert torch.equal(owner, imgs[batch.positive_index])  # every text's positive is its image
            for i, cap in zip(imgs[batch.positive_index].tolist(), batch.texts[:, 1].long().tolist()):
                picked.setdefault(i, set()).add(cap)
    assert max(images.calls) <= 16 and max(captions.calls) <= 32  # batch-sized reads only
    counts = np.bincount(caption_image, minlength=n)
    assert all(len(picked[i]) == counts[i] for i in range(n))  # random sampling reaches every caption
    # two ranks split each global batch (here of even size), with the same captions as one process
    halves = [PairStream(images, captions, caption_image, np.arange(n), batch_size=16, positives=2, seed=0,
                         rank=r, world_size=2, prefetch=False) for r in (0, 1)]
    one = next(stream.epoch(1))
    two = [next(h.epoch(1)) for h in halves]
    merged = sorted(map(tuple, torch.cat([b.texts for b in two]).tolist()))
    assert merged == sorted(map(tuple, one.texts.tolist()))


# --------------------------------------------------------------------------- the step


@pytest.mark.parametrize("loss", ["sigmoid", "infonce"])
def test_two_pass_step_equals_one_pass(loss):
    img, txt, extra = planted(80)
    grads = {}
    for micro in (None, 7):
        trainer = Trainer(tiny_config(micro_batch=micro, loss=loss, epochs=1, batch_size=80, val_fraction=0.1),
                              quiet=True)
        captured = {}

        def grab(tr, event, info, captured=captured):
            if event == "step" and not captured:
                captured.update({k: p.grad.clone() for k, p in tr.model_.named_parameters() if p.grad is not None})

        trainer.fit(img, txt, extra_text_emb=extra, callbacks=[grab])
        grads[micro] = captured
    for name in grads[None]:
        torch.testing.assert_close(grads[7][name], grads[None][name], rtol=1e-5, atol=1e-6)


def test_resume_after_kill_is_bit_identical(tmp_path):
    img, txt, extra = planted(150)
    config = tiny_config(checkpoint_every=3, epochs=3, batch_size=32)  # 120 training images: 4 steps an epoch

    uninterrupted = Trainer(config, tmp_path / "a", quiet=True).fit(img, txt, extra_text_emb=extra)

    class Killed(Exception):
        pass

    def kill(trainer, event, info):
        if event == "step" and info["step"] == 7:  # in epoch 2; the last checkpoint is step 6, mid-epoch
            raise Killed

    with pytest.raises(Killed):
        Trainer(config, tmp_path / "b", quiet=True).fit(img, txt, extra_text_emb=extra, callbacks=[kill])
    assert json.loads((tmp_path / "b" / "checkpoints" / "latest.json").read_text())["step"] == 6
    with pytest.raises(ValidationError, match="resume"):
        Trainer(config, tmp_path / "b", quiet=True).fit(img, txt, extra_text_emb=extra)
    with pytest.raises(ValidationError, match="lr"):
        Trainer(config.replace(lr=2e-3), tmp_path / "b", quiet=True).fit(img, txt, extra_text_emb=extra, resume=True)
    resumed = Trainer(config, tmp_path / "b", quiet=True).fit(img, txt, extra_text_emb=extra, resume=True)

    a, b = uninterrupted.model_.state_dict(), resumed.model_.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    from safetensors.torch import load_file

    latest = lambda run: json.loads((run / "checkpoints" / "latest.json").read_text())  # noqa: E731
    assert latest(tmp_path / "a") == latest(tmp_path / "b")
    la = load_file(str(tmp_path / "a" / "checkpoints" / latest(tmp_path / "a")["dir"] / "model.safetensors"))
    lb = load_file(str(tmp_path / "b" / "checkpoints" / latest(tmp_path / "b")["dir"] / "model.safetensors"))
    assert all(torch.equal(la[k], lb[k]) for k in la)
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(uninterrupted.history_) == strip(resumed.history_)
    steps = (tmp_path / "b" / "log_steps.csv").read_text().splitlines()
    assert len(steps) == 1 + uninterrupted.steps_  # rows after the checkpoint were dropped on resume
    aligned = json.loads((tmp_path / "b" / "aligned.json").read_text())
    assert aligned["finished"] and aligned["best"]["epoch"] == resumed.best_epoch_


# --------------------------------------------------------------------------- planted non-linear structure


def quadratic_pairs(n, seed=0, k=4, noise=0.05):
    """Images see products z_i z_j of a latent, texts see z itself: no linear map relates them
    (for Gaussian z, linear and quadratic functions are uncorrelated), the star head's product can."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k))
    iu = np.triu_indices(k)
    quad = (z[:, :, None] * z[:, None, :])[:, iu[0], iu[1]]
    image = quad @ rng.standard_normal((quad.shape[1], 16)) + noise * rng.standard_normal((n, 16))
    text = z @ rng.standard_normal((k, 8)) + noise * rng.standard_normal((n, 8))
    return image.astype(np.float32), text.astype(np.float32)


def test_star_heads_beat_linear_probe_on_non_linear_structure():
    image, text = quadratic_pairs(1000)
    common = dict(out_dim=16, batch_size=256, lr=3e-3, optimizer="adamw", weight_decay=0.0, epochs=30, drop_last=False,
                  patience=None, val_fraction=0.2, device="cpu", chunk_size=None)
    star = Trainer(TrainConfig(image_head="star", text_head="star", width=4, micro_batch=None,
                                  checkpoint_every=None, **common), quiet=True).fit(image, text)
    probe = AlignmentProbe(TrainConfig(**common), quiet=True).fit(image, text)
    held_out = star.val_index_
    assert np.array_equal(held_out, probe.val_index_)  # same seeded split
    star_r = retrieval_scores(star.transform_image(image[held_out]), star.transform_text(text[held_out]),
                              np.arange(len(held_out)))
    probe_r = retrieval_scores(probe.transform_image(image[held_out]), probe.transform_text(text[held_out]),
                               np.arange(len(held_out)))
    assert probe_r["i2t_r1"] < 0.05 and probe_r["i2t_r5"] < 0.1  # chance is 1/200
    assert star_r["i2t_r1"] > probe_r["i2t_r1"] + 0.2
    assert star_r["t2i_r5"] > probe_r["t2i_r5"] + 0.4


# --------------------------------------------------------------------------- micro_batch='auto'


def test_auto_micro_batch_picks_one_pass_when_it_fits_else_a_bounded_micro_batch():
    from alignprobe.probe.training.heads import AlignmentModel
    from alignprobe.probe.training.step import activation_bytes_per_row, resolve_micro_batch

    model = AlignmentModel(2048, 1024, 1024, "star", "star", 8)
    per_image = activation_bytes_per_row(model.image_head)
    per_text = activation_bytes_per_row(model.text_head)
    # 2 x (Linear widths 2*8*2048 + 1024, plus the 2048-wide LayerNorm input) fp32 values
    assert per_image == 2 * (32768 + 1024 + 2048) * 4
    assert per_text == 2 * (16384 + 1024 + 1024) * 4
    one_pass = 16384 * (per_image + per_text)
    cpu = torch.device("cpu")
    assert resolve_micro_batch(model, 16384, 16384, cpu, free_bytes=2 * one_pass) is None
    mb = resolve_micro_batch(model, 16384, 16384, cpu, free_bytes=one_pass)
    assert mb is not None and mb & (mb - 1) == 0 and 512 <= mb < 16384
    assert mb * per_image <= one_pass // 2 < 2 * mb * per_image  # the largest power of two that fits
    assert resolve_micro_batch(model, 16384, 16384, cpu, free_bytes=1) == 512  # never below the floor
    assert activation_bytes_per_row(model.image_head, "bf16") == per_image // 2


def test_auto_micro_batch_in_training_matches_explicit_choice():
    img, txt, extra = planted(80)
    weights = {}
    for micro in ("auto", None):
        trainer = Trainer(tiny_config(micro_batch=micro, epochs=1, batch_size=80), quiet=True)
        trainer.fit(img, txt, extra_text_emb=extra)
        assert trainer.micro_batch_ is None  # tiny heads: one pass fits
        weights[micro] = {k: v.clone() for k, v in trainer.model_.state_dict().items()}
    for name in weights[None]:
        torch.testing.assert_close(weights["auto"][name], weights[None][name], rtol=0, atol=0)
    assert TrainConfig().micro_batch == "auto"
    with pytest.raises(ValidationError, match="micro_batch"):
        tiny_config(micro_batch="big")
