"""Control encoders: baselines that need no download, registered with `is_control=True`.

- `pixels`: the image itself, resized to a small square, normalised, flattened.
- `hog`: histogram of oriented gradients (scikit-image) of the resized grey image.
- `random-vit`: a randomly initialised ViT with a fixed seed; the one place random
  weights are legitimate, because "random features" is what it names.
- `bow`: hashed bag of words, term frequencies, L2-normalised.
Their parameters live in `spec.model_kwargs` and so in the manifest.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import numpy as np
import torch

from alignprobe.errors import ValidationError

from .encoder import Encoder
from .hf_common import versions
from .timm_vision import TimmVisionEncoder, match_img_size
from .spec import CONTROL_POOLING, EncoderSpec, Preprocessing
from .transforms import ImagePreprocessor, as_pil_rgb, check_text, resize_crop


def _params(spec: EncoderSpec, defaults: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(spec.kwargs) - set(defaults))
    if unknown:
        raise ValidationError(
            f"control {spec.name!r} has no parameter(s) {unknown}; it takes {sorted(defaults)}"
        )
    return {**defaults, **spec.kwargs}


def _no_pooling(spec: EncoderSpec) -> None:
    if spec.pooling != CONTROL_POOLING:
        raise ValidationError(
            f"control {spec.name!r} computes its features directly; it takes no pooling (got "
            f"{spec.pooling!r})"
        )


class _CPUControl(Encoder):
    """Controls computed with numpy on the CPU, always in float32."""

    def __init__(self, spec: EncoderSpec, preprocessor: Any, dim: int):
        super().__init__(
            spec.replace(dim=dim), preprocessor, device=torch.device("cpu"), dtype=torch.float32
        )
        self.dim = dim


class PixelsEncoder(_CPUControl):
    def __init__(self, spec: EncoderSpec, *, device=None, dtype=None):
        _no_pooling(spec)
        _params(spec, {})
        size = spec.preprocessing.size
        super().__init__(spec, ImagePreprocessor(spec.preprocessing), 3 * size * size)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.float().flatten(1)


class HogPreprocessor:
    """PIL image -> grey, resized and cropped -> HOG vector (float32 tensor); collate stacks."""

    def __init__(
        self,
        preprocessing: Preprocessing,
        orientations: int,
        pixels_per_cell: int,
        cells_per_block: int,
    ):
        self.preprocessing = preprocessing
        self.orientations = orientations
        self.pixels_per_cell = pixels_per_cell
        self.cells_per_block = cells_per_block

    def preprocess(self, item: Any) -> torch.Tensor:
        from skimage.feature import hog

        img = resize_crop(as_pil_rgb(item, mode="L"), self.preprocessing)
        grey = np.asarray(img, dtype=np.float64) / 255.0
        feats = hog(
            grey,
            orientations=self.orientations,
            pixels_per_cell=(self.pixels_per_cell, self.pixels_per_cell),
            cells_per_block=(self.cells_per_block, self.cells_per_block),
            block_norm="L2-Hys",
            feature_vector=True,
        )
        return torch.from_numpy(feats.astype(np.float32))

    def collate(self, items: list) -> torch.Tensor:
        if not items:
            raise ValidationError("cannot collate an empty list of images")
        return torch.stack(list(items))


class HogEncoder(_CPUControl):
    def __init__(self, spec: EncoderSpec, *, device=None, dtype=None):
        _no_pooling(spec)
        p = _params(spec, {"orientations": 9, "pixels_per_cell": 8, "cells_per_block": 2})
        cells = spec.preprocessing.size // p["pixels_per_cell"]
        blocks = cells - p["cells_per_block"] + 1
        if blocks < 1:
            raise ValidationError(
                f"hog: image size {spec.preprocessing.size} is too small for its cells and blocks"
            )
        dim = blocks * blocks * p["cells_per_block"] ** 2 * p["orientations"]
        super().__init__(
            spec.replace(model_kwargs=p), HogPreprocessor(spec.preprocessing, **p), dim
        )
        self.library_versions.update(versions("skimage"))

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.float()


# sklearn's default token pattern: words of two or more word characters
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


def stable_bucket(token: str, n_features: int) -> int:
    """A hash bucket that does not change between processes or Python versions (unlike `hash`)."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n_features


class BowPreprocessor:
    """str -> prefix + str; collate -> `(n, n_features)` term counts of hashed lower-cased words."""

    def __init__(self, n_features: int, prefix: str = ""):
        self.n_features = n_features
        self.prefix = prefix

    def preprocess(self, item: Any) -> str:
        return self.prefix + check_text(item)

    def collate(self, items: list) -> torch.Tensor:
        if not items:
            raise ValidationError("cannot collate an empty list of texts")
        counts = torch.zeros(len(items), self.n_features, dtype=torch.float32)
        for row, text in enumerate(items):
            for tok in _TOKEN.findall(text.lower()):
                counts[row, stable_bucket(tok, self.n_features)] += 1.0
        return counts


class BowEncoder(_CPUControl):
    def __init__(self, spec: EncoderSpec, *, device=None, dtype=None):
        _no_pooling(spec)
        p = _params(spec, {"n_features": 2048})
        n = p["n_features"]
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValidationError(f"bow: n_features must be a positive int, got {n!r}")
        super().__init__(spec.replace(model_kwargs=p), BowPreprocessor(n, prefix=spec.prefix), n)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        # an empty text has no words and stays the zero vector
        return torch.nn.functional.normalize(batch.float(), dim=1)


def random_vit(spec: EncoderSpec, *, device, dtype) -> Encoder:
    """A timm ViT with seeded random weights (timm's own init), wrapped like any timm encoder."""
    import timm

    p = {"arch": "vit_small_patch16_224", "seed": 0, **spec.kwargs}
    arch, seed = p.pop("arch"), p.pop("seed")
    # fork_rng keeps the caller's global RNG state untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = timm.create_model(arch, pretrained=False, num_classes=0, **p)
    spec = match_img_size(spec.replace(model_kwargs={"arch": arch, "seed": seed, **p}))
    return TimmVisionEncoder(
        spec, model, device=device, dtype=dtype, notes=["random weights (control)"]
    )
