"""Built-in offline data sets, generated in memory: ``shapes`` and ``digits``.

They are the embedded defaults of the demo and the tests, so they open
instantly, need no files and no network, and are deterministic: an image is
drawn from its index alone, so the same index gives the same pixels in every
process and run.

``shapes``
    ``n`` (default 3,000) scenes of ``size`` x ``size`` pixels (default 64),
    each with one coloured shape on a pale background.  The shape's kind
    (circle, square, triangle, diamond, star, cross) is the label; colour,
    size (small/medium/large) and position (a 3 x 3 grid) vary independently,
    so captions are compositional: "a small red triangle in the top left
    corner", plus two paraphrases as extra positives.
``digits``
    scikit-learn's 1,797 handwritten 8 x 8 digits (shipped inside the package),
    upscaled to ``size`` x ``size`` RGB (default 32), dark ink on white;
    captions "a handwritten digit seven" plus two variants; 10 classes.

Splits: ``train`` (80 %) and ``test`` (20 %), stratified by label and fixed by
a hash of each index (not by an RNG whose stream could change between NumPy
versions); no split is the whole set.  Ids are ``shapes/00042`` /
``digits/0042`` whatever the split, so one image keeps one id.

Each set has its own prompt templates (digit or shape prompts, as CLIP uses
per-dataset templates); pass ``templates="clip"`` for the 80 ImageNet ones.
"""
from __future__ import annotations

import hashlib
import math
import random

import numpy as np

from alignprobe.errors import DataError
from alignprobe.probe.data.datasets import Dataset
from alignprobe.probe.data.readers_idx import read_fashion_mnist

# Bump whenever drawing or captions change: it is part of the fingerprint, so
# cached embeddings of the old images stop matching.
GENERATOR_VERSION = 1
SPLITS = ("train", "test")
TRAIN_FRACTION = 0.8

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
COLOURS = {
    "red": (215, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 215),
    "yellow": (235, 200, 30), "purple": (140, 55, 185), "orange": (245, 135, 25),
    "black": (25, 25, 25),
}
SIZES = {"small": (0.07, 0.09), "medium": (0.11, 0.135), "large": (0.16, 0.18)}  # radius / side
ROWS = ("top", "middle", "bottom")
COLS = ("left", "centre", "right")
_CELL = (0.25, 0.5, 0.75)  # cell centres as a fraction of the side
_EXTENT = 1.4  # farthest polygon vertex, in radii (the star's points)

SHAPES_TEMPLATES = ["a {}.", "a photo of a {}.", "a drawing of a {}.", "a {} shape.",
                    "a coloured {} on a plain background."]
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_TEMPLATES = ["a handwritten digit {}.", "a photo of the number {}.",
                    "the digit {} written by hand.", "a blurry image of the number {}."]


class BuiltinDataset(Dataset):
    """A generated set; `indices` are the global indices this split covers."""

    def __init__(self, name, indices, labels, *, prefix, width, **kwargs):
        self.indices = np.asarray(indices, dtype=np.int64)
        ids = [f"{prefix}/{int(k):0{width}d}" for k in self.indices]
        super().__init__(name, ids, labels=np.asarray(labels)[self.indices], **kwargs)

    @property
    def has_captions(self) -> bool:
        return True

    def _hash_content(self, h) -> None:
        h.update(f"generator-v{GENERATOR_VERSION}".encode())


# -- shapes -----------------------------------------------------------------------

def shape_params(index: int, seed: int = 0) -> dict:
    """The scene drawn for `index`: shape, colour, size, grid cell, jitter.

    Uses only ``random.Random.random()`` seeded with a string, whose stream
    Python keeps stable across versions (unlike numpy's or randrange's).
    """
    rng = random.Random(f"alignprobe-shapes-{GENERATOR_VERSION}-{seed}-{index}")

    def pick(seq):
        return seq[min(int(rng.random() * len(seq)), len(seq) - 1)]

    size = pick(tuple(SIZES))
    lo, hi = SIZES[size]
    return {
        "shape": pick(SHAPES), "colour": pick(tuple(COLOURS)), "size": size,
        "row": pick(ROWS), "col": pick(COLS),
        "radius": lo + (hi - lo) * rng.random(),
        "dx": (rng.random() - 0.5) * 0.06, "dy": (rng.random() - 0.5) * 0.06,
        "angle": (rng.random() - 0.5) * 20.0,
        "tint": tuple(int(rng.random() * 30) for _ in range(3)),
        "shade": tuple(int((rng.random() - 0.5) * 40) for _ in range(3)),
    }


