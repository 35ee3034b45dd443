"""`norm_bias_init="center"`: the heads' LayerNorm bias starts at minus the training split's mean
normalised feature (`alignprobe.probe.training.norm_init`), so features whose shared offset swamps
their variation (mid-depth ViT blocks) stop mapping every image onto one direction."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alignprobe.probe.training import norm_init
from alignprobe.probe.training.config import TrainConfig, resolve_recipe
from alignprobe.probe.training.evaluation import retrieval_scores
from alignprobe.probe.training.heads import AlignmentHead
from alignprobe.probe.training.probe import AlignmentProbe
from alignprobe.probe.training.streaming import EmbeddingStore


def offset_pairs(n=400, d_img=48, d_txt=32, seed=0):
    """Images = a large shared offset + a small signal; captions = a linear map of the signal.
    Like DINOv2-S block 4: |mean| per dim ~ 5x the spread across samples."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal((n, 8))
    offset = rng.uniform(0.5, 1.5, d_img) * rng.choice([-1, 1], d_img)
    images = offset + 0.05 * signal @ rng.standard_normal((8, d_img)) / np.sqrt(8)
    texts = signal @ rng.standard_normal((8, d_txt)) + 0.1 * rng.standard_normal((n, d_txt))
    return images.astype(np.float32), texts.astype(np.float32)


def test_normalized_mean_is_the_mean_layer_norm_of_the_given_rows_only(monkeypatch):
    x = np.random.default_rng(1).standard_normal((50, 6)).astype(np.float32) + 3.0
    rows = np.array([40, 3, 7, 21, 9])
    monkeypatch.setattr(norm_init, "CHUNK_ROWS", 2)  # several chunks give the same mean
    got = norm_init.normalized_mean(EmbeddingStore("x", x), rows)
    want = F.layer_norm(torch.from_numpy(x[rows]).double(), (6,)).mean(0).float()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_centered_head_output_has_zero_mean_on_the_training_rows():
    images, _ = offset_pairs()
    head = AlignmentHead(images.shape[1], 16)
    rows = np.arange(0, 300)
    share, centred = norm_init.center_norm_bias_(head, EmbeddingStore("images", images), rows)
    assert share > 0.9 and centred  # the offset is most of the normalised features: the failure this fixes
    with torch.no_grad():
        normed = head.norm(torch.from_numpy(images))
    assert normed[rows].mean(0).abs().max() < 1e-5
    assert torch.equal(head.norm.weight, torch.ones_like(head.norm.weight))  # only the bias moves


def test_identity_head_has_no_norm_to_center():
    head = AlignmentHead(8, 8, kind="identity")
    assert norm_init.center_norm_bias_(head, EmbeddingStore("x", np.ones((4, 8), np.float32)), np.arange(4)) is None


def test_reference_presets_keep_zeros_and_small_data_records_center():
    assert TrainConfig().norm_bias_init == "zeros" and TrainConfig.preset("sail").norm_bias_init == "zeros"
    config, changes = resolve_recipe("sail-probe", 2_000)
    assert config.norm_bias_init == "center"
    assert any(c["field"] == "norm_bias_init" and c["reference"] == "zeros" for c in changes)
    assert resolve_recipe("sail-probe", 2_000, exact=True)[0].norm_bias_init == "zeros"
    with pytest.raises(Exception, match="norm_bias_init"):
        TrainConfig(norm_bias_init="mean")


def test_fit_centres_on_the_training_split_not_the_held_out_rows():
    images, texts = offset_pairs()
    probe = AlignmentProbe(norm_bias_init="center", epochs=1, lr=1e-12, batch_size=64, val_fraction=0.25,
                           precision="fp32", device="cpu", quiet=True).fit(images, texts)
    train_mean = norm_init.normalized_mean(EmbeddingStore("i", images), probe.train_index_)
    all_mean = norm_init.normalized_mean(EmbeddingStore("i", images), np.arange(len(images)))
    bias = probe.model_.image_head.norm.bias.detach()
    torch.testing.assert_close(bias, -train_mean, rtol=0, atol=1e-6)  # lr 1e-12: still the start value
    assert not torch.allclose(bias, -all_mean, rtol=0, atol=1e-6)
    assert any("LayerNorm bias centred" in line for line in probe.trainer_.notes_)


