import json
import math

import numpy as np
import pytest
import torch

from alignprobe.errors import DataError, NotFittedError, ValidationError
from alignprobe.probe.training.losses import sigmoid_loss
from alignprobe.probe.training.schedules import lr_at, warmup_steps_for
from alignprobe.probe.training.config import PRESETS, TrainConfig
from alignprobe.probe.training.engine import warmup_steps
from alignprobe.probe.training.probe import AlignmentProbe
from helpers import planted


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_config(**changes):
    # AdamW at lr 1e-2: a few epochs move these tiny heads far (the recipe's Lion at 1e-5 would not)
    values = dict(out_dim=16, batch_size=128, optimizer="adamw", lr=1e-2, weight_decay=0.0, epochs=8,
                  warmup_fraction=0.25, chunk_size=48, val_fraction=0.2, patience=None, device="cpu", seed=0,
                  prefetch=False)
    values.update(changes)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def data():
    return planted(400)


@pytest.fixture(scope="module")
def fitted(data):
    return AlignmentProbe(small_config(), quiet=True).fit(*data)


def test_val_loss_decreases_on_planted_structure(fitted, data):
    val_losses = [h["val_loss"] for h in fitted.history_]
    assert fitted.best_val_loss_ < 0.7 * fitted.initial_val_loss_
    assert val_losses[-1] < val_losses[0] < fitted.initial_val_loss_
    assert set(fitted.history_[0]) >= {"epoch", "train_loss", "val_loss", "lr", "seconds"}
    # aligned: held-out pairs retrieve each other far above chance (1 / 80)
    image, text = data
    zi = fitted.transform_image(image[fitted.val_index_])
    zt = fitted.transform_text(text[fitted.val_index_])
    assert isinstance(zi, np.ndarray) and zi.shape == (80, 16)
    np.testing.assert_allclose(np.linalg.norm(zi, axis=1), 1.0, rtol=1e-5)
    assert (np.argmax(zi @ zt.T, axis=1) == np.arange(80)).mean() > 0.3


def test_split_is_seeded_and_disjoint(fitted):
    assert len(fitted.val_index_) == 80 and len(fitted.train_index_) == 320
    assert np.intersect1d(fitted.val_index_, fitted.train_index_).size == 0


def test_deterministic_under_seed(fitted, data):
    again = AlignmentProbe(small_config(), quiet=True).fit(*data)
    for name, value in fitted.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    assert [h["train_loss"] for h in again.history_] == [h["train_loss"] for h in fitted.history_]
    other = AlignmentProbe(small_config(seed=1, epochs=1), quiet=True).fit(*data)
    assert not np.array_equal(other.val_index_, fitted.val_index_)


def test_early_stopping_keeps_best_epoch():
    # no shared latent: the heads can only overfit, so the validation loss turns up
    image, text = planted(200, structure=False)
    # 140 training images in two full batches of 70: nothing dropped
    probe = AlignmentProbe(small_config(epochs=60, patience=3, lr=3e-2, val_fraction=0.3, batch_size=70), quiet=True)
    probe.fit(image, text)
    val_losses = [h["val_loss"] for h in probe.history_]
    assert probe.stopped_early_
    best = int(np.argmin(val_losses)) + 1
    assert probe.best_epoch_ == best
    assert len(probe.history_) == probe.best_epoch_ + 3
    # the weights in model_ are those of the best epoch: recompute its validation loss
    model, val = probe.model_, probe.val_index_
    with torch.no_grad():
        loss = sigmoid_loss(model.image_head(torch.from_numpy(image[val])), model.text_head(torch.from_numpy(text[val])),
                            model.logit_scale.exp(), model.logit_bias)
    assert loss.item() == pytest.approx(probe.best_val_loss_, rel=1e-6)


def test_not_fitted_errors(tmp_path):
    probe = AlignmentProbe(small_config())
    for call in (lambda: probe.transform_image(np.zeros((2, 24), np.float32)), probe.state_dict,
                 lambda: probe.save(tmp_path)):
        with pytest.raises(NotFittedError):
            call()


