import json
import math

import numpy as np
import pytest
import torch

from alignprobe.errors import NotFittedError, ValidationError
from alignprobe.probe.training.losses import sigmoid_loss
from alignprobe.probe.training.schedules import lr_at, warmup_steps_for
from alignprobe.probe.training.probe import AlignmentProbe, ProbeConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted(n, seed=0, d_img=24, d_txt=16, latent=6, noise=0.3, structure=True):
    """Paired features that share a latent: image = z A + noise, text = z B + noise."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent))
    zt = z if structure else rng.standard_normal((n, latent))
    image = z @ rng.standard_normal((latent, d_img)) + noise * rng.standard_normal((n, d_img))
    text = zt @ rng.standard_normal((latent, d_txt)) + noise * rng.standard_normal((n, d_txt))
    return image.astype(np.float32), text.astype(np.float32)


def small_config(**changes):
    values = dict(out_dim=16, batch_size=128, lr=1e-2, weight_decay=0.0, epochs=8, warmup=2,
                  chunk_size=48, val_fraction=0.2, patience=None, device="cpu", seed=0)
    values.update(changes)
    return ProbeConfig(**values)


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
    probe = AlignmentProbe(small_config(epochs=60, patience=3, lr=3e-2, val_fraction=0.3), quiet=True)
    probe.fit(image, text)
    val_losses = [h["val_loss"] for h in probe.history_]
    assert probe.stopped_early_
    best = int(np.argmin([probe.initial_val_loss_] + val_losses))
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
    assert sorted(p.name for p in (tmp_path / "probe").iterdir()) == ["model.safetensors", "probe.json", "split.safetensors"]
    loaded = AlignmentProbe.load(tmp_path / "probe")
    image, text = data
    np.testing.assert_array_equal(loaded.transform_image(image), fitted.transform_image(image))
    np.testing.assert_array_equal(loaded.transform_text(text), fitted.transform_text(text))
    np.testing.assert_array_equal(loaded.val_index_, fitted.val_index_)
    assert loaded.config_ == fitted.config_ and loaded.history_ == fitted.history_
    assert loaded.metadata_ == {"vision": "tiny-vit", "dataset": "abc123"}
    assert json.loads((tmp_path / "probe" / "probe.json").read_text())["format"].startswith("alignprobe")
    out = loaded.transform_text(torch.from_numpy(text[:3]))
    assert torch.is_tensor(out) and out.shape == (3, 16)


def test_fp16_memmap_read_in_batches_matches_in_memory(data, tmp_path):
    image, text = data
    path = tmp_path / "img.f16"
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=image.shape)
    mm[:] = image
    mm.flush()
    mm = np.memmap(path, dtype=np.float16, mode="r", shape=image.shape)
    streamed = AlignmentProbe(small_config(epochs=2, preload_bytes=0), quiet=True).fit(mm, text)
    in_memory = AlignmentProbe(small_config(epochs=2), quiet=True).fit(image.astype(np.float16).astype(np.float32), text)
    for name, value in streamed.state_dict().items():
        assert torch.equal(value, in_memory.state_dict()[name]), name


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
    with pytest.raises(ValidationError, match="caption_image_index"):
        probe.fit(image, text[:-1])
    bad = image.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValidationError, match="row: 7"):
        probe.fit(bad, text)
    with pytest.raises(ValidationError, match="extra_text_emb"):
        probe.fit(image, text, extra_text_emb=text[:10])
    fitted = AlignmentProbe(small_config(epochs=1), quiet=True).fit(image, text)
    with pytest.raises(ValidationError, match="dimension"):
        fitted.transform_image(text)


def test_config_presets_and_validation():
    recipe = ProbeConfig.sail_probe()
    assert (recipe.out_dim, recipe.batch_size, recipe.lr, recipe.weight_decay, recipe.betas, recipe.epochs) == \
        (2048, 32768, 1e-5, 1e-7, (0.9, 0.99), 100)
    assert (recipe.image_head, recipe.text_head, recipe.optimizer, recipe.normalization) == ("linear", "linear", "adamw", "n2")
    assert recipe.logit_scale_init == pytest.approx(math.log(20)) and recipe.logit_bias_init == -10
    train = ProbeConfig.sail_train()
    assert (train.image_head, train.optimizer, train.out_dim, train.weight_decay) == ("star", "lion", 1024, 1e-4)
    assert ProbeConfig.small_data(500).batch_size == 500
    assert ProbeConfig.auto(5000).lr > recipe.lr and ProbeConfig.auto(10**6) == recipe
    assert ProbeConfig.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    for bad in (dict(lr=0), dict(batch_size=0), dict(image_head="conv"), dict(val_fraction=1.0),
                dict(warmup=1.5), dict(betas=(0.9,)), dict(chunk_size=True), dict(optimizer="sgd")):
        with pytest.raises(ValidationError):
            ProbeConfig(**bad)
    with pytest.raises(ValidationError):
        AlignmentProbe(lr=-1.0)


def test_schedule():
    assert warmup_steps_for(0.1, 200) == 20 and warmup_steps_for(5, 200) == 5
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(99, 100, 1.0, 10, min_lr=0.01) == pytest.approx(0.01)
    assert lr_at(50, 100, 1.0, 10, schedule="constant") == 1.0
