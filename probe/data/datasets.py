"""The data-source contract: one class every reader implements, and two helpers.

A `Dataset` is an indexed list of images with optional captions and labels:

- ``name``: the canonical spec it was opened from (``"shapes:train"``,
  ``"csv:/data/pairs.csv"``); ``ids``: one stable, unique id per image;
- ``load_image(i)`` -> RGB ``PIL.Image``; a missing or undecodable image raises
  `ImageLoadError` so the caller can skip it and count it;
- ``captions(i)`` -> ``[main, *extra_positives]`` or ``[]``;
- ``labels`` (int64 array or None), ``class_names``, ``templates``;
- ``fingerprint()``: a hex digest that changes whenever the images, captions,
  labels, reader settings or a file the spec names (``class_names=FILE``,
  ``templates=FILE``: their contents) change (file sizes and mtimes for image
  files, content and generation parameters for the built-in sets).  It is a
  run's reuse key for the data. ``image_fingerprint()`` leaves out captions,
  labels and the spec's files: image embeddings do not depend on them.

Limits that keep a tiny hostile file from exhausting memory:

- images above `max_image_pixels()` (PIL's own default, 89,478,485 pixels,
  ~9,459 x 9,459; raise it with ``$ALIGNPROBE_MAX_IMAGE_PIXELS``) are refused
  by `decode_image` as a decompression bomb, naming the file, before they are
  decoded;
- captions are cut to `max_caption_chars()` characters (4,096; far beyond any
  caption encoder's context; ``$ALIGNPROBE_MAX_CAPTION_CHARS`` changes it) by
  `flatten_captions`, before anything tokenises them; the number cut is logged;
- labels are mapped through the distinct values present (`index_labels`),
  never a ``range`` up to the largest value.

Datasets hold only plain Python data (lists, arrays, paths) so they pickle
into torch DataLoader worker processes; readers that keep file handles open
them lazily per process.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from alignprobe.errors import DataError, ImageLoadError
from alignprobe.probe.data.templates import load_class_names, load_templates
from alignprobe.console import progress as tqdm

log = logging.getLogger("alignprobe.data")

# Bump when the fingerprint recipe changes, so old caches stop matching.
FINGERPRINT_VERSION = 2

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# What PIL raises for unreadable images: UnidentifiedImageError and truncation
# are OSErrors; broken headers raise SyntaxError/ValueError/EOFError in some plugins.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


#: PIL's own default limit (``PIL.Image.MAX_IMAGE_PIXELS``): 1024 * 1024 * 1024 // 4 // 3 pixels,
#: about 256 MB of RGB; a larger image is refused unless $ALIGNPROBE_MAX_IMAGE_PIXELS raises it.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
ENV_MAX_IMAGE_PIXELS = "ALIGNPROBE_MAX_IMAGE_PIXELS"
#: Far beyond what any caption encoder reads (512 tokens is ~2,000 characters); see `flatten_captions`.
DEFAULT_MAX_CAPTION_CHARS = 4096
ENV_MAX_CAPTION_CHARS = "ALIGNPROBE_MAX_CAPTION_CHARS"


def _env_limit(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip().replace("_", "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise DataError(f"${name}={os.environ[name]!r} must be a positive integer (default {default:,})")
    return value


def max_image_pixels() -> int:
    """The largest image (width x height) decoded: $ALIGNPROBE_MAX_IMAGE_PIXELS, else PIL's default."""
    return _env_limit(ENV_MAX_IMAGE_PIXELS, DEFAULT_MAX_IMAGE_PIXELS)


def max_caption_chars() -> int:
    """How many characters of a caption are kept: $ALIGNPROBE_MAX_CAPTION_CHARS, else 4,096."""
    return _env_limit(ENV_MAX_CAPTION_CHARS, DEFAULT_MAX_CAPTION_CHARS)


