"""Open any data source from one spec string: ``open_dataset("KIND:PATH?key=value&...")``.

Syntax::

    KIND:TARGET[?key=value[&key=value...]]

Kinds and their keys (every kind also takes ``split``, ``templates`` and
``class_names`` as keys, the same as the keyword arguments):

====================  ===================================================  ============================
spec                  what                                                 keys
====================  ===================================================  ============================
``shapes[:SPLIT]``    built-in coloured-shape scenes (3,000, 64 px)       ``n``, ``size``, ``seed``
``digits[:SPLIT]``    built-in scikit-learn digits (1,797, 32 px)         ``size``
``csv:FILE``          image-caption pairs (also ``tsv:``, ``jsonl:``)     ``image``, ``caption``,
                                                                           ``extra``, ``label``,
                                                                           ``split_col``, ``root``
``wds:SHARDS``        webdataset / img2dataset tars: a directory, one      (none)
                      ``.tar``, or ``shards/{00000..00009}.tar`` / globs
``folder:DIR``        labelled folder ``DIR/<class>/<image>``              (none)
``coco:FILE.json``    COCO or Karpathy caption JSON                        ``images`` (images root)
``idx:DIR``           MNIST-style IDX image/label files (gzip or not)      (none)
``fashion-mnist``     Fashion-MNIST (70,000, 28 px, 10 classes) from the   ``n`` (a class-balanced
                                                                           subset)
``[:SPLIT]``          Debian package dataset-fashion-mnist or
                      ``$ALIGNPROBE_DATA``; template captions
====================  ===================================================  ============================

Splits: ``train`` / ``test`` for the built-ins (``shapes:train`` or
``split="train"``; none = the whole set); for csv/tsv/jsonl the rows whose
split column equals it; for ``folder:`` and ``wds:`` the subdirectory
``DIR/SPLIT``; for Karpathy JSON a ``split`` value (required there).

Without a kind, a path is recognised by its form: ``*.csv``, ``*.tsv``,
``*.jsonl``, ``*.json`` (coco), ``*.tar`` or a shard pattern (wds), a directory
of ``.tar`` files (wds) or of class subfolders (folder).

Relative paths (the target, ``root=``, ``images=``, template and class-name
files) resolve against the current directory; ``Dataset.name`` is the
canonical spec, with absolute paths, so it reopens the same data anywhere.

The query starts at the last ``?`` when what follows is ``key=value`` pairs,
so glob patterns such as ``wds:shards/0000?.tar`` still work; values are
percent-decoded (write ``&`` in a path as ``%26``).  ``+`` is kept literally
(``split=train+restval``).

``strict=True`` checks upfront what is cheap to check: every image file
exists and is non-empty (csv/tsv/jsonl, folder, coco) or every tar member lies
inside its shard (wds); it does not decode images.  Without it, a missing or
corrupt image raises `ImageLoadError` from ``load_image`` and the caller skips
and counts it.

Templates: ``templates=None`` keeps the source's default (the 80 CLIP ImageNet
templates; the built-ins have their own), ``"clip"``, ``"simple"`` or a file.
``class_names=FILE`` renames the classes of a labelled source (see
`alignprobe.probe.data.templates.load_class_names`).  The contents of both
files enter the dataset's ``fingerprint()``, so editing one changes the reuse
key of a run (not the image embeddings' cache key).

Text files are read as UTF-8 (a byte-order mark is fine); ``encoding=NAME``
(any Python codec: ``latin-1``, ``cp1252``...) reads the spec's table,
annotation file, ``.txt`` members, template and class-name files in it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote, unquote

from alignprobe.errors import DataError
from alignprobe.io import check_encoding
# Re-exported so callers need one import for the whole data API.
from alignprobe.probe.data.datasets import Dataset, class_prompts, flatten_captions
from alignprobe.probe.data.templates import BUILTIN_TEMPLATE_SETS, load_templates
from alignprobe.probe.data.builtin_sets import make_digits, make_fashion_mnist, make_shapes
from alignprobe.probe.data.readers_tabular import read_table
from alignprobe.probe.data.readers_webdataset import read_webdataset
from alignprobe.probe.data.readers_folder import read_folder
from alignprobe.probe.data.readers_idx import read_idx_dir
from alignprobe.probe.data.readers_coco import read_coco

__all__ = ["open_dataset", "parse_spec", "Dataset", "flatten_captions", "class_prompts", "KINDS"]

BUILTIN_KINDS = ("shapes", "digits", "fashion-mnist")
TABLE_KINDS = ("csv", "tsv", "jsonl")
FILE_KINDS = TABLE_KINDS + ("wds", "folder", "coco", "idx")
KINDS = BUILTIN_KINDS + FILE_KINDS

_COMMON_KEYS = ("split", "templates", "class_names")
# Of every text file the spec reads (table, annotations, .txt members, templates, class names).
_ENCODING_KEY = "encoding"
KIND_KEYS = {
    "shapes": ("n", "size", "seed"),
    "digits": ("size",),
    "csv": ("image", "caption", "extra", "label", "split_col", "root"),
    "wds": (),
    "folder": (),
    "coco": ("images",),
    "fashion-mnist": ("n",),
    "idx": (),
}
KIND_KEYS["tsv"] = KIND_KEYS["jsonl"] = KIND_KEYS["csv"]
_PATH_KEYS = ("root", "images")  # made absolute in the canonical name

_QUERY = re.compile(r"^\w+=[^&]*(?:&\w+=[^&]*)*$")
_KIND_PREFIX = re.compile(r"^([A-Za-z][\w-]+):(.*)$", re.S)
_SUFFIX_KIND = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "coco", ".tar": "wds"}


def split_query(text: str) -> tuple[str, dict[str, str]]:
    """``"BODY?k=v&k2=v2"`` -> ``(BODY, {k: v, k2: v2})`` (values URL-decoded); a key given twice
    is an error (one spec syntax for data and segmentation specs)."""
    body, query = text, {}
    q = text.rfind("?")
    if q >= 0 and _QUERY.match(text[q + 1:]):
        body = text[:q]
        for pair in text[q + 1:].split("&"):
            key, value = pair.split("=", 1)
            if key in query:
                raise DataError(f"data spec {text!r} sets {key!r} twice")
            query[key] = unquote(value)
    return body, query


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """Split a spec into ``(kind, target, query)``; infer the kind of a bare path."""
    text = os.fspath(spec).strip() if isinstance(spec, (str, os.PathLike)) else None
    if not text:
        raise DataError(f"empty data spec {spec!r}; {_usage()}")
    body, query = split_query(text)
    if body in BUILTIN_KINDS:
        return body, "", query
    m = _KIND_PREFIX.match(body)
    if m and m.group(1) in KINDS:
        return m.group(1), m.group(2), query
    if m and not os.path.exists(body):
        raise DataError(f"unknown data source kind {m.group(1)!r} in spec {text!r}; valid kinds: "
                        f"{', '.join(sorted(KINDS))}; {_usage()}")
    return _infer_kind(body, query.get("split")), body, query


def open_dataset(spec: str, *, split: str | None = None, templates: str | None = None,
                 class_names: str | None = None, strict: bool = False) -> Dataset:
    """Open the data source named by `spec` (syntax in the module docstring)."""
    kind, target, query = parse_spec(spec)
    allowed = _COMMON_KEYS + KIND_KEYS[kind] + (_ENCODING_KEY,)
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise DataError(f"data spec {spec!r}: unknown key(s) {unknown} for kind {kind!r}; "
                        f"valid keys: {', '.join(allowed)}")
    if kind in BUILTIN_KINDS and target:
        split = _merge(spec, "split", target, split)
    split = _merge(spec, "split", query.pop("split", None), split)
    templates = _merge(spec, "templates", query.pop("templates", None), templates)
    class_names = _merge(spec, "class_names", query.pop("class_names", None), class_names)
    encoding = query.get(_ENCODING_KEY)
    if encoding is not None:
        check_encoding(encoding, f"data spec {spec!r}")
    if kind in FILE_KINDS and not target:
        raise DataError(f"data spec {spec!r} names no path after '{kind}:'; {_usage()}")

    name = _canonical_name(kind, target, split, query)
    ds = _open(kind, target, split, {k: v for k, v in query.items() if k != _ENCODING_KEY}, name, encoding)
    if class_names is not None:
        ds.set_class_names(class_names, encoding=encoding)
        ds.add_spec_file("class_names", class_names)  # its contents enter the fingerprint (the reuse key)
    if templates is not None:
        ds.templates = load_templates(templates, encoding=encoding)
        if templates not in BUILTIN_TEMPLATE_SETS:
            ds.add_spec_file("templates", templates)
    ds.templates_source = templates or "default"
    if strict:
        ds.validate()
    return ds


def _open(kind, target, split, query, name, encoding=None) -> Dataset:
    if kind == "shapes":
        ints = {k: _int(name, k, v) for k, v in query.items()}
        return make_shapes(split=split, name=name, **ints)
    if kind == "digits":
        ints = {k: _int(name, k, v) for k, v in query.items()}
        return make_digits(split=split, name=name, **ints)
    if kind in TABLE_KINDS:
        return read_table(target, kind, split=split, name=name, encoding=encoding, **query)
    if kind == "wds":
        return read_webdataset(target, split=split, name=name, encoding=encoding)
    if kind == "folder":
        return read_folder(target, split=split, name=name)
    if kind == "fashion-mnist":
        ints = {k: _int(name, k, v) for k, v in query.items()}
        return make_fashion_mnist(split=split, name=name, **ints)
    if kind == "idx":
        return read_idx_dir(target, split=split, name=name)
    if kind == "coco":
        return read_coco(target, split=split, name=name, encoding=encoding, **query)
    raise AssertionError(kind)  # parse_spec only returns known kinds


def _infer_kind(path: str, split: str | None) -> str:
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if p.is_dir():
        for d in (p, p / split) if split else (p,):
            if d.is_dir() and any(f.suffix == ".tar" for f in d.iterdir()):
                return "wds"
        return "folder"
    if suffix in _SUFFIX_KIND and ("{" in path or any(ch in path for ch in "*?[")
                                   or p.is_file()):
        return _SUFFIX_KIND[suffix]
    if not p.exists():
        raise DataError(f"data source {path!r} does not exist and names no kind; {_usage()}")
    raise DataError(f"cannot tell what kind of data source {path!r} is; prefix it with a kind "
                    f"({', '.join(KINDS)}), e.g. csv:{path}")


def _canonical_name(kind, target, split, query) -> str:
    """A spec that reopens the same samples: absolute path, split and reader keys."""
    if kind in BUILTIN_KINDS:
        head = kind if split is None else f"{kind}:{split}"
        rest = dict(query)
    else:
        head = f"{kind}:{_abs(target)}"
        rest = dict(query, **({"split": split} if split is not None else {}))
        for key in _PATH_KEYS:
            if key in rest:
                rest[key] = _abs(rest[key])
    if not rest:
        return head
    return head + "?" + "&".join(f"{k}={quote(str(v), safe='/+:.,-_')}"
                                 for k, v in sorted(rest.items()))


def _abs(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _merge(spec, key, from_spec, from_arg):
    if from_spec is not None and from_arg is not None and from_spec != from_arg:
        raise DataError(f"data spec {spec!r} gives {key} {from_spec!r} but {key}={from_arg!r} was "
                        f"also passed; give it once")
    return from_spec if from_spec is not None else from_arg


def _int(name, key, value) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{name}: {key}={value!r} must be an integer") from None


def _usage() -> str:
    return ("write KIND:PATH[?key=value&...] with KIND one of " + ", ".join(KINDS)
            + " (e.g. shapes:train, csv:pairs.csv, wds:shards/{00000..00009}.tar, folder:imagenet, "
              "coco:captions_val2017.json?images=val2017)")