def test_centering_lets_the_probe_align_offset_features():
    images, texts = offset_pairs()
    train, test = np.arange(320), np.arange(320, 400)
    scores = {}
    for init in ("zeros", "center"):
        probe = AlignmentProbe(norm_bias_init=init, epochs=15, lr=3e-4, batch_size=64, val_fraction=0.1,
                               patience=None, out_dim=64, precision="fp32", device="cpu", quiet=True)
        probe.fit(images[train], texts[train])
        scores[init] = retrieval_scores(probe.transform_image(images[test]), probe.transform_text(texts[test]),
                                        np.arange(len(test)))["i2t_r10"]
    assert scores["center"] > 0.6 and scores["center"] > scores["zeros"] + 0.3, scores


def test_auto_centres_only_the_side_whose_mean_dominates(tmp_path):
    """`norm_bias_init="auto"` (the small-data start of non-linear heads): the offset images (their
    mean holds > 90 % of the LayerNorm output's energy) start centred, the captions (zero-mean) at
    the reference's zeros; the notes and the model file say which."""
    images, texts = offset_pairs()
    probe = AlignmentProbe(norm_bias_init="auto", image_head="star", width=2, epochs=1, lr=1e-12, batch_size=64,
                           val_fraction=0.25, precision="fp32", device="cpu", quiet=True).fit(images, texts)
    train_mean = norm_init.normalized_mean(EmbeddingStore("i", images), probe.train_index_)
    torch.testing.assert_close(probe.model_.image_head.norm.bias.detach(), -train_mean, rtol=0, atol=1e-6)
    assert probe.model_.text_head.norm.bias.abs().max() < 1e-9  # zeros, moved only by one step at lr 1e-12
    assert probe.trainer_.centred_sides_ == probe.norm_bias_centred_ == {"image": True, "text": False}
    # the model file keeps it (the dense-task warning of `segment` reads it), and a reload restores it
    probe.save(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "aligned.json").read_text())["norm_bias_centred"] == {"image": True,
                                                                                             "text": False}
    assert AlignmentProbe.load(tmp_path / "p").norm_bias_centred_ == {"image": True, "text": False}
    notes = probe.trainer_.notes_
    assert any(n.startswith("image LayerNorm bias centred") for n in notes)
    assert any(n.startswith("text LayerNorm bias left at zeros") and "below 90%" in n for n in notes)
    head = AlignmentHead(texts.shape[1], 8)
    share, centred = norm_init.center_norm_bias_(head, EmbeddingStore("t", texts), np.arange(100),
                                                 norm_init.AUTO_CENTER_SHARE)
    assert share < norm_init.AUTO_CENTER_SHARE and not centred and torch.count_nonzero(head.norm.bias) == 0


def test_small_data_recipe_centres_linear_heads_and_starts_others_auto():
    assert resolve_recipe("sail-probe", 2_000, {"device": "cpu"})[0].norm_bias_init == "center"
    assert resolve_recipe("sail-probe", 2_000, {"optimizer": "lion", "device": "cpu"})[0].norm_bias_init == "center"
    star, changes = resolve_recipe("sail", 2_000, {"device": "cpu"})
    assert star.norm_bias_init == "auto"
    assert {"field": "norm_bias_init", "reference": "zeros", "used": "auto",
            "why": "small data: 2,000 pairs < 100,000"} in changes
    assert resolve_recipe("sail-probe", 2_000, {"text_head": "mlp", "device": "cpu"})[0].norm_bias_init == "auto"