def test_save_load_round_trip(fitted, data, tmp_path):
    fitted.save(tmp_path / "probe", metadata={"vision": "tiny-vit", "dataset": "abc123"})
    # one trained-model format for the probe and SAIL runs
    assert sorted(p.name for p in (tmp_path / "probe").iterdir()) == ["aligned.json", "model.safetensors"]
    loaded = AlignmentProbe.load(tmp_path / "probe")
    image, text = data
    np.testing.assert_array_equal(loaded.transform_image(image), fitted.transform_image(image))
    np.testing.assert_array_equal(loaded.transform_text(text), fitted.transform_text(text))
    np.testing.assert_array_equal(loaded.val_index_, fitted.val_index_)
    assert loaded.config_ == fitted.config_ and loaded.history_ == fitted.history_
    assert loaded.norm_bias_centred_ == fitted.norm_bias_centred_  # what the dense-task warning reads
    assert loaded.metadata_ == {"vision": "tiny-vit", "dataset": "abc123"}
    assert json.loads((tmp_path / "probe" / "aligned.json").read_text())["format"] == "alignprobe.aligned/3"
    out = loaded.transform_text(torch.from_numpy(text[:3]))
    assert torch.is_tensor(out) and out.shape == (3, 16)


def test_a_saved_probe_loads_with_load_aligned_and_the_old_format_still_reads(fitted, data, tmp_path):
    from alignprobe import EncoderRequest, load_aligned

    entries = {m: {"request": EncoderRequest.create(m, name).to_dict()} for m, name in
               (("vision", "pixels-8"), ("text", "bow"))}
    fitted.save(tmp_path / "probe", metadata=entries)
    aligned = load_aligned(tmp_path / "probe", device="cpu")
    image, text = data
    np.testing.assert_allclose(aligned.transform_image(image).numpy(), fitted.transform_image(image), atol=1e-6)
    assert aligned.request("vision") == EncoderRequest.create("vision", "pixels-8")
    # the format of earlier versions: probe.json beside the weights
    meta = json.loads((tmp_path / "probe" / "aligned.json").read_text())
    meta.update(format="alignprobe.alignment_probe/2", config=meta.pop("train_config"))
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "probe.json").write_text(json.dumps(meta))
    (legacy / "model.safetensors").write_bytes((tmp_path / "probe" / "model.safetensors").read_bytes())
    np.testing.assert_array_equal(AlignmentProbe.load(legacy).transform_text(text), fitted.transform_text(text))
    # anything else is refused, naming the file
    (legacy / "probe.json").write_text(json.dumps({"format": "something/1"}))
    with pytest.raises(ValidationError, match="probe.json has format 'something/1'"):
        load_aligned(legacy)
    (legacy / "probe.json").write_text("{truncated")
    with pytest.raises(ValidationError, match="probe.json is damaged"):
        AlignmentProbe.load(legacy)


def test_fp16_memmap_read_in_batches_matches_in_memory(data, tmp_path):
    image, text = data
    path = tmp_path / "img.f16"
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=image.shape)
    mm[:] = image
    mm.flush()
    mm = np.memmap(path, dtype=np.float16, mode="r", shape=image.shape)
    streamed = AlignmentProbe(small_config(epochs=2), quiet=True).fit(mm, text)
    in_memory = AlignmentProbe(small_config(epochs=2), quiet=True).fit(image.astype(np.float16).astype(np.float32), text)
    for name, value in streamed.state_dict().items():
        assert torch.equal(value, in_memory.state_dict()[name]), name


