"""Caption JSON files with several captions per image, for retrieval.

Two formats are recognised from their content:

- **COCO official** (``captions_val2017.json``): ``images`` with ``id`` and
  ``file_name``, ``annotations`` with ``image_id`` and ``caption``.  The file
  is one split; a requested split must appear in the file name
  (``split=val2017``), which catches opening the train file by mistake.
- **Karpathy** (``dataset_coco.json``, ``dataset_flickr30k.json``):
  ``images`` with ``filename``, optional ``filepath``, ``split`` and
  ``sentences[].raw``.  The file holds every split, so one **must** be named:
  ``train``, ``val``, ``test``, ``restval``, or several joined with ``+``
  (``train+restval``, the usual Karpathy training set).

Images live under the images root (``?images=DIR``; default: the JSON file's
directory).  When the root is the default, the first image is checked so a
wrong root fails here, with a hint, instead of as thousands of skipped images.
Ids are image paths relative to the root; captions keep annotation order
(COCO: by annotation id).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from alignprobe.errors import DataError
from alignprobe.io import read_text
from alignprobe.probe.data.datasets import FileDataset


class CocoDataset(FileDataset):
    kind = "coco"


def read_coco(path: str, *, split: str | None = None, images: str | None = None,
              name: str | None = None, encoding: str | None = None) -> CocoDataset:
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise DataError(f"coco:{path}: caption file {file} does not exist")
    try:
        data = json.loads(read_text(file, encoding))  # UTF-8, BOM allowed; decode errors name the byte
    except json.JSONDecodeError as exc:
        raise DataError(f"coco:{path}: {file} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"coco:{path}: {file} has no 'images' list; expected COCO captions "
                        f"(images + annotations) or the Karpathy format (images with "
                        f"'sentences' and 'split')")
    root = Path(images).expanduser().resolve() if images else file.parent
    if "annotations" not in data and _looks_official(data):
        raise DataError(f"coco:{path}: {file} looks like an official COCO file (its images have 'id' and "
                        f"'file_name', none has 'sentences' or 'split') but it has no 'annotations' list, so "
                        f"it holds no captions (an image-info file such as image_info_test2017.json?); open "
                        f"the caption file of the split, e.g. annotations/captions_val2017.json")
    if "annotations" in data:
        fmt = "coco"
        ids, caps = _read_official(data, file, split)
    else:
        fmt = "karpathy"
        ids, caps = _read_karpathy(data, file, split)
    if not ids:
        raise DataError(f"coco:{path}: no images" + (f" in split {split!r}" if split else ""))
    paths = [os.path.normpath(root / i) for i in ids]
    if images is None and not os.path.exists(paths[0]):
        raise DataError(f"coco:{path}: image {ids[0]!r} is not under {root} (the default images "
                        f"root, the JSON file's directory); name the images root with "
                        f"?images=DIR, e.g. coco:{path}?images=val2017")
    return CocoDataset(name or f"coco:{file}", ids, paths, caps, root=str(root), split=split,
                       params={"format": fmt})


def _read_official(data: dict, file: Path, split: str | None):
    if split is not None and split not in file.name:
        raise DataError(f"coco:{file}: split {split!r} was requested but an official COCO caption "
                        f"file holds a single split and its name ({file.name}) does not mention "
                        f"{split!r}; open the caption file of that split")
    anns = data["annotations"]
    if not isinstance(anns, list):
        raise DataError(f"coco:{file}: 'annotations' must be a list")
    by_image: dict = {}
    for k, a in sorted(enumerate(anns), key=lambda ka: _order_key(ka[1], ka[0])):
        if not (isinstance(a, dict) and "image_id" in a and isinstance(a.get("caption"), str)):
            raise DataError(f"coco:{file}: annotation {k} lacks 'image_id' or a 'caption' string")
        by_image.setdefault(_opaque(a["image_id"]), []).append(a["caption"].strip())
    ids, caps = [], []
    for k, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise DataError(f"coco:{file}: images[{k}] is {_what(img)}, not an object with 'id' and 'file_name'")
        if "id" not in img or "file_name" not in img:
            raise DataError(f"coco:{file}: images[{k}] lacks 'id' or 'file_name'")
        _check_path(img["file_name"], "file_name", k, file)
        ids.append(img["file_name"])
        caps.append([c for c in by_image.get(_opaque(img["id"]), []) if c])
    return ids, caps


def _what(value) -> str:
    """How a JSON value is called in an error: 'a number (5)', 'a string ('x')', 'null'."""
    if value is None:
        return "null"
    kind = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)
    shown = repr(value)
    return f"{kind} ({shown[:60]}{'...' if len(shown) > 60 else ''})"


def _check_path(value, key: str, k: int, file: Path) -> None:
    if not isinstance(value, str):
        raise DataError(f"coco:{file}: images[{k}] '{key}' is {_what(value)}, not a string; image paths "
                        f"are strings such as \"000000000139.jpg\"")
    if not value.strip():
        raise DataError(f"coco:{file}: images[{k}] has an empty '{key}'")


def _looks_official(data: dict) -> bool:
    imgs = [i for i in data["images"][:100] if isinstance(i, dict)]
    return bool(imgs) and all("file_name" in i and "id" in i and "sentences" not in i and "split" not in i
                              for i in imgs)


def _opaque(value):
    """An id as a dict key: ids are opaque, compared as written (2 and "2" differ), any JSON value allowed."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return (type(value).__name__, value)
    return ("json", json.dumps(value, sort_keys=True))