def shape_captions(p: dict) -> list[str]:
    """Main caption plus two paraphrases naming colour, shape, size and position."""
    r, c = p["row"], p["col"]
    if r == "middle" and c == "centre":
        where = ["in the centre", "in the middle of the image", "right in the centre"]
    elif r == "middle":
        where = [f"on the {c}", f"on the {c} side of the image", f"toward the {c} edge"]
    elif c == "centre":
        where = [f"at the {r}", f"along the {r} of the image",
                 f"toward the {r} edge, in the middle"]
    else:
        vert = {"top": "upper", "bottom": "lower"}[r]
        where = [f"in the {r} {c} corner", f"in the {vert} {c} part of the image",
                 f"toward the {r} {c}"]
    s, col, sz = p["shape"], p["colour"], p["size"]
    return [f"a {sz} {col} {s} {where[0]}",
            f"{'an' if col[0] in 'aeiou' else 'a'} {col} {s}, {sz}, {where[1]}",
            f"a picture of a {s} that is {col} and {sz}, placed {where[2]}"]


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float):
    def ring(radii, start):
        n = len(radii)
        return [(cx + rad * math.cos(math.radians(start + angle + 360.0 * k / n)),
                 cy + rad * math.sin(math.radians(start + angle + 360.0 * k / n)))
                for k, rad in enumerate(radii)]

    if kind == "square":
        return ring([r * 1.25] * 4, 45)
    if kind == "diamond":
        return ring([r * 1.3] * 4, 0)
    if kind == "triangle":
        return ring([r * 1.35] * 3, -90)
    if kind == "star":
        return ring([r * 1.4, r * 0.55] * 5, -90)
    if kind == "cross":
        a, w = r * 1.25, r * 0.42
        local = [(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w),
                 (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)]
        t = math.radians(angle)
        return [(cx + x * math.cos(t) - y * math.sin(t), cy + x * math.sin(t) + y * math.cos(t))
                for x, y in local]
    raise ValueError(kind)


def draw_shape_scene(p: dict, size: int):
    """Render one scene; drawn at 4x and box-downsampled to get anti-aliased edges."""
    from PIL import Image, ImageDraw

    scale = 4
    side = size * scale
    bg = tuple(225 + t for t in p["tint"])
    img = Image.new("RGB", (side, side), bg)
    draw = ImageDraw.Draw(img)
    fill = tuple(max(0, min(255, v + d)) for v, d in zip(COLOURS[p["colour"]], p["shade"]))
    _draw_shape(draw, p, side, scale, fill)
    return img.reduce(scale)


def _draw_shape(draw, p: dict, side: int, scale: int, fill) -> None:
    r = p["radius"] * side
    # Clamp so large shapes in edge cells stay whole: a clipped shape is a
    # worse training signal than a slightly shifted one.
    lo, hi = r * _EXTENT + scale, side - r * _EXTENT - scale
    cx = min(hi, max(lo, (_CELL[COLS.index(p["col"])] + p["dx"]) * side))
    cy = min(hi, max(lo, (_CELL[ROWS.index(p["row"])] + p["dy"]) * side))
    if p["shape"] == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_shape_polygon(p["shape"], cx, cy, r, p["angle"]), fill=fill)


def draw_shape_mask(p: dict, size: int) -> np.ndarray:
    """The per-pixel label map of `draw_shape_scene(p, size)` (the ``shapes-seg`` masks):
    0 = background, 1 + SHAPES.index(shape) where the shape covers at least half the pixel."""
    from PIL import Image, ImageDraw

    scale = 4
    cover = Image.new("L", (size * scale, size * scale), 0)
    _draw_shape(ImageDraw.Draw(cover), p, size * scale, scale, 255)
    inside = np.asarray(cover.reduce(scale)) >= 128
    return np.where(inside, 1 + SHAPES.index(p["shape"]), 0).astype(np.uint8)


class ShapesDataset(BuiltinDataset):
    kind = "shapes"

    def __init__(self, name, indices, labels, *, size, seed, **kwargs):
        self.size, self.seed = size, seed
        super().__init__(name, indices, labels, prefix="shapes", width=5, **kwargs)

    def load_image(self, i: int):
        return draw_shape_scene(shape_params(int(self.indices[i]), self.seed), self.size)

    def captions(self, i: int) -> list[str]:
        return shape_captions(shape_params(int(self.indices[i]), self.seed))


