"""Input preparation that runs in DataLoader workers: small, picklable, CPU-only objects.

Each preprocessor has `preprocess(item)` (one image or string) and
`collate(items)` (a list of preprocessed items -> one batch). They hold no
model, so a DataLoader can pickle them into worker processes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alignprobe.errors import ValidationError

from .spec import Preprocessing


def pil_resample(name: str) -> int:
    """PIL's resampling filter for an interpolation name of `Preprocessing`."""
    from PIL import Image

    return {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
        "box": Image.Resampling.BOX,
        "hamming": Image.Resampling.HAMMING,
    }[name]


def as_pil_rgb(item: Any, mode: str = "RGB"):
    """A PIL image in `mode` from a PIL image or an (H, W[, C]) uint8 array."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return item if item.mode == mode else item.convert(mode)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim in (2, 3):
        return Image.fromarray(item).convert(mode)
    raise ValidationError(
        f"an image must be a PIL.Image or an (H, W, 3) uint8 numpy array, got {type(item).__name__}"
        + (f" of dtype {item.dtype} and shape {item.shape}" if isinstance(item, np.ndarray) else "")
    )


def resize_crop(img, pre: Preprocessing):
    """Resize then center-crop as torchvision's Resize(int) + CenterCrop (timm's eval transform)."""
    resample = pil_resample(pre.interpolation)
    if pre.crop_mode == "squash":
        return img.resize((pre.size, pre.size), resample=resample)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short = pre.resize_size
    new_long = int(new_short * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=resample)
    top = int(round((new_h - pre.size) / 2.0))
    left = int(round((new_w - pre.size) / 2.0))
    return img.crop((left, top, left + pre.size, top + pre.size))


class ImagePreprocessor:
    """PIL image -> normalised `(3, size, size)` float32 tensor; collate stacks."""

    def __init__(self, preprocessing: Preprocessing):
        if not isinstance(preprocessing, Preprocessing):
            raise ValidationError(
                f"ImagePreprocessor needs a Preprocessing, got {type(preprocessing).__name__}"
            )
        self.preprocessing = preprocessing

    def preprocess(self, item: Any):
        import torch

        pre = self.preprocessing
        img = resize_crop(as_pil_rgb(item), pre)
        # A fresh float32 copy of the uint8 pixels, scaled and normalised in place: the same float
        # operations in the same order as (x / 255 - mean) / std, bit for bit, without two temporaries
        # (0.67 against 0.80-0.98 ms an image at 224 px).
        arr = np.array(img, dtype=np.float32)  # np.array always copies: the image is never written
        arr /= 255.0
        arr -= np.asarray(pre.mean, np.float32)
        arr /= np.asarray(pre.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def collate(self, items: list):
        import torch

        if not items:
            raise ValidationError("cannot collate an empty list of images")
        return torch.stack(list(items))

    def __repr__(self) -> str:
        return f"ImagePreprocessor({self.preprocessing})"


def check_text(item: Any) -> str:
    if not isinstance(item, str):
        raise ValidationError(f"a text item must be a str, got {type(item).__name__}")
    return item


class TokenizerPreprocessor:
    """str -> prefix + str; collate tokenizes (padding, truncation) into a dict of int tensors."""

    def __init__(self, tokenizer, *, prefix: str = "", max_length: int | None = None):
        self.tokenizer = tokenizer
        self.prefix = prefix
        self.max_length = max_length

    def preprocess(self, item: Any) -> str:
        return self.prefix + check_text(item)

    def collate(self, items: list) -> dict:
        if not items:
            raise ValidationError("cannot collate an empty list of texts")
        enc = self.tokenizer(
            list(items),
            padding=True,
            truncation=self.max_length is not None,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v for k, v in enc.items()}

    def __repr__(self) -> str:
        return f"TokenizerPreprocessor(prefix={self.prefix!r}, max_length={self.max_length})"


class TextPassthrough:
    """str -> prefix + str; collate keeps the list: the model tokenizes (model-native encode)."""

    def __init__(self, *, prefix: str = ""):
        self.prefix = prefix

    def preprocess(self, item: Any) -> str:
        return self.prefix + check_text(item)

    def collate(self, items: list) -> list[str]:
        if not items:
            raise ValidationError("cannot collate an empty list of texts")
        return list(items)

    def __repr__(self) -> str:
        return f"TextPassthrough(prefix={self.prefix!r})"