def decode_image(source, sample_id: str, path: str):
    """Open `source` (a file path or a binary file object) fully and return it as RGB.

    The pixels are loaded here, not lazily, so a truncated file fails inside
    `load_image` (where the caller expects ImageLoadError) rather than later.
    The size is checked from the header first: an image above `max_image_pixels()`
    is refused (ImageLoadError naming the file and the limit) without decoding it.
    16-bit and 32-bit grey images are scaled to 8 bits (`to_rgb`), not clipped.
    """
    from PIL import Image

    limit = max_image_pixels()
    # PIL's own guard warns between 1x and 2x its limit and decodes anyway; ours refuses at 1x.
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
                if width * height > limit:
                    raise ImageLoadError(sample_id, path, _bomb_reason(width, height, limit))
                img.load()
                return to_rgb(img)
    except FileNotFoundError:
        raise ImageLoadError(sample_id, path, "file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # PIL's own check, made in Image.open from the header ("Image size (N pixels) exceeds limit ...")
        found = re.search(r"\((\d+) pixels\)", str(exc))
        raise ImageLoadError(sample_id, path, _bomb_reason(None, None, limit, int(found.group(1)) if found
                                                           else None)) from None
    except _DECODE_ERRORS as exc:
        raise ImageLoadError(sample_id, path, f"{type(exc).__name__}: {exc}") from None


def _bomb_reason(width: int | None, height: int | None, limit: int, pixels: int | None = None) -> str:
    if width is not None and height is not None:
        pixels = width * height
        size = f"{width} x {height} = {pixels:,} pixels"
    else:
        size = f"{pixels:,} pixels" if pixels is not None else "the image"
    return (f"{size} is above the limit of {limit:,} pixels (a decompression bomb, or a huge image); if the "
            f"image is genuine, raise the limit with {ENV_MAX_IMAGE_PIXELS}={pixels or 2 * limit}")


def to_rgb(img):
    """`img` as an 8-bit RGB image, high-bit-depth grey scaled rather than clipped.

    PIL's ``convert("RGB")`` clips 16-bit grey ("I;16", "I") at 255, so nearly every
    pixel of a 16-bit PNG turns white. Here "I;16*" and "I" images whose values lie
    in 0..65535 are read as 16-bit (divided by 257, so 65535 -> 255); other "I"
    images as 32-bit signed (negative values -> 0); "F" images in [0, 1] are scaled
    by 255 (others are clipped to 0..255, as PIL does).
    """
    from PIL import Image

    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        pixels = np.asarray(img)
        if mode == "F":
            finite = np.nan_to_num(pixels.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
            scale = 255.0 if finite.size and finite.min() >= 0 and finite.max() <= 1.0 else 1.0
            grey = np.clip(np.rint(finite * scale), 0, 255)
        else:
            wide = pixels.astype(np.int64)
            if wide.size and (mode != "I" or (wide.min() >= 0 and wide.max() <= 0xFFFF)):
                grey = np.rint(wide / 257.0)
            else:
                grey = np.clip(wide, 0, None) >> 23  # 0 .. 2^31-1 -> 0..255
        return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")
    return img.convert("RGB")


def index_labels(values) -> tuple[np.ndarray, list]:
    """``(label ids, distinct values)``: each value mapped to its position among the sorted distinct values.

    Labels go through a dictionary of the values present, never a ``range`` up to the
    largest one: a single label 99999999999 is one class, not a hundred billion. Dense
    labels 0..k-1 keep their ids. Values must be all numbers or all strings.
    """
    values = list(values)
    distinct = sorted(set(values))
    index = {v: c for c, v in enumerate(distinct)}
    return np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values)), distinct


