"""The reference's segmentation variant of the last block (SAIL model/dinoforseg.py).

A tiny DINOv2 saved to disk and loaded the real way; each variant is checked against the
block written out by hand from the same weights, and the unchanged variant against the
model's own outputs.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from alignprobe.backbones import create_vision_encoder
from alignprobe.backbones.dense_block import dense_tokens
from alignprobe.errors import ValidationError
from helpers import save_hf_vision


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # a layer scale away from 1 so that a variant which skipped it would show
    return save_hf_vision(tmp_path_factory.mktemp("dense") / "dinov2", layerscale_value=0.5)


def _image(seed=0):
    rng = np.random.RandomState(seed)
    return Image.fromarray((rng.rand(32, 32, 3) * 255).astype(np.uint8))


def _by_hand(model, x, *, qq: bool, skip_mlp: bool, final_norm=True):
    """The last block recomputed from the written-out DINOv2 equations."""
    with torch.inference_mode():
        h = model(pixel_values=x, output_hidden_states=True).hidden_states[-2]
        blk = model.encoder.layer[-1]
        a = blk.attention
        y = blk.norm1(h)
        n, t, d = y.shape
        heads = model.config.num_attention_heads
        q = a.q_proj(y).view(n, t, heads, -1).transpose(1, 2)
        k = q if qq else a.k_proj(y).view(n, t, heads, -1).transpose(1, 2)
        v = a.v_proj(y).view(n, t, heads, -1).transpose(1, 2)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        att = a.o_proj((w @ v).transpose(1, 2).reshape(n, t, d))
        h = h + blk.layer_scale1(att)
        out = blk.norm2(h) if skip_mlp else h + blk.layer_scale2(blk.mlp(blk.norm2(h)))
        return model.layernorm(out) if final_norm else out


def test_unchanged_variant_equals_the_model(tiny):
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(tiny).eval()
    enc = create_vision_encoder(tiny, pooling="concat")
    x = enc.collate([enc.preprocess(_image())])
    with torch.inference_mode():
        expect = model(pixel_values=x).last_hidden_state
        got = dense_tokens(model, x, block=None, attention="qk", skip_mlp=False)
    assert torch.allclose(got, expect, atol=1e-5)
    assert torch.allclose(_by_hand(model, x, qq=False, skip_mlp=False), expect, atol=1e-5)


@pytest.mark.parametrize("qq,skip", [(True, False), (False, True), (True, True)])
def test_encode_patches_with_the_changed_last_block(tiny, qq, skip):
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(tiny).eval()
    enc = create_vision_encoder(tiny, pooling="concat")
    img = _image(1)
    x = enc.collate([enc.preprocess(img)])
    expect = _by_hand(model, x, qq=qq, skip_mlp=skip)
    grid, prefix = enc.encode_patches([img], return_prefix=True,
                                      last_attention="qq" if qq else "qk", skip_last_mlp=skip)
    assert grid.shape == (1, 4, 4, 32)
    assert torch.allclose(prefix[0, 0], expect[0, 0], atol=1e-5)
    assert torch.allclose(grid.reshape(1, 16, 32), expect[:, 1:], atol=1e-5)
    plain = enc.encode_patches([img])
    assert not torch.allclose(grid, plain, atol=1e-3)  # the change really changes the tokens


def test_a_layer_view_changes_its_own_block_without_the_final_norm(tiny):
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(tiny).eval()
    enc = create_vision_encoder(tiny, pooling="concat", layer=2)
    img = _image(2)
    x = enc.collate([enc.preprocess(img)])
    expect = _by_hand(model, x, qq=True, skip_mlp=False, final_norm=False)
    grid = enc.encode_patches([img], last_attention="qq")
    assert torch.allclose(grid.reshape(1, 16, 32), expect[:, 1:], atol=1e-5)


def test_bad_settings_and_unsupported_encoders_are_refused(tiny, tmp_path):
    import timm

    enc = create_vision_encoder(tiny, pooling="concat")
    with pytest.raises(ValidationError, match="not one of qk, qq"):
        enc.encode_patches([_image()], last_attention="kk")
    kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **kw)
    torch.save(model.state_dict(), tmp_path / "tiny.pth")
    timm_enc = create_vision_encoder("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "tiny.pth",
                                     pooling="concat", **kw)
    with pytest.raises(ValidationError, match="transformers DINOv2"):
        timm_enc.encode_patches([_image()], last_attention="qq")
