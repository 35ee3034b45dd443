"""Semantic-segmentation sets: ``seg:DIR`` (VOC / ADE20K / plain layouts) and ``shapes-seg``.

Spec syntax (as `alignprobe.probe.data.spec`, a kind of its own because a segmentation set
has a label map per image rather than captions or one label)::

    seg:DIR[?split=S&classes=FILE&reduce_zero_label=0|1&encoding=CODEC]
    shapes-seg[:SPLIT][?n=N&size=PX&seed=K&reduce_zero_label=0|1]

``seg:DIR`` layouts, recognised in this order:

- VOC: ``DIR/JPEGImages/<id>.jpg`` and ``DIR/SegmentationClass/<id>.png``; with a split the
  ids come from ``DIR/ImageSets/Segmentation/<split>.txt``;
- ADE20K: ``DIR/images/<split>/<id>.jpg`` and ``DIR/annotations/<split>/<id>.png`` (split
  default ``validation``);
- plain: ``DIR/images/<id>.<ext>`` and ``DIR/masks/<id>.png`` (or ``DIR/annotations``).

Masks are single-channel PNGs of class indices (palette "P" PNGs as VOC ships them, or "L"),
255 = ignore. ``reduce_zero_label`` (mmseg's): label 0 becomes ignore and every other label
moves down by one; it defaults to on for the VOC and ADE20K layouts, as SAIL evaluates VOC20
and ADE20K (``evaluation/custom_datasets.py`` PascalVOC20Dataset, ``seg_configs/
cfg_ade20k_SAIL.py``), and off for the plain layout.

The class-names file (``classes=FILE``, else ``DIR/classes.txt`` or ``DIR/class_names.txt``)
has one class per line in label order; a line may list comma-separated synonyms, each a
prompt of its own whose best score stands for the class (SAIL's ``seg_configs/cls_*.txt``
read by ``get_cls_idx`` in ``evaluation/seg_eval.py``). It and a VOC split list are read as
UTF-8 (a BOM allowed) unless ``encoding=`` names another codec (``latin-1``...); a file that
does not decode fails naming the file, the byte and the fix, as every reader's does.

A mask must have its image's size; one that does not is an error naming both files.

``shapes-seg``: the built-in ``shapes`` scenes (same indices, pixels and splits) with their
per-pixel masks; classes ``background`` (0) and the six shapes (1..6); prompts from the
``shapes`` templates, as its zero-shot classification uses. With ``reduce_zero_label=1`` the
background is ignored and the shapes are classes 0..5, the object-only protocol SAIL scores
VOC20 with (no background query, every shape pixel labelled with a shape).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from alignprobe.errors import DataError, ImageLoadError
from alignprobe.io import check_encoding, read_text
from alignprobe.probe.data import builtin_sets
from alignprobe.probe.data.datasets import IMAGE_EXTENSIONS, decode_image
from alignprobe.probe.data.spec import split_query

IGNORE_INDEX = 255
SEG_KINDS = ("seg", "shapes-seg")
_SEG_KEYS = {"seg": ("split", "classes", "reduce_zero_label", "encoding"),
             "shapes-seg": ("split", "n", "size", "seed", "reduce_zero_label")}


class SegmentationDataset:
    """Images with label maps. ``class_names[c]`` names class ``c``; ``class_queries[c]`` are
    its prompt words (synonyms); ``load_mask(i)`` -> ``(H, W)`` int64 with `ignore_index`."""

    kind = "segmentation"

    def __init__(self, name: str, ids: list[str], class_queries: list[list[str]], *,
                 ignore_index: int = IGNORE_INDEX, templates: list[str] | None = None):
        self.name = name
        # prompt templates of the set's own (None: the evaluation's default, CLIP's 80)
        self.templates = None if templates is None else list(templates)
        self.ids = list(ids)
        if not class_queries or not all(class_queries):
            raise DataError(f"{name}: no class names; give one line per class")
        self.class_queries = [list(q) for q in class_queries]
        self.class_names = [q[0] for q in self.class_queries]
        self.ignore_index = ignore_index

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, i: int):
        raise NotImplementedError

    def load_mask(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "n": len(self),
                "n_classes": self.num_classes, "ignore_index": self.ignore_index}


class FileSegmentationDataset(SegmentationDataset):
    kind = "seg"

    def __init__(self, name, ids, image_paths, mask_paths, class_queries, *,
                 reduce_zero_label: bool):
        super().__init__(name, ids, class_queries)
        self.image_paths = [os.fspath(p) for p in image_paths]
        self.mask_paths = [os.fspath(p) for p in mask_paths]
        self.reduce_zero_label = reduce_zero_label

    def load_image(self, i: int):
        return decode_image(self.image_paths[i], self.ids[i], self.image_paths[i])

    def load_mask(self, i: int) -> np.ndarray:
        from PIL import Image

        path = self.mask_paths[i]
        try:
            with Image.open(path) as im:
                im.load()
                if im.mode not in ("P", "L", "I", "I;16"):
                    raise DataError(
                        f"{self.name}: mask {path} is a {im.mode!r} image; label masks must be "
                        "single-channel PNGs of class indices (palette 'P' or grey 'L')")
                mask = np.asarray(im).astype(np.int64)
        except OSError as exc:
            raise ImageLoadError(self.ids[i], path, f"{type(exc).__name__}: {exc}") from None
        self._check_size(i, mask.shape)
        if self.reduce_zero_label:  # mmseg LoadAnnotations(reduce_zero_label=True)
            mask = np.where(mask == 0, IGNORE_INDEX, mask - 1)
            mask[mask == IGNORE_INDEX - 1] = IGNORE_INDEX
        bad = (mask != IGNORE_INDEX) & ((mask < 0) | (mask >= self.num_classes))
        if bad.any():
            raise DataError(
                f"{self.name}: mask {path} holds label {int(mask[bad][0])} but the class-names "
                f"file has {self.num_classes} classes; check the file (or reduce_zero_label)")
        return mask

    def _check_size(self, i: int, shape) -> None:
        """The mask must cover its image pixel for pixel; reads only the image's header."""
        from PIL import Image

        image = self.image_paths[i]
        try:
            with Image.open(image) as im:
                width, height = im.size
        except (OSError, ValueError, SyntaxError, EOFError):
            return  # an unreadable image is reported by load_image, naming it
        if tuple(shape[:2]) != (height, width):
            raise DataError(f"{self.name}: mask {self.mask_paths[i]} is {shape[1]} x {shape[0]} pixels but its "
                            f"image {image} is {width} x {height}; a label mask must have its image's size "
                            f"(re-export the mask, or check that the two files belong together)")