@pytest.mark.parametrize("micro_batch", [None, 24])
def test_fp16_batches_stay_fp16_until_each_micro_batch_and_the_step_is_unchanged(micro_batch):
    from alignprobe.probe.training.heads import AlignmentModel
    from alignprobe.probe.training.step import make_optimizer, train_step
    from alignprobe.probe.training.streaming import PairStream

    image, text = planted(96)
    half_image, half_text = image.astype(np.float16), text.astype(np.float16)
    stream = PairStream(half_image, half_text, np.arange(96), np.arange(96), batch_size=64, positives=1,
                        prefetch=False)
    batch = next(stream.epoch(0))
    assert batch.images.dtype == torch.float16 and batch.texts.dtype == torch.float16  # half the bytes
    config = small_config(micro_batch=micro_batch, chunk_size=16)
    results = []
    for images, texts in ((batch.images, batch.texts), (batch.images.float(), batch.texts.float())):
        torch.manual_seed(0)
        model = AlignmentModel(image.shape[1], text.shape[1], 16, "linear", "linear")
        optimizer = make_optimizer(model, config)
        loss, grad_norm = train_step(model, optimizer, images, texts, batch.positive_index, 64, config)
        results.append((loss, grad_norm, {k: v.clone() for k, v in model.state_dict().items()}))
    (loss16, norm16, state16), (loss32, norm32, state32) = results
    # fp16 -> fp32 is exact, so casting per micro-batch gives the numbers of casting the batch up front
    assert loss16 == pytest.approx(loss32, rel=1e-6) and norm16 == pytest.approx(norm32, rel=1e-6)
    for name in state32:
        torch.testing.assert_close(state16[name], state32[name], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("grad_clip", [None, 1e-3])
def test_step_reports_the_gradient_norm_and_clips_only_when_asked(grad_clip):
    """Without grad_clip the norm is only measured (torch's get_total_norm, no pass that multiplies
    every gradient by 1); with it, the gradients are scaled to the bound. Either way the reported
    norm is the one clip_grad_norm_ measures, and the weights are those of the same update."""
    from alignprobe.probe.training.heads import AlignmentModel
    from alignprobe.probe.training.step import make_optimizer, train_step
    from alignprobe.probe.training.streaming import PairStream

    image, text = planted(96)
    batch = next(PairStream(image, text, np.arange(96), np.arange(96), batch_size=64, positives=1,
                            prefetch=False).epoch(0))
    config = small_config(grad_clip=grad_clip, chunk_size=16)
    torch.manual_seed(0)
    model = AlignmentModel(image.shape[1], text.shape[1], 16, "linear", "linear")
    reference = AlignmentModel(image.shape[1], text.shape[1], 16, "linear", "linear")
    reference.load_state_dict(model.state_dict())
    _, grad_norm = train_step(model, make_optimizer(model, config), batch.images, batch.texts,
                              batch.positive_index, 64, config)
    # the same step by hand: loss, backward, torch's clip_grad_norm_, AdamW
    optimizer = make_optimizer(reference, config)
    from alignprobe.probe.training.step import global_loss
    zi, zt = reference.image_head(batch.images), reference.text_head(batch.texts)
    global_loss(zi, zt, batch.positive_index, reference.logit_scale.exp(), reference.logit_bias, n_global=64,
                chunk_size=16).backward()
    grads = [p.grad.clone() for p in reference.parameters()]
    want = float(torch.nn.utils.clip_grad_norm_(list(reference.parameters()),
                                                 grad_clip if grad_clip is not None else float("inf")))
    assert grad_norm == pytest.approx(want, rel=1e-6)
    clipped = [p.grad for p in reference.parameters()]
    if grad_clip is None:
        assert all(torch.equal(a, b) for a, b in zip(grads, clipped))
    else:
        assert want > grad_clip and float(torch.nn.utils.get_total_norm(clipped)) == pytest.approx(grad_clip, rel=1e-4)
    optimizer.step()
    reference.clamp_()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("micro_batch", [None, 24])
def test_step_labels_its_phases_for_the_profiler(micro_batch):
    """benchmarks/probe_step.py --profile reads these labels: each phase of a step appears once, in
    order, and the matrix products of the heads and the loss fall inside them."""
    from torch.profiler import ProfilerActivity, profile

    from alignprobe.probe.training.heads import AlignmentModel
    from alignprobe.probe.training.step import make_optimizer, train_step
    from alignprobe.probe.training.streaming import PairStream

    image, text = planted(96)
    batch = next(PairStream(image, text, np.arange(96), np.arange(96), batch_size=64, positives=1,
                            prefetch=False).epoch(0))
    config = small_config(micro_batch=micro_batch, chunk_size=16)
    model = AlignmentModel(image.shape[1], text.shape[1], 16, "linear", "linear")
    optimizer = make_optimizer(model, config)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(model, optimizer, batch.images, batch.texts, batch.positive_index, 64, config)
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events() if e.name.startswith("step: "))
    expected = ["step: heads forward", "step: loss", "step: backward", "step: gradient norm", "step: optimizer"]
    if micro_batch is not None:
        expected.insert(3, "step: heads again, forward and backward")
    assert [name for _, _, name in spans] == expected
    products = [e for e in prof.events() if e.name in ("aten::mm", "aten::addmm")]
    assert products and all(any(s <= e.time_range.start and e.time_range.end <= t for s, t, _ in spans)
                            for e in products)


