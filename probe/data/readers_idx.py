"""IDX files (the MNIST / Fashion-MNIST format): ``idx:DIR`` and the ``fashion-mnist`` built-in.

An IDX file is a big-endian header -- two zero bytes, a type code, the number
of dimensions -- then one uint32 per dimension and the array
(http://yann.lecun.com/exdb/mnist/, "FILE FORMATS FOR THE MNIST DATABASE").
Files may be gzipped (``.gz``). A directory holds image/label pairs named
``{train,t10k}-images-idx3-ubyte[.gz]`` and ``{train,t10k}-labels-idx1-ubyte[.gz]``;
split ``train`` reads the ``train-`` pair, ``test`` the ``t10k-`` pair, no split
both (train first). Ids are ``train/00042`` / ``t10k/00042``.

Images are decoded once into one uint8 array (70,000 x 28 x 28 is 55 MB) and
served as RGB PIL images at their own size; the encoder's preprocessing resizes
them. ``idx:DIR`` has labels but no captions or class names (classes are "0".."k-1";
give ``class_names=FILE``); the ``fashion-mnist`` built-in names its ten classes
and captions each image from its class name, as the other built-ins do.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from alignprobe.errors import DataError
from alignprobe.probe.data.datasets import Dataset

# IDX type codes (the MNIST page) -> big-endian numpy dtypes
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
IMAGES = "{prefix}-images-idx3-ubyte"
LABELS = "{prefix}-labels-idx1-ubyte"

# Fashion-MNIST (Xiao et al. 2017, github.com/zalandoresearch/fashion-mnist README "Labels")
FASHION_CLASSES = ("t-shirt or top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle boot")
FASHION_TEMPLATES = ["a photo of a {}.", "a black and white photo of a {}.",
                     "a low-resolution photo of a {}.", "a product photo of a {}.",
                     "a grayscale picture of a {}."]
FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian package dataset-fashion-mnist
ENV_DATA = "ALIGNPROBE_DATA"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in one IDX file (gzipped or not), in native byte order."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the IDX file ({type(exc).__name__}: {exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (its header {raw[:4]!r} should be 0x00 0x00, "
                        "a type code and the number of dimensions)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4")) if ndim else ()
    dtype = np.dtype(_DTYPES[raw[2]])
    need = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != need:
        raise DataError(f"{path}: the header says shape {shape} ({need} bytes of data) but the file "
                        f"holds {len(raw) - header}; it is truncated or not an IDX file")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def expected_files(split: str | None) -> list[str]:
    prefixes = [SPLIT_PREFIX[split]] if split else list(SPLIT_PREFIX.values())
    return [t.format(prefix=p) + "[.gz]" for p in prefixes for t in (IMAGES, LABELS)]


def idx_pairs(directory: Path, split: str | None, what: str) -> list[tuple[str, Path, Path]]:
    """(prefix, images file, labels file) for the split; DataError naming the missing files."""
    if split is not None and split not in SPLIT_PREFIX:
        raise DataError(f"{what}: unknown split {split!r}; valid splits: train, test (or none for both)")
    prefixes = [SPLIT_PREFIX[split]] if split else list(SPLIT_PREFIX.values())
    pairs, missing = [], []
    for prefix in prefixes:
        images = _find(directory, IMAGES.format(prefix=prefix))
        labels = _find(directory, LABELS.format(prefix=prefix))
        if images is None:
            missing.append(IMAGES.format(prefix=prefix) + "[.gz]")
        if labels is None:
            missing.append(LABELS.format(prefix=prefix) + "[.gz]")
        pairs.append((prefix, images, labels))
    if missing:
        raise DataError(f"{what}: {directory} lacks {', '.join(missing)} (expected: "
                        f"{', '.join(expected_files(split))})")
    return pairs


class IdxDataset(Dataset):
    """Images and labels of IDX files; captions from class names when `caption_templates`."""

    kind = "idx"

    def __init__(self, name, ids, images: np.ndarray, labels, *, caption_templates=None, **kwargs):
        self._images = images  # (n, h, w) or (n, h, w, 3) uint8
        self._caption_templates = list(caption_templates or [])
        super().__init__(name, ids, labels=labels, **kwargs)

    def load_image(self, i: int):
        from PIL import Image

        pixels = self._images[i]
        img = Image.fromarray(pixels)  # 2-D uint8 -> "L", (h, w, 3) -> "RGB"
        return img.convert("RGB")

    @property
    def has_captions(self) -> bool:
        return bool(self._caption_templates) and self.class_names is not None

    def captions(self, i: int) -> list[str]:
        if not self.has_captions:
            return []
        name = self.class_names[int(self.labels[i])]
        article = "an" if name[0] in "aeiou" else "a"
        return [t.format(name=name, a=article) for t in self._caption_templates]

    def _hash_content(self, h) -> None:
        # the pixels themselves: the same files at another path reuse the same embeddings
        h.update(hashlib.sha256(np.ascontiguousarray(self._images)).digest())


class FashionMnistDataset(IdxDataset):
    kind = "fashion-mnist"


def _load(directory: Path, split: str | None, what: str):
    ids, images, labels = [], [], []
    for prefix, img_file, lbl_file in idx_pairs(directory, split, what):
        x, y = read_idx(img_file), read_idx(lbl_file)
        if x.ndim not in (3, 4) or x.dtype != np.uint8:
            raise DataError(f"{what}: {img_file} holds a {x.dtype} array of shape {x.shape}; images "
                            "must be uint8 (n, height, width) or (n, height, width, 3)")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{what}: {lbl_file} holds {y.shape} labels for the {len(x)} images of "
                            f"{img_file.name}; expected one label per image")
        ids += [f"{prefix}/{k:05d}" for k in range(len(x))]
        images.append(x)
        labels.append(y.astype(np.int64))
    return ids, np.concatenate(images), np.concatenate(labels)


def read_idx_dir(path: str, *, split: str | None = None, name: str | None = None) -> IdxDataset:
    """``idx:DIR``: labelled images of IDX files (see the module docstring)."""
    base = Path(path).expanduser().resolve()
    if not base.is_dir():
        raise DataError(f"idx:{path}: {base} is not a directory (expected one holding "
                        f"{', '.join(expected_files(split))})")
    ids, images, labels = _load(base, split, f"idx:{path}")
    k = int(labels.max()) + 1 if len(labels) else 0
    return IdxDataset(name or f"idx:{base}", ids, images, labels, class_keys=[str(c) for c in range(k)],
                      root=str(base), split=split, params={})


def fashion_mnist_dir() -> Path | None:
    """Where the Fashion-MNIST files are: `$ALIGNPROBE_DATA/fashion-mnist`, `$ALIGNPROBE_DATA`,
    then the Debian package's /usr/share/datasets/fashion-mnist (first with the train images)."""
    candidates = []
    if os.environ.get(ENV_DATA):
        root = Path(os.environ[ENV_DATA]).expanduser()
        candidates += [root / "fashion-mnist", root]
    candidates += [Path(d) for d in FASHION_DIRS]
    for d in candidates:
        if _find(d, IMAGES.format(prefix="train")) or _find(d, IMAGES.format(prefix="t10k")):
            return d
    return None


