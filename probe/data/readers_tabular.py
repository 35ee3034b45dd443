"""Image-caption pairs listed in a CSV, TSV or JSONL file.

Columns (CSV/TSV need a header row; JSONL needs one object per line):

- image path (default: the first of ``image, filepath, image_path, file_name,
  filename, path`` present): relative to the images root (default: the
  file's directory; ``?root=DIR`` sets it, a relative DIR meaning relative to
  the current directory) or absolute.  URLs are refused: fetch them first
  (img2dataset) and read the shards with ``wds:``.
- caption (default: ``caption`` or ``text``): the main caption.  In JSONL the
  value may also be a list of strings: the first is the main caption, the
  rest are extra positives.
- extra captions (default: ``extra_captions``, optional): a JSON list
  (``["a dog", "a puppy"]``) or ``|``-separated text (``a dog|a puppy``);
  use the JSON form when a caption contains ``|``.  In JSONL a native list.
- label (default: ``label``, optional): non-negative integers or strings
  (class names).  The distinct values present, sorted (numerically for
  integers, alphabetically for strings), become label ids ``0..k-1``; the
  values themselves are the class keys a class-names file is matched against.
  Labels ``0..k-1`` keep their ids; a stray large value is one class, not a
  range of empty ones.
- split (default: ``split``, optional): when a split is requested, only rows
  whose split column equals it are kept.

Rows naming the same image are merged into one sample: their captions are
concatenated in file order (the first row's caption stays the main one), so a
COCO-style table with five rows per image gives five positives.
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

from alignprobe.errors import DataError
from alignprobe.io import DEFAULT_ENCODING, decode_error, sniff_encoding
from alignprobe.probe.data.datasets import FileDataset, index_labels

IMAGE_COLUMNS = ("image", "filepath", "image_path", "file_name", "filename", "path")
CAPTION_COLUMNS = ("caption", "text")
EXTRA_COLUMN = "extra_captions"
LABEL_COLUMN = "label"
SPLIT_COLUMN = "split"

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_INT = re.compile(r"^[+-]?\d+$")


class TableDataset(FileDataset):
    kind = "table"


def read_table(path: str, fmt: str, *, image: str | None = None, caption: str | None = None,
               extra: str | None = None, label: str | None = None, split_col: str | None = None,
               split: str | None = None, root: str | None = None,
               name: str | None = None, encoding: str | None = None) -> TableDataset:
    """Read a CSV (``fmt="csv"``), TSV (``"tsv"``) or JSONL (``"jsonl"``) pair list.

    `encoding`: the file's text encoding (None: UTF-8, with or without a BOM).
    """
    try:
        return _read_table(path, fmt, image=image, caption=caption, extra=extra, label=label,
                           split_col=split_col, split=split, root=root, name=name, encoding=encoding)
    except UnicodeDecodeError:
        # Raised mid-stream by the text reader; the offset is recomputed exactly from the bytes.
        raise decode_error(Path(path).expanduser().resolve(), encoding) from None


def _read_table(path, fmt, *, image, caption, extra, label, split_col, split, root, name,
                encoding) -> TableDataset:
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise DataError(f"{fmt} file {path} does not exist")
    root_dir = Path(root).expanduser().resolve() if root else file.parent
    codec = sniff_encoding(file, encoding)  # a UTF-16/32 byte-order mark is honoured
    records = _read_csv(file, "\t" if fmt == "tsv" else ",", codec) if fmt in ("csv", "tsv") \
        else _read_jsonl(file, codec)
    cols = _Columns(file, image, caption, extra, label, split_col)

    order: list[str] = []
    by_id: dict[str, dict] = {}
    n_rows = 0
    for where, keys, row in records:
        cols.resolve(keys, where)
        if row is None:  # the CSV header
            continue
        n_rows += 1
        if split is not None:
            if cols.split is None:
                raise DataError(f"{file}: split {split!r} was requested but the file has no "
                                f"{split_col or SPLIT_COLUMN!r} column; drop the split or add "
                                f"the column (or name it with ?split_col=NAME)")
            if str(row.get(cols.split, "")).strip() != split:
                continue
        img = _image_path(cols, row, file, where)
        caps = _parse_captions(cols.get(row, cols.caption, where), cols.caption, file, where,
                               main=True)
        if cols.extra is not None:
            caps += _parse_captions(row.get(cols.extra), cols.extra, file, where, main=False)
        lab = _row_label(cols, row, file, where)
        sample = by_id.get(img)
        if sample is None:
            by_id[img] = {"caps": caps, "label": lab, "where": where}
            order.append(img)
        else:
            if sample["label"] != lab:
                raise DataError(f"{file}, {where}: image {img!r} has label {lab!r} here but "
                                f"{sample['label']!r} at {sample['where']}; rows of one image "
                                f"must agree on the label")
            sample["caps"].extend(caps)
    if n_rows == 0:
        raise DataError(f"{file} has no data rows; {cols.expected()}")
    if not order:
        raise DataError(f"{file}: no rows have split {split!r} in column {cols.split!r}")

    labels = class_keys = class_names = None
    integer_keys = False
    if cols.label is not None:
        labels, class_keys, class_names = _encode_labels([by_id[k]["label"] for k in order], file)
        integer_keys = class_names is None
    paths = [img if os.path.isabs(img) else os.path.normpath(root_dir / img) for img in order]
    # The root is left out: ids and file stats identify the images wherever they live.
    params = {"image": cols.image, "caption": cols.caption, "extra": cols.extra,
              "label": cols.label, "split_col": cols.split}
    ds = TableDataset(
        name or f"{fmt}:{file}", order, paths, [by_id[k]["caps"] for k in order],
        labels=labels, class_keys=class_keys, class_names=class_names,
        root=str(root_dir), split=split, params=params)
    ds.integer_class_keys = integer_keys
    return ds


def _image_path(cols, row, file, where) -> str:
    """The row's image path, stripped; a clear error for a non-string, an empty path or a URL."""
    img = cols.get(row, cols.image, where)
    if not isinstance(img, str):
        raise DataError(f"{file}, {where}: the image path in column {cols.image!r} is "
                        f"{_json_type(img)} {img!r}, not a string; write the path as a JSON "
                        f"string (e.g. \"{img}.jpg\" or \"images/{img}.jpg\")")
    if not img.strip():
        raise DataError(f"{file}, {where}: empty image path in column {cols.image!r}; "
                        f"{cols.expected()}")
    img = img.strip()
    if _URL.match(img):
        raise DataError(f"{file}, {where}: image {img!r} is a URL; alignprobe reads local "
                        f"files only. Download the pairs first (e.g. img2dataset "
                        f"--output_format webdataset) and open the shards with wds:DIR")
    return img