def test_multi_positive_captions_and_caption_index(data):
    image, text = data
    extra = np.stack([text + 0.1, text - 0.1])
    probe = AlignmentProbe(small_config(epochs=2), quiet=True).fit(image, text, extra_text_emb=extra)
    assert len(probe.history_) == 2
    # two captions per image, listed caption by caption
    caption_image = np.repeat(np.arange(len(image)), 2)
    captions = np.repeat(text, 2, axis=0) + 0.05 * np.random.default_rng(0).standard_normal((800, 16)).astype(np.float32)
    probe = AlignmentProbe(small_config(epochs=2), quiet=True).fit(image, captions, caption_image_index=caption_image)
    assert probe.best_val_loss_ < probe.initial_val_loss_
    assert len(probe.val_index_) == 80  # the split is over images


@pytest.mark.parametrize("changes", [dict(optimizer="lion", lr=1e-3), dict(loss="infonce"), dict(image_head="star", width=2)])
def test_other_recipes_train(data, changes):
    probe = AlignmentProbe(small_config(epochs=2, **changes), quiet=True).fit(*data)
    assert probe.history_[-1]["val_loss"] < probe.initial_val_loss_


def test_input_validation(data):
    image, text = data
    probe = AlignmentProbe(small_config(epochs=1), quiet=True)
    with pytest.raises(ValidationError, match="caption_image"):
        probe.fit(image, text[:-1])
    bad = image.copy()
    bad[7, 3] = np.nan
    with pytest.raises(DataError, match="row 7 holds NaN"):
        probe.fit(bad, text)
    with pytest.raises(ValidationError, match="extra_text_emb"):
        probe.fit(image, text, extra_text_emb=text[:10])
    fitted = AlignmentProbe(small_config(epochs=1), quiet=True).fit(image, text)
    with pytest.raises(ValidationError, match="dimension"):
        fitted.transform_image(text)


