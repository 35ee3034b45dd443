"""`ImagePreprocessor` against timm's own eval transform: the same tensor, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from alignprobe.backbones.spec import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from alignprobe.backbones.transforms import ImagePreprocessor


@pytest.mark.parametrize("size,crop_pct,shape", [(224, 0.875, (64, 64)), (224, 1.0, (90, 61)), (160, 0.9, (37, 300))])
def test_preprocessing_equals_timms_eval_transform_and_leaves_the_image_alone(size, crop_pct, shape):
    from timm.data import create_transform

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    ours = ImagePreprocessor(Preprocessing(size=size, crop_pct=crop_pct, mean=IMAGENET_MEAN, std=IMAGENET_STD))
    theirs = create_transform(input_size=(3, size, size), crop_pct=crop_pct, interpolation="bicubic",
                              mean=IMAGENET_MEAN, std=IMAGENET_STD, is_training=False)
    got = ours.preprocess(image)
    assert got.shape == (3, size, size) and got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, theirs(image))
    assert np.array_equal(np.asarray(image), pixels)  # normalised in place on a copy, never on the image
