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
them. ``idx:DIR`` has labels but no captions or class names (the classes are the
label values present, "0".."9" for MNIST; give ``class_names=FILE``); the
``fashion-mnist`` built-in names its ten classes and captions each image from
its class name, as the other built-ins do.

A file is read as a stream: the header first, then exactly the bytes its shape
needs. A shape whose size is impossible (beyond what the file -- for a gzip file,
its compressed size times deflate's maximum ratio -- can hold) is refused before
anything is inflated, and data beyond the shape is an error found after reading
one byte more, not by inflating the rest. Labels stored as floats must be whole
numbers (0.9 is refused, not truncated to 0).
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from pathlib import Path

import numpy as np

from alignprobe.errors import DataError
from alignprobe.probe.data.datasets import Dataset, index_labels

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


# Deflate cannot expand data more than 1032:1 (RFC 1951: a 258-byte match costs at least 2 bits),
# so a gzip file of c bytes cannot inflate to more than ~1032 * c; 1100 leaves room for headers.
_MAX_DEFLATE_RATIO = 1100
_CHUNK = 1 << 24


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in one IDX file (gzipped or not), in native byte order.

    Streams the file: the header is checked before the data is read, and only as
    many bytes as the shape needs are ever inflated (see the module docstring).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return _read_idx_stream(f, path)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read the IDX file ({type(exc).__name__}: {exc})") from None


def _read_exact(f, n: int) -> bytearray:
    """Up to `n` bytes of `f`, fewer only at the end of the stream; memory grows with what is read."""
    out = bytearray()
    while len(out) < n:
        chunk = f.read(min(_CHUNK, n - len(out)))
        if not chunk:
            break
        out += chunk
    return out


def _read_idx_stream(f, path: Path) -> np.ndarray:
    magic = f.read(4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (its header {bytes(magic)!r} should be 0x00 0x00, "
                        "a type code and the number of dimensions)")
    ndim = magic[3]
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path}: the IDX header names {ndim} dimensions but the file ends inside the header")
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4")) if ndim else ()
    dtype = np.dtype(_DTYPES[magic[2]])
    need = math.prod(shape) * dtype.itemsize  # Python ints: no overflow, whatever the header says
    header = 4 + 4 * ndim
    stored = os.path.getsize(path)
    gz = path.suffix == ".gz"
    ceiling = stored * _MAX_DEFLATE_RATIO if gz else stored - header
    if need > ceiling or need > np.iinfo(np.int64).max:
        held = (f"a {stored:,}-byte gzip file can inflate to at most ~{ceiling:,}" if gz
                else f"the file holds {max(stored - header, 0):,}")
        raise DataError(f"{path}: the IDX header says shape {shape} ({need:,} bytes of data) but {held}; "
                        "it is truncated, its header is damaged, or it is not an IDX file")
    raw = _read_exact(f, need)
    if len(raw) != need:
        raise DataError(f"{path}: the header says shape {shape} ({need:,} bytes of data) but the file "
                        f"holds {len(raw):,}; it is truncated or not an IDX file")
    if f.read(1):
        raise DataError(f"{path}: the header says shape {shape} ({need:,} bytes of data) but the file "
                        "holds more; it is damaged or not an IDX file")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def integral_labels(y: np.ndarray, where: str) -> np.ndarray:
    """`y` as int64, refusing labels that are not whole numbers (0.9 is not silently class 0)."""
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (y != np.round(y)) if y.size else np.zeros(0, bool)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise DataError(f"{where}: label {k} is {float(y[k])!r}, not a whole number; labels stored as "
                            f"floats must be integral class ids ({int(bad.sum())} are not)")
        if y.size and (y.min() < np.iinfo(np.int64).min or y.max() > np.iinfo(np.int64).max):
            raise DataError(f"{where}: labels reach {float(np.abs(y).max())!r}, beyond 64-bit integers")
    return y.astype(np.int64)


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
        labels.append(integral_labels(y, f"{what}: {lbl_file}"))
    return ids, np.concatenate(images), np.concatenate(labels)


def read_idx_dir(path: str, *, split: str | None = None, name: str | None = None) -> IdxDataset:
    """``idx:DIR``: labelled images of IDX files (see the module docstring)."""
    base = Path(path).expanduser().resolve()
    if not base.is_dir():
        raise DataError(f"idx:{path}: {base} is not a directory (expected one holding "
                        f"{', '.join(expected_files(split))})")
    ids, images, raw = _load(base, split, f"idx:{path}")
    # The distinct values present, never range(max + 1): one label 2**31-1 is one class.
    labels, values = index_labels(raw.tolist())
    ds = IdxDataset(name or f"idx:{base}", ids, images, labels, class_keys=[str(v) for v in values],
                    root=str(base), split=split, params={})
    ds.integer_class_keys = True
    return ds


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
