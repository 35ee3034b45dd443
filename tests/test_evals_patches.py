"""encode_patches: the patch tokens of tiny ViTs (built from configs, saved, loaded back)."""
import pytest
import torch

from alignprobe.backbones import create_vision_encoder
from alignprobe.errors import ValidationError
from helpers import images, save_hf_vision, timm_vit


@pytest.fixture(scope="module")
def dinov2_reg_dir(tmp_path_factory):
    return save_hf_vision(tmp_path_factory.mktemp("dinov2reg"), "dinov2_reg", num_register_tokens=2)


def test_transformers_patches_are_the_last_hidden_state_patch_tokens(dinov2_reg_dir):
    from transformers import Dinov2WithRegistersModel

    enc = create_vision_encoder(dinov2_reg_dir, pooling="concat")
    imgs = images(2)
    grid, prefix = enc.encode_patches(imgs, return_prefix=True)
    assert grid.shape == (2, 4, 4, 32) and prefix.shape == (2, 3, 32)  # CLS + 2 registers
    x = enc.collate([enc.preprocess(im) for im in imgs])
    with torch.inference_mode():
        h = Dinov2WithRegistersModel.from_pretrained(dinov2_reg_dir).eval()(
            pixel_values=x).last_hidden_state
    assert torch.allclose(grid, h[:, 3:].reshape(2, 4, 4, 32), atol=1e-5)
    assert torch.allclose(prefix[:, 0], h[:, 0], atol=1e-5)
    # row-major grid: token 3 + 4*r + c is patch (r, c)
    assert torch.allclose(grid[1, 2, 1], h[1, 3 + 4 * 2 + 1], atol=1e-5)
    # the pooled embedding is built from the same tokens
    z = enc.encode(imgs)
    assert torch.allclose(z, torch.cat([prefix[:, 0], grid.flatten(1, 2).mean(1)], 1), atol=1e-5)
    # a ready input batch gives the same
    assert torch.allclose(enc.encode_patches(x), grid, atol=1e-6)


def test_timm_patches_are_forward_features_patch_tokens(tmp_path):
    from timm.models._hub import save_for_hf

    model, _ = timm_vit()
    save_for_hf(model, tmp_path / "export", safe_serialization=True)
    enc = create_vision_encoder(tmp_path / "export", pooling="mean")
    imgs = images(2)
    grid = enc.encode_patches(imgs)
    with torch.inference_mode():
        feats = model.forward_features(enc.collate([enc.preprocess(im) for im in imgs]))
    assert grid.shape == (2, 4, 4, 32)
    assert torch.allclose(grid, feats[:, 1:].reshape(2, 4, 4, 32), atol=1e-5)


def test_encoders_without_patch_tokens_say_so():
    with pytest.raises(ValidationError, match="no patch tokens"):
        create_vision_encoder("pixels").encode_patches(images(1))