def make_shapes(*, split: str | None = None, n: int = 3000, size: int = 64, seed: int = 0,
                name: str | None = None) -> ShapesDataset:
    _check_positive(n=n, size=size)
    if size < 16:
        raise DataError(f"shapes: size={size} is too small to draw a recognisable shape; use >= 16")
    labels = np.array([SHAPES.index(shape_params(k, seed)["shape"]) for k in range(n)])
    indices = split_indices(labels, split, "shapes", seed)
    return ShapesDataset(
        name or _builtin_name("shapes", split), indices, labels, size=size, seed=seed,
        class_keys=list(SHAPES), class_names=list(SHAPES), templates=list(SHAPES_TEMPLATES),
        split=split, params={"n": n, "size": size, "seed": seed})


# -- digits -----------------------------------------------------------------------

class DigitsDataset(BuiltinDataset):
    kind = "digits"

    def __init__(self, name, indices, labels, *, images, size, **kwargs):
        self._images = images  # (1797, 8, 8) float, 0 (paper) .. 16 (ink)
        self.size = size
        super().__init__(name, indices, labels, prefix="digits", width=4, **kwargs)
        self._all_labels = np.asarray(labels, dtype=np.int64)

    def load_image(self, i: int):
        from PIL import Image

        k = int(self.indices[i])
        pixels = (255.0 - self._images[k] * (255.0 / 16.0)).round().astype(np.uint8)
        # The digits touch the 8x8 frame; a 1-pixel margin keeps strokes off the border.
        pixels = np.pad(pixels, 1, constant_values=255)
        small = Image.fromarray(pixels)  # 2-D uint8 -> mode "L"
        return small.resize((self.size, self.size), Image.BICUBIC).convert("RGB")

    def captions(self, i: int) -> list[str]:
        d = int(self._all_labels[int(self.indices[i])])
        word = DIGIT_WORDS[d]
        return [f"a handwritten digit {word}", f"a photo of the number {d}",
                f"the digit {word} ({d}) written by hand in dark ink"]

    def _hash_content(self, h) -> None:
        super()._hash_content(h)
        h.update(np.ascontiguousarray(self._images).tobytes())


def make_digits(*, split: str | None = None, size: int = 32,
                name: str | None = None) -> DigitsDataset:
    _check_positive(size=size)
    from sklearn.datasets import load_digits  # heavy: only when digits is opened

    bunch = load_digits()
    labels = np.asarray(bunch.target, dtype=np.int64)
    indices = split_indices(labels, split, "digits", 0)
    return DigitsDataset(
        name or _builtin_name("digits", split), indices, labels, images=bunch.images,
        size=size, class_keys=list(DIGIT_WORDS), class_names=list(DIGIT_WORDS),
        templates=list(DIGITS_TEMPLATES), split=split, params={"size": size})


# -- fashion-mnist ----------------------------------------------------------------

def make_fashion_mnist(*, split: str | None = None, n: int | None = None, name: str | None = None):
    """Fashion-MNIST from its IDX files (the Debian package dataset-fashion-mnist, or
    ``$ALIGNPROBE_DATA``): the official 60,000 / 10,000 train / test files, not a hash split;
    captions from the class names (see `alignprobe.probe.data.readers_idx`). ``n``: a
    class-balanced subset of that many images (the same ones in every run)."""
    if n is not None:
        _check_positive(n=n)
    return read_fashion_mnist(split=split, n=n, name=name)


# -- shared -----------------------------------------------------------------------

def split_indices(labels: np.ndarray, split: str | None, set_name: str, seed: int) -> np.ndarray:
    """Global indices of `split`: per class, the 80 % of indices with the smallest hash."""
    if split is None:
        return np.arange(len(labels))
    if split not in SPLITS:
        raise DataError(f"{set_name}: unknown split {split!r}; valid splits: {', '.join(SPLITS)} "
                        f"(or none for the whole set)")
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = sorted(members, key=lambda k: hashlib.sha1(
            f"{set_name}-{seed}-{int(k)}".encode()).digest())
        cut = int(round(TRAIN_FRACTION * len(members)))
        chosen.extend(order[:cut] if split == "train" else order[cut:])
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _builtin_name(base: str, split: str | None) -> str:
    return base if split is None else f"{base}:{split}"


def _check_positive(**values) -> None:
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise DataError(f"{key} must be a positive integer, got {v!r}")