def test_presets_are_the_reference_recipes():
    probe = TrainConfig.preset("sail-probe").to_dict()
    required = {"optimizer", "lr", "weight_decay", "betas", "batch_size", "epochs", "warmup_fraction", "out_dim",
                "image_head", "text_head", "width", "logit_scale_init", "logit_bias_init", "val_fraction"}
    assert required <= set(probe)
    # scripts/alignment_probing.sh with train/params.py defaults
    assert {k: probe[k] for k in required - {"logit_scale_init"}} == dict(
        optimizer="lion", lr=1e-5, weight_decay=1e-7, betas=[0.9, 0.99], batch_size=32768, epochs=100,
        warmup_fraction=0.1, out_dim=2048, image_head="linear", text_head="linear", width=8,
        logit_bias_init=-10.0, val_fraction=0.0)
    assert probe["logit_scale_init"] == pytest.approx(math.log(20))
    # scripts/sail_train.sh
    sail = TrainConfig.preset("sail", epochs=3).to_dict()
    assert (sail["image_head"], sail["text_head"], sail["width"], sail["out_dim"], sail["weight_decay"],
            sail["optimizer"], sail["lr"], sail["batch_size"], sail["val_fraction"], sail["epochs"]) == \
        ("star", "star", 8, 1024, 1e-4, "lion", 1e-5, 32768, 0.0, 3)
    assert TrainConfig() == TrainConfig.preset("sail-probe")
    assert TrainConfig.from_dict(json.loads(json.dumps(probe))) == TrainConfig.preset("sail-probe")
    with pytest.raises(ValidationError, match="unknown preset"):
        TrainConfig.preset("clip")


def test_config_validation():
    for bad in (dict(lr=0), dict(batch_size=0), dict(image_head="conv"), dict(val_fraction=1.0),
                dict(warmup_fraction=1.5), dict(betas=(0.9,)), dict(chunk_size=True), dict(optimizer="sgd"),
                dict(positives=0), dict(positives="some"), dict(log_to="mlflow")):
        with pytest.raises(ValidationError, match="TrainConfig"):
            TrainConfig(**bad)
    with pytest.raises(ValidationError, match="TrainConfig.lr"):  # scikit-learn's rule: checked at fit
        AlignmentProbe(lr=-1.0).fit(np.zeros((8, 4), np.float32), np.zeros((8, 4), np.float32))


def test_ragged_captions_all_count_as_positives(data):
    image, text = data
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 4, size=len(image))  # 1, 2 or 3 captions per image
    caption_image = np.repeat(np.arange(len(image)), counts)
    captions = text[caption_image] + 0.05 * rng.standard_normal((len(caption_image), text.shape[1])).astype(np.float32)
    probe = AlignmentProbe(small_config(epochs=2), quiet=True).fit(image, captions, caption_image_index=caption_image)
    assert sorted(set(counts.tolist())) == [1, 2, 3]
    assert probe.train_captions_ == int(counts[probe.train_index_].sum())  # every caption of every training image
    assert probe.best_val_loss_ < probe.initial_val_loss_


def test_ragged_loss_equals_reference_extra_block_with_two_captions_each():
    # With two captions per image, the generalised loss is the reference's: the N x N block of the
    # raw captions and the N x N block of the extra ones, one mean over both (SAIL train/loss.py).
    from alignprobe.probe.training.losses import pairwise_sigmoid_loss

    g = torch.Generator().manual_seed(0)
    img, raw, extra = (torch.randn(6, 5, generator=g) for _ in range(3))
    scale, bias = torch.tensor(20.0), torch.tensor(-10.0)
    def block(t):
        logits = scale * torch.nn.functional.normalize(t, dim=-1) @ torch.nn.functional.normalize(img, dim=-1).T + bias
        labels = 2 * torch.eye(6) - 1
        return torch.nn.functional.logsigmoid(labels * logits)
    reference = -torch.cat([block(raw), block(extra)]).mean()
    ragged = pairwise_sigmoid_loss(img, torch.cat([raw, extra]), torch.arange(6).repeat(2), scale, bias)
    assert ragged.item() == pytest.approx(reference.item(), rel=1e-6)


def test_schedule():
    # the reference's formulas are checked in tests/test_schedules.py
    assert warmup_steps_for(0.1, 200) == 20 and warmup_steps_for(5, 200) == 5
    assert warmup_steps(0.1, 205) == 21 and warmup_steps(0.1, 3) == 1  # ceil, as the reference's main.py
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert 0.01 < lr_at(99, 100, 1.0, 10, min_lr=0.01) < 0.011  # one step short of the end point
    assert lr_at(50, 100, 1.0, 10, schedule="constant") == 1.0