def _row_label(cols, row, file, where):
    """The row's label (None without a label column): an integer or a class name."""
    if cols.label is None:
        return None
    lab = cols.get(row, cols.label, where)
    if isinstance(lab, str):
        lab = lab.strip()
    if lab is None or lab == "" or isinstance(lab, (bool, float, list, dict)):
        raise DataError(f"{file}, {where}: label {lab!r} in column {cols.label!r} must "
                        f"be an integer or a class name")
    return lab


def _json_type(value) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object",
            type(None): "null"}.get(type(value), type(value).__name__)


class _Columns:
    """Resolves the column names once (from the header / first record) and reports errors."""

    def __init__(self, file, image, caption, extra, label, split_col):
        self.file = file
        self.want = {"image": image, "caption": caption, "extra": extra, "label": label,
                     "split": split_col}
        self.resolved = False

    def resolve(self, keys, where) -> None:
        if self.resolved:
            return
        keys = list(keys)
        self.image = self._pick("image", IMAGE_COLUMNS, keys, where)
        self.caption = self._pick("caption", CAPTION_COLUMNS, keys, where)
        self.extra = self._pick("extra", (EXTRA_COLUMN,), keys, where, optional=True)
        self.label = self._pick("label", (LABEL_COLUMN,), keys, where, optional=True)
        self.split = self._pick("split", (SPLIT_COLUMN,), keys, where, optional=True)
        self.resolved = True

    def _pick(self, role, defaults, keys, where, optional=False):
        given = self.want[role]
        if given is not None:
            if given not in keys:
                raise DataError(f"{self.file}, {where}: no column {given!r} (asked for as the "
                                f"{role} column); columns found: {keys}; {self.expected()}")
            return given
        for c in defaults:
            if c in keys:
                return c
        if optional:
            return None
        raise DataError(f"{self.file}, {where}: no {role} column; columns found: {keys}; "
                        f"{self.expected()}")

    def get(self, row, col, where):
        if col not in row:
            raise DataError(f"{self.file}, {where}: column {col!r} is missing; {self.expected()}")
        return row[col]

    def expected(self) -> str:
        def one(role, defaults):
            given = self.want[role]
            return repr(given) if given else " or ".join(repr(c) for c in defaults)
        return (f"expected columns: image path ({one('image', IMAGE_COLUMNS)}), caption "
                f"({one('caption', CAPTION_COLUMNS)}), optional extra captions "
                f"({one('extra', (EXTRA_COLUMN,))}), label ({one('label', (LABEL_COLUMN,))}), "
                f"split ({one('split', (SPLIT_COLUMN,))}); rename them with "
                f"?image=COL&caption=COL&extra=COL&label=COL&split_col=COL")