FASHION_CAPTIONS = ["a photo of {a} {name}", "a black and white photo of {a} {name}",
                    "a small grayscale product picture of {a} {name}"]


def balanced_subset(labels: np.ndarray, ids: list[str], n: int, what: str) -> np.ndarray:
    """Sorted indices of `n` items, as even across classes as possible, each class taking the
    ids with the smallest SHA-1 (stable across runs and NumPy versions)."""
    if n > len(labels):
        raise DataError(f"{what}: n={n} is more than the {len(labels)} images there are")
    classes = np.unique(labels)
    ranked = {c: sorted(np.flatnonzero(labels == c), key=lambda k: hashlib.sha1(ids[k].encode()).digest())
              for c in classes}
    take = {c: 0 for c in classes}
    left = n
    while left:  # round-robin, so small classes give what they have and the rest fill up
        for c in classes:
            if left and take[c] < len(ranked[c]):
                take[c] += 1
                left -= 1
    return np.sort(np.concatenate([np.asarray(ranked[c][: take[c]], dtype=np.int64) for c in classes]))


def read_fashion_mnist(*, split: str | None = None, n: int | None = None,
                       name: str | None = None) -> IdxDataset:
    directory = fashion_mnist_dir()
    if directory is None:
        where = ([f"${ENV_DATA}/fashion-mnist", f"${ENV_DATA}"] if os.environ.get(ENV_DATA) else []) \
            + list(FASHION_DIRS)
        raise DataError(
            "fashion-mnist: the data files are not installed. On Debian/Ubuntu run `sudo apt-get "
            "install dataset-fashion-mnist`, or put the files "
            f"{', '.join(expected_files(split))} (from github.com/zalandoresearch/fashion-mnist) "
            f"in a folder and set {ENV_DATA} to it. Looked in: {', '.join(where)}")
    ids, images, labels = _load(directory, split, "fashion-mnist")
    if n is not None:
        keep = balanced_subset(labels, ids, n, "fashion-mnist")
        ids, images, labels = [ids[k] for k in keep], images[keep], labels[keep]
    return FashionMnistDataset(
        name or ("fashion-mnist" if split is None else f"fashion-mnist:{split}"),
        [f"fashion-mnist/{i}" for i in ids], images, labels,
        caption_templates=FASHION_CAPTIONS, class_keys=list(FASHION_CLASSES),
        class_names=list(FASHION_CLASSES), templates=list(FASHION_TEMPLATES),
        root=str(directory), split=split, params={} if n is None else {"n": n})