def test_lion_steps_as_the_reference_lion():
    """`make_optimizer`'s Lion against the reference's update (lezhang7/SAIL train/optimizer.py):
    p <- p (1 - lr wd); p <- p - lr sign(b1 m + (1 - b1) g); m <- b2 m + (1 - b2) g, with weight
    decay on weight matrices only."""
    from alignprobe.probe.training.heads import AlignmentModel
    from alignprobe.probe.training.step import make_optimizer

    torch.manual_seed(0)
    model = AlignmentModel(12, 8, 6)
    config = TrainConfig(optimizer="lion", lr=1e-2, weight_decay=0.5, betas=(0.9, 0.99))
    optimizer = make_optimizer(model, config)
    params = dict(model.named_parameters())
    expected = {name: p.detach().clone() for name, p in params.items()}
    momentum = {name: torch.zeros_like(p) for name, p in params.items()}
    for _ in range(5):
        for p in params.values():
            p.grad = torch.randn_like(p)
        for name, p in params.items():
            wd = config.weight_decay if p.ndim >= 2 else 0.0
            expected[name].mul_(1 - config.lr * wd)
            update = momentum[name] * 0.9 + p.grad * (1 - 0.9)
            expected[name].add_(torch.sign(update), alpha=-config.lr)
            momentum[name].mul_(0.99).add_(p.grad, alpha=1 - 0.99)
        optimizer.step()
    for name, p in params.items():
        torch.testing.assert_close(p.detach(), expected[name], rtol=0, atol=1e-6, msg=name)


def test_adamw_steps_as_the_reference_adamw():
    """`make_optimizer`'s AdamW (torch's fused kernel on the CPU, what the small-data probe trains with)
    against the reference's (lezhang7/SAIL main.py: ``optim.AdamW`` in torch's default implementation)
    and the textbook update, with weight decay on weight matrices only."""
    from alignprobe.probe.training.heads import AlignmentModel
    from alignprobe.probe.training.step import make_optimizer

    torch.manual_seed(0)
    model = AlignmentModel(12, 8, 6)
    config = TrainConfig(optimizer="adamw", lr=1e-2, weight_decay=0.5, betas=(0.9, 0.99), eps=1e-8)
    optimizer = make_optimizer(model, config)
    assert optimizer.param_groups[0]["fused"] is True  # the fast kernel is what runs
    params = dict(model.named_parameters())
    default = {name: p.detach().clone().requires_grad_() for name, p in params.items()}
    reference = torch.optim.AdamW([{"params": [p for p in default.values() if p.ndim >= 2], "weight_decay": 0.5},
                                   {"params": [p for p in default.values() if p.ndim < 2], "weight_decay": 0.0}],
                                  lr=config.lr, betas=config.betas, eps=config.eps, foreach=False)
    expected = {name: p.detach().clone() for name, p in params.items()}
    m = {name: torch.zeros_like(p) for name, p in params.items()}
    v = {name: torch.zeros_like(p) for name, p in params.items()}
    b1, b2 = config.betas
    for t in range(1, 6):
        for name, p in params.items():
            p.grad = torch.randn_like(p)
            default[name].grad = p.grad.clone()
            wd = config.weight_decay if p.ndim >= 2 else 0.0
            expected[name].mul_(1 - config.lr * wd)
            m[name].mul_(b1).add_(p.grad, alpha=1 - b1)
            v[name].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            denom = (v[name] / (1 - b2 ** t)).sqrt() + config.eps
            expected[name].addcdiv_(m[name] / (1 - b1 ** t), denom, value=-config.lr)
        optimizer.step()
        reference.step()
    for name, p in params.items():
        torch.testing.assert_close(p.detach(), default[name].detach(), rtol=0, atol=1e-6, msg=name)
        torch.testing.assert_close(p.detach(), expected[name], rtol=0, atol=1e-6, msg=name)