def _order_key(ann, position: int):
    """Annotation order: numeric ids ascending, then other ids as text, then file order.

    Ids of mixed types ("a" and 2) are valid COCO; a plain sort would compare them and fail.
    """
    ident = ann.get("id") if isinstance(ann, dict) else None
    if isinstance(ident, (int, float)) and not isinstance(ident, bool):
        return (0, float(ident), "", position)
    if ident is None:  # no id: as id 0, as before
        return (0, 0.0, "", position)
    return (1, 0.0, ident if isinstance(ident, str) else json.dumps(ident, sort_keys=True), position)


def _read_karpathy(data: dict, file: Path, split: str | None):
    images = data["images"]
    available: dict[str, int] = {}
    for k, img in enumerate(images):
        if not isinstance(img, dict):
            raise DataError(f"coco:{file}: images[{k}] is {_what(img)}, not an object; a Karpathy-format "
                            f"file lists objects with 'filename', 'split' and 'sentences'")
        s = img.get("split")
        available[str(s)] = available.get(str(s), 0) + 1
    if set(available) == {"None"}:
        raise DataError(f"coco:{file}: no image has a 'split' and the file has no 'annotations'; expected "
                        f"COCO captions (images + annotations) or the Karpathy format (images with "
                        f"'filename', 'split' and 'sentences')")
    counts = ", ".join(f"{s} ({n})" for s, n in sorted(available.items()))
    if split is None:
        raise DataError(f"coco:{file} is a Karpathy-format file holding several splits ({counts}); "
                        f"name one with ?split=test (or split=...; train+restval for the "
                        f"usual training set)")
    wanted = split.split("+")
    unknown = [s for s in wanted if s not in available]
    if unknown:
        raise DataError(f"coco:{file}: unknown split {'+'.join(unknown)!r}; the file has: {counts}")
    ids, caps = [], []
    for k, img in enumerate(images):
        if img.get("split") not in wanted:
            continue
        if "filename" not in img:
            raise DataError(f"coco:{file}: images[{k}] lacks a 'filename'")
        _check_path(img["filename"], "filename", k, file)
        if img.get("filepath") not in (None, ""):
            _check_path(img["filepath"], "filepath", k, file)
        rel = f"{img['filepath']}/{img['filename']}" if img.get("filepath") else img["filename"]
        sents = img.get("sentences", [])
        if not isinstance(sents, list):
            raise DataError(f"coco:{file}: images[{k}] 'sentences' must be a list")
        cap_list = []
        for s in sents:
            text = s.get("raw") if isinstance(s, dict) else None
            if not isinstance(text, str) and isinstance(s, dict) and isinstance(s.get("tokens"), list):
                text = " ".join(s["tokens"])
            if not isinstance(text, str):
                raise DataError(f"coco:{file}: images[{k}] has a sentence without 'raw' text")
            if text.strip():
                cap_list.append(text.strip())
        ids.append(rel)
        caps.append(cap_list)
    return ids, caps