class ShapesSegDataset(SegmentationDataset):
    kind = "shapes-seg"

    def __init__(self, name, indices, *, size, seed, reduce_zero_label: bool = False):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.size, self.seed = size, seed
        self.reduce_zero_label = bool(reduce_zero_label)
        background = [] if self.reduce_zero_label else [["background"]]
        super().__init__(name, [f"shapes/{int(k):05d}" for k in self.indices],
                         background + [[s] for s in builtin_sets.SHAPES],
                         templates=builtin_sets.SHAPES_TEMPLATES)

    def load_image(self, i: int):
        p = builtin_sets.shape_params(int(self.indices[i]), self.seed)
        return builtin_sets.draw_shape_scene(p, self.size)

    def load_mask(self, i: int) -> np.ndarray:
        p = builtin_sets.shape_params(int(self.indices[i]), self.seed)
        mask = builtin_sets.draw_shape_mask(p, self.size).astype(np.int64)
        if self.reduce_zero_label:  # as mmseg's LoadAnnotations(reduce_zero_label=True)
            mask = np.where(mask == 0, IGNORE_INDEX, mask - 1)
        return mask


def make_shapes_seg(*, split: str | None = None, n: int = 3000, size: int = 64, seed: int = 0,
                    reduce_zero_label: bool = False,
                    name: str | None = None) -> ShapesSegDataset:
    """The images of ``make_shapes`` (same arguments, same split) with their masks;
    ``reduce_zero_label``: background ignored, shapes 0..5 (the module docstring)."""
    shapes = builtin_sets.make_shapes(split=split, n=n, size=size, seed=seed)
    head = "shapes-seg" if split is None else f"shapes-seg:{split}"
    if reduce_zero_label:
        head += "?reduce_zero_label=1"
    return ShapesSegDataset(name or head, shapes.indices, size=size, seed=seed,
                            reduce_zero_label=reduce_zero_label)