class Dataset:
    """Base class of all data sources (see the module docstring for the contract)."""

    kind: str = "dataset"

    def __init__(self, name: str, ids: Iterable[str], *, labels=None,
                 class_keys: list[str] | None = None, class_names: list[str] | None = None,
                 templates: list[str] | None = None, root: str | None = None,
                 split: str | None = None, params: dict[str, Any] | None = None):
        self.name = name
        self.ids = list(ids)
        self.root = root
        self.split = split
        # Reader settings that change what the samples are (columns, split, sizes);
        # they enter the fingerprint.
        self.params = dict(params or {})
        self._check_ids()
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        if self.labels is not None and len(self.labels) != len(self.ids):
            raise DataError(f"{name}: {len(self.labels)} labels for {len(self.ids)} images")
        # Raw class keys (folder names, string labels, "0".."k-1") in label order:
        # what a class-names file is matched against.
        self.class_keys = class_keys
        self.class_names = class_names
        self._check_class_names()
        if templates is None:
            templates = load_templates(None)
        self.templates = list(templates)
        self.templates_source = "default"  # what open_dataset was asked for, for the record
        self._fingerprint: str | None = None
        self._image_fingerprint: str | None = None
        self._content_hash: bytes | None = None
        # role ("class_names", "templates") -> sha256 of the file's bytes, for files the spec names
        self.spec_files: dict[str, str] = {}
        # The class keys are integer label values (str(v)), so names may be listed by label value.
        self.integer_class_keys = False

    # -- the contract ---------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, i: int):
        raise NotImplementedError

    def captions(self, i: int) -> list[str]:
        return []

    @property
    def has_captions(self) -> bool:
        return False

    def fingerprint(self) -> str:
        """Digest of everything: images, ids, labels, captions, reader settings."""
        if self._fingerprint is None:
            h = self._identity_hash()
            if self.labels is not None:
                h.update(b"labels" + self.labels.tobytes())
            self._hash_captions(h)
            if self.spec_files:  # only then, so data without such files keeps its digest
                h.update(b"spec files" + json.dumps(self.spec_files, sort_keys=True).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def add_spec_file(self, role: str, path: str | os.PathLike) -> None:
        """Fold the contents of a file the spec names (`role`: "class_names", "templates") into
        `fingerprint()`, so editing it changes the reuse key of everything computed from this data."""
        try:
            digest = hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
        except OSError as exc:
            raise DataError(f"{self.name}: cannot read the {role} file {path} ({exc.strerror or exc})") from None
        self.spec_files[role] = digest
        self._fingerprint = None

    def image_fingerprint(self) -> str:
        """Digest of what image embeddings depend on: ids, reader settings and the
        image files -- not captions or labels, so editing a caption re-encodes the
        captions only."""
        if self._image_fingerprint is None:
            self._image_fingerprint = self._identity_hash().hexdigest()
        return self._image_fingerprint

    def _identity_hash(self):
        h = hashlib.sha256()
        head = {"kind": self.kind, "version": FINGERPRINT_VERSION, "params": self.params, "split": self.split}
        h.update(json.dumps(head, sort_keys=True, default=str).encode())
        for sid in self.ids:
            h.update(sid.encode("utf-8", "surrogatepass") + b"\x00")
        if self._content_hash is None:  # stat-ing every file once is enough for both digests
            content = hashlib.sha256()
            self._hash_content(content)
            self._content_hash = content.digest()
        h.update(self._content_hash)
        return h

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "n": len(self),
            "root": self.root,
            "split": self.split,
            "fingerprint": self.fingerprint(),
            "has_captions": self.has_captions,
            "n_captions": sum(len(self.captions(i)) for i in range(len(self))) if self.has_captions else 0,
            "has_labels": self.labels is not None,
            "n_classes": self.n_classes,
            "n_templates": len(self.templates),
            "templates": self.templates_source,
        }

    # -- helpers shared by readers ------------------------------------------------
    @property
    def n_classes(self) -> int | None:
        if self.class_names is not None:
            return len(self.class_names)
        if self.class_keys is not None:
            return len(self.class_keys)
        return None

    def set_class_names(self, path: str, encoding: str | None = None) -> None:
        """Replace the class names with those read from a class-names file (`encoding`: None = UTF-8)."""
        if self.labels is None or self.class_keys is None:
            raise DataError(f"{self.name} has no labels, so a class-names file ({path}) "
                            f"cannot apply; drop class_names or use a labelled source")
        self.class_names = load_class_names(path, self.class_keys, what=self._class_key_word(),
                                            encoding=encoding, integer_keys=self.integer_class_keys)
        self._check_class_names()

    def _class_key_word(self) -> str:
        return "classes"

    def validate(self) -> None:
        """Cheap upfront checks for `strict` opening; readers override."""

    def _hash_captions(self, h) -> None:
        if self.has_captions:
            for i in range(len(self)):
                h.update(json.dumps(self.captions(i), ensure_ascii=False).encode() + b"\n")

    def _hash_content(self, h) -> None:
        """Feed what identifies the image bytes (file stats, generation params)."""

    def _check_ids(self) -> None:
        if len(set(self.ids)) != len(self.ids):
            seen, dups = set(), []
            for sid in self.ids:
                if sid in seen:
                    dups.append(sid)
                seen.add(sid)
            raise DataError(f"{self.name}: sample ids are not unique ({dups[:5]!r}); "
                            f"each image must appear once")

    def _check_class_names(self) -> None:
        if self.labels is None or self.n_classes is None or len(self.labels) == 0:
            return
        lo, hi = int(self.labels.min()), int(self.labels.max())
        if lo < 0 or hi >= self.n_classes:
            raise DataError(f"{self.name}: labels range over [{lo}, {hi}] but there are "
                            f"{self.n_classes} classes; labels must be 0..{self.n_classes - 1}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={len(self)})"


class FileDataset(Dataset):
    """Images stored as individual files, with captions and labels held in memory."""

    kind = "files"

    def __init__(self, name: str, ids, paths: list[str], captions: list[list[str]] | None,
                 **kwargs):
        self.paths = [os.fspath(p) for p in paths]
        self._captions = captions
        super().__init__(name, ids, **kwargs)
        if len(self.paths) != len(self.ids):
            raise DataError(f"{name}: {len(self.paths)} paths for {len(self.ids)} ids")
        if captions is not None and len(captions) != len(self.ids):
            raise DataError(f"{name}: {len(captions)} caption lists for {len(self.ids)} ids")

    def load_image(self, i: int):
        return decode_image(self.paths[i], self.ids[i], self.paths[i])

    def captions(self, i: int) -> list[str]:
        if self._captions is None:
            return []
        return list(self._captions[i])

    @property
    def has_captions(self) -> bool:
        return self._captions is not None and any(self._captions)

    def _hash_content(self, h) -> None:
        # Size + mtime rather than file contents: hashing every image of a large
        # set would cost as much as encoding it; a rewritten file changes both.

        big = len(self.paths) >= 50_000  # ~ a second of stat calls or more
        for p in tqdm(self.paths, desc="fingerprinting images", unit="file",
                      disable=None if big else True, leave=False):
            try:
                st = os.stat(p)
                h.update(f"{st.st_size}:{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(b"missing\n")

    def validate(self) -> None:
        """Check that every image file exists and is non-empty (not that it decodes)."""
        bad = []
        for sid, p in zip(self.ids, self.paths):
            try:
                if os.stat(p).st_size == 0:
                    bad.append(f"{p} (empty)")
            except OSError:
                bad.append(f"{p} (missing)")
        if bad:
            raise DataError(f"{self.name}: {len(bad)} of {len(self.paths)} image files are "
                            f"missing or empty, e.g. {bad[:3]}; fix the paths (relative paths "
                            f"resolve against the images root {self.root}) or open without "
                            f"strict to skip them")


def flatten_captions(ds: Dataset) -> tuple[list[str], np.ndarray]:
    """All captions of `ds` in sample order, and for each caption its image row.

    Returns ``(texts, image_index)`` with ``image_index`` an int64 array of
    shape ``(len(texts),)``: ``texts[j]`` describes image ``image_index[j]``.
    Each caption is cut to `max_caption_chars()` characters here, before any
    tokeniser sees it (a 20 MB caption would otherwise be tokenised whole only to
    be truncated to the model's length); how many were cut is logged.
    """
    limit = max_caption_chars()
    texts: list[str] = []
    rows: list[int] = []
    cut, first = 0, None
    for i in range(len(ds)):
        caps = ds.captions(i)
        for c in caps:
            if len(c) > limit:
                cut += 1
                first = first or (ds.ids[i], len(c))
                c = c[:limit]
            texts.append(c)
        rows.extend([i] * len(caps))
    if cut:
        log.warning("%s: %d caption(s) longer than %d characters were cut to that length before tokenising "
                    "(first: sample %r, %d characters); $%s changes the limit",
                    ds.name, cut, limit, first[0], first[1], ENV_MAX_CAPTION_CHARS)
    return texts, np.asarray(rows, dtype=np.int64)


def class_prompts(ds: Dataset) -> tuple[list[str], np.ndarray]:
    """Every template filled with every class name, class-major.

    Returns ``(prompts, class_index)``: ``prompts[c * T + t] ==
    templates[t].format(class_names[c])`` and ``class_index`` (int64, shape
    ``(C * T,)``) gives ``c`` for each prompt.
    """
    if not ds.class_names:
        raise DataError(f"{ds.name} has no class names, so there are no class prompts; use a "
                        f"labelled source or pass class_names=FILE")
    if not ds.templates:
        raise DataError(f"{ds.name} has no prompt templates; pass templates='clip' or a file")
    prompts = [t.format(c) for c in ds.class_names for t in ds.templates]
    index = np.repeat(np.arange(len(ds.class_names), dtype=np.int64), len(ds.templates))
    return prompts, index
