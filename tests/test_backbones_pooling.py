"""Poolers against results computed by hand on known hidden states."""

import pytest
import torch
from alignprobe.backbones.pooling import pool_text, pool_vision

from alignprobe.errors import ValidationError


def _tokens():
    # 2 images, tokens [CLS, reg, reg, p1, p2, p3], hidden 2;
    # token t of image i = (10*i + t, -(10*i + t))
    vals = torch.tensor([[10.0 * i + t for t in range(6)] for i in range(2)])
    return torch.stack([vals, -vals], dim=-1)


def test_vision_cls_is_first_token():
    out = pool_vision(_tokens(), "cls", num_prefix_tokens=3)
    assert torch.equal(out, torch.tensor([[0.0, -0.0], [10.0, -10.0]]))


def test_vision_mean_excludes_cls_and_registers():
    out = pool_vision(_tokens(), "mean", num_prefix_tokens=3)
    # patches are tokens 3, 4, 5 -> mean 4 (image 0) and 14 (image 1)
    assert torch.allclose(out, torch.tensor([[4.0, -4.0], [14.0, -14.0]]))


def test_vision_concat_is_cls_then_patch_mean():
    out = pool_vision(_tokens(), "concat", num_prefix_tokens=3)
    assert out.shape == (2, 4)
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 4.0, -4.0], [10.0, -10.0, 14.0, -14.0]]))


def test_vision_mean_without_prefix_uses_every_token():
    out = pool_vision(_tokens(), "mean", num_prefix_tokens=0)
    assert torch.allclose(out[:, 0], torch.tensor([2.5, 12.5]))


def test_vision_cls_refused_without_cls_token():
    with pytest.raises(ValidationError, match="CLS"):
        pool_vision(_tokens(), "cls", num_prefix_tokens=0)
    with pytest.raises(ValidationError, match="CLS"):
        pool_vision(_tokens(), "concat", num_prefix_tokens=0)


def test_vision_pooler_uses_model_output_and_needs_one():
    pooled = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(
        pool_vision(_tokens(), "pooler", num_prefix_tokens=1, pooler_output=pooled), pooled
    )
    with pytest.raises(ValidationError, match="pooled output"):
        pool_vision(_tokens(), "pooler", num_prefix_tokens=1)


def test_vision_feature_map_mean_is_spatial_average():
    fmap = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.allclose(pool_vision(fmap, "mean", num_prefix_tokens=0), fmap.mean(dim=(2, 3)))
    with pytest.raises(ValidationError, match="feature map"):
        pool_vision(fmap, "cls", num_prefix_tokens=0)


def test_vision_pooling_runs_in_float32():
    out = pool_vision(_tokens().half(), "mean", num_prefix_tokens=3)
    assert out.dtype == torch.float32


def _hidden():
    # 3 rows, 4 positions, hidden 1: value = 10*row + position
    return torch.tensor([[[10.0 * r + p] for p in range(4)] for r in range(3)])


RIGHT = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
LEFT = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]])


def test_text_mean_is_mask_weighted():
    out = pool_text(_hidden(), RIGHT, "mean")
    assert torch.allclose(out[:, 0], torch.tensor([1.5, 10.5, 20.0]))
    out = pool_text(_hidden(), LEFT, "mean")
    assert torch.allclose(out[:, 0], torch.tensor([1.5, 12.5, 23.0]))


def test_text_last_right_padding():
    assert torch.equal(pool_text(_hidden(), RIGHT, "last")[:, 0], torch.tensor([3.0, 11.0, 20.0]))


def test_text_last_left_padding():
    assert torch.equal(pool_text(_hidden(), LEFT, "last")[:, 0], torch.tensor([3.0, 13.0, 23.0]))


def test_text_cls_is_first_real_token_on_either_side():
    assert torch.equal(pool_text(_hidden(), RIGHT, "cls")[:, 0], torch.tensor([0.0, 10.0, 20.0]))
    assert torch.equal(pool_text(_hidden(), LEFT, "cls")[:, 0], torch.tensor([0.0, 12.0, 23.0]))


def test_text_pooling_validates_shapes_and_names():
    with pytest.raises(ValidationError, match=r"expected hidden \(n, T, d\) and mask \(n, T\)"):
        pool_text(_hidden(), RIGHT[:, :3], "mean")
    with pytest.raises(ValidationError, match="encode"):
        pool_text(_hidden(), RIGHT, "encode")