def _read_csv(file: Path, delimiter: str, encoding: str = DEFAULT_ENCODING):
    """Yield (where, header, None) for the header, then (where, header, row dict) per row.

    Short or long rows are errors: csv.DictReader would silently pad or drop fields.
    """
    with open(file, newline="", encoding=encoding) as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{file} is empty; it needs a header row naming the columns "
                            f"(e.g. image,caption)") from None
        except csv.Error as exc:
            raise DataError(f"{file}, line 1: malformed header ({exc})") from None
        header = [h.strip() for h in header]
        seen: set[str] = set()
        for h in header:
            if h in seen:
                raise DataError(f"{file}, line 1 (header): column {h!r} is named twice (columns: "
                                f"{', '.join(header)}); a row would keep only its last value. Rename "
                                f"one of them")
            seen.add(h)
        yield "line 1 (header)", header, None
        row_no = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(f"{file}, line {reader.line_num}: malformed CSV ({exc})") from None
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            row_no += 1
            where = f"line {reader.line_num} (data row {row_no})"
            if len(fields) != len(header):
                raise DataError(
                    f"{file}, {where}: {len(fields)} fields but the header has {len(header)} "
                    f"({', '.join(header)}); quote fields that contain the delimiter "
                    f"{delimiter!r}")
            yield where, header, dict(zip(header, fields))


def _read_jsonl(file: Path, encoding: str = DEFAULT_ENCODING):
    with open(file, encoding=encoding) as f:
        row_no = 0
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row_no += 1
            where = f"line {line_no} (data row {row_no})"
            try:
                obj = json.loads(line, object_pairs_hook=_unique_keys)
            except _DuplicateKey as dup:
                raise DataError(f"{file}, {where}: key {dup.key!r} appears twice in one object; "
                                f"json would keep only the last value. Rename or drop one") from None
            except json.JSONDecodeError as exc:
                raise DataError(f"{file}, {where}: invalid JSON ({exc.msg}); each line must "
                                f"be one JSON object") from None
            if not isinstance(obj, dict):
                raise DataError(f"{file}, {where}: expected a JSON object, got "
                                f"{type(obj).__name__}")
            yield where, obj.keys(), obj


class _DuplicateKey(ValueError):
    def __init__(self, key):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _parse_captions(value, col, file, where, *, main: bool) -> list[str]:
    if isinstance(value, list):
        caps = value
    elif isinstance(value, str):
        text = value.strip()
        if not main:
            if not text:
                return []
            if text.startswith("["):
                try:
                    caps = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{file}, {where}: column {col!r} starts with '[' but is "
                                    f"not a JSON list ({exc.msg})") from None
            else:
                caps = text.split("|")
            caps = [c for c in caps if not (isinstance(c, str) and not c.strip())]
        else:
            caps = [text]
    elif value is None and not main:
        return []
    else:
        caps = None
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise DataError(f"{file}, {where}: column {col!r} must hold a caption string or a "
                        f"list of strings, got {value!r}")
    caps = [c.strip() for c in caps]
    if main and (not caps or not all(caps)):
        raise DataError(f"{file}, {where}: empty caption in column {col!r}")
    return caps


def _encode_labels(raw: list, file: Path):
    """(label ids, class keys, class names or None): the distinct values present, sorted, become ids.

    Integer labels are sorted as numbers and keep ids 0..k-1 when they are 0..k-1;
    their class keys are the values ("0", "7", "99999999999"), named by a class-names
    file. String labels are class names, sorted alphabetically.
    """
    if all(isinstance(v, int) or (isinstance(v, str) and _INT.match(v)) for v in raw):
        ints = [int(v) for v in raw]
        if min(ints) < 0:
            raise DataError(f"{file}: negative label {min(ints)}; integer labels must be >= 0")
        ids, values = index_labels(ints)
        return ids, [str(v) for v in values], None
    ids, keys = index_labels(str(v) for v in raw)
    return ids, keys, list(keys)