def read_class_queries(path: str | Path, encoding: str | None = None) -> list[list[str]]:
    """One class a line, comma-separated synonyms (SAIL ``evaluation/seg_eval.py`` get_cls_idx);
    `encoding` None: UTF-8, a BOM allowed."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"class-names file {p} does not exist; write one class per line in "
                        "label order (synonyms separated by commas)")
    out = []
    for lineno, line in enumerate(read_text(p, encoding, spec_key=False).splitlines(), 1):
        if not line.strip():
            continue
        words = [w.strip() for w in line.split(",")]
        if not all(words):
            raise DataError(f"{p}:{lineno}: an empty class name in {line!r}")
        out.append(words)
    if not out:
        raise DataError(f"class-names file {p} is empty")
    return out


def read_seg_dir(path: str | Path, *, split: str | None = None, classes: str | None = None,
                 reduce_zero_label: bool | None = None,
                 name: str | None = None, encoding: str | None = None) -> FileSegmentationDataset:
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"seg:{path}: {root} is not a directory")
    if encoding is not None:
        check_encoding(encoding, f"seg:{path}")
    layout, image_dir, mask_dir, ids = _layout(root, split, encoding)
    if reduce_zero_label is None:
        reduce_zero_label = layout in ("voc", "ade")
    class_file = Path(classes).expanduser() if classes else next(
        (root / f for f in ("classes.txt", "class_names.txt") if (root / f).is_file()), None)
    if class_file is None:
        raise DataError(f"seg:{path}: no class-names file; put classes.txt in {root} or pass "
                        "classes=FILE (one class per line in label order)")
    images = _index_images(image_dir)
    if ids is None:
        ids = sorted(p.stem for p in mask_dir.iterdir() if p.suffix.lower() == ".png")
    image_paths, mask_paths = [], []
    for i in ids:
        if i not in images:
            raise DataError(f"seg:{path}: mask {i!r} has no image in {image_dir}")
        mask = mask_dir / f"{i}.png"
        if not mask.is_file():
            raise DataError(f"seg:{path}: image {i!r} has no mask {mask}")
        image_paths.append(images[i])
        mask_paths.append(mask)
    if not ids:
        raise DataError(f"seg:{path}: no PNG masks in {mask_dir}")
    return FileSegmentationDataset(name or f"seg:{root}", ids, image_paths, mask_paths,
                                   read_class_queries(class_file, encoding),
                                   reduce_zero_label=bool(reduce_zero_label))


def _layout(root: Path, split: str | None, encoding: str | None = None):
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        ids = None
        if split is not None:
            listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
            if not listing.is_file():
                raise DataError(f"seg:{root}: split {split!r} needs {listing}")
            ids = [ln.strip() for ln in read_text(listing, encoding, spec_key=False).splitlines() if ln.strip()]
        return "voc", root / "JPEGImages", root / "SegmentationClass", ids
    if (root / "images").is_dir() and (root / "annotations").is_dir() and (
            split is not None or (root / "annotations" / "validation").is_dir()):
        split = split or "validation"
        image_dir, mask_dir = root / "images" / split, root / "annotations" / split
        if not (image_dir.is_dir() and mask_dir.is_dir()):
            raise DataError(f"seg:{root}: split {split!r} needs {image_dir} and {mask_dir}")
        return "ade", image_dir, mask_dir, None
    if (root / "images").is_dir():
        for masks in ("masks", "annotations"):
            if (root / masks).is_dir():
                if split is not None:
                    raise DataError(f"seg:{root}: the plain images/{masks} layout has no splits")
                return "plain", root / "images", root / masks, None
    raise DataError(f"seg:{root}: unknown layout; expected JPEGImages/ + SegmentationClass/ "
                    "(VOC), images/<split>/ + annotations/<split>/ (ADE20K), or images/ + "
                    "masks/")


def _index_images(image_dir: Path) -> dict[str, str]:
    out = {}
    for p in sorted(image_dir.iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            out.setdefault(p.stem, str(p))
    return out


def is_segmentation_spec(spec: str) -> bool:
    text = str(spec).strip()
    return text.split("?")[0].split(":")[0] in SEG_KINDS


def open_segmentation(spec: str) -> SegmentationDataset:
    """Open ``seg:DIR[?...]`` or ``shapes-seg[:split][?...]`` (syntax in the module docstring)."""
    body, query = split_query(str(spec).strip())
    kind, _, target = body.partition(":")
    if kind not in SEG_KINDS:
        raise DataError(f"segmentation data spec {spec!r}: write seg:DIR (VOC / ADE20K / "
                        "images+masks layout) or shapes-seg[:train|test]")
    unknown = sorted(set(query) - set(_SEG_KEYS[kind]))
    if unknown:
        raise DataError(f"segmentation data spec {spec!r}: unknown key(s) {unknown}; valid "
                        f"keys: {', '.join(_SEG_KEYS[kind])}")
    rzl = query.pop("reduce_zero_label", None)
    if rzl is not None and rzl not in ("0", "1", "true", "false"):
        raise DataError(f"segmentation data spec {spec!r}: reduce_zero_label must be 0 or 1")
    if kind == "shapes-seg":
        split = target or query.pop("split", None)
        try:
            ints = {k: int(v) for k, v in query.items() if k != "split"}
        except ValueError:
            raise DataError(f"segmentation data spec {spec!r}: n, size and seed must be "
                            "integers") from None
        return make_shapes_seg(split=split, reduce_zero_label=rzl in ("1", "true"), **ints)
    if not target:
        raise DataError(f"segmentation data spec {spec!r} names no directory after 'seg:'")
    return read_seg_dir(target, split=query.get("split"), classes=query.get("classes"),
                        reduce_zero_label=None if rzl is None else rzl in ("1", "true"),
                        encoding=query.get("encoding"))
