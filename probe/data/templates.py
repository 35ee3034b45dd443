"""Prompt templates and class-name files for zero-shot classification.

A template is a string with one ``{}`` where the class name goes
("a photo of a {}."). ``load_templates`` accepts a built-in set name or a file:

- ``"clip"`` (alias ``"clip_imagenet"``): the 80 ImageNet templates of CLIP,
  stored in ``resources/clip_imagenet_templates.txt``; the default for file
  data sources.
- ``"simple"``: the single template ``"a photo of a {}."``.
- a data set's name (``DATASET_TEMPLATE_SETS``: ``imagenet``, ``cifar10``,
  ``cifar100``, ``food101``, ``pets``, ``cars``, ``aircraft``, ``dtd``,
  ``flowers``, ``sun397``, ``caltech101``): that data set's CLIP_benchmark
  template set (``clip_benchmark/datasets/en_zeroshot_classification_templates.json``,
  stored in ``resources/zero_shot_templates.json``); ``imagenet`` is the same
  80 templates as ``clip``. In a spec: ``folder:DIR?templates=food101``.
- a ``.txt`` file: one template per line; blank lines and lines starting with
  ``#`` are skipped.  A ``.json`` file: a JSON list of strings.

Class-name files (``load_class_names``) map the raw class keys of a data source
(folder names such as ImageNet wnids, string labels, or ``"0".."k-1"`` for
integer labels) to readable names:

- ``.json``: a list of names in class order, or an object ``{key: name}``;
- text: either one name per line in class order, or ``KEY NAME`` lines
  (whitespace-separated; ``LOC_synset_mapping.txt`` style
  ``n01440764 tench, Tinca tinca``), recognised when every line's first
  token is one of the keys and a name follows it.

ImageNet class folders need no file: ``default_class_names`` maps WordNet ids
(``n01440764``) to the CLIP ImageNet-1k class names (``resources/imagenet_classes.tsv``:
the 1,000 wnids in ImageNet label order with the names of CLIP_benchmark's
``en_classnames.json``, identical to SAIL ``evaluation/imagenet_constant.py``),
and warns when keys look like ids but the table does not know them.
"""
from __future__ import annotations

import functools
import json
import logging
import re
from importlib import resources
from pathlib import Path

from alignprobe.errors import DataError
from alignprobe.io import read_text

log = logging.getLogger(__name__)

#: Per-data-set template sets of CLIP_benchmark, by the name a spec uses.
DATASET_TEMPLATE_SETS = ("imagenet", "cifar10", "cifar100", "food101", "pets", "cars", "aircraft", "dtd",
                         "flowers", "sun397", "caltech101")
BUILTIN_TEMPLATE_SETS = ("clip", "clip_imagenet", "simple", *DATASET_TEMPLATE_SETS)

# Keys that name a class without describing it: WordNet ids, and long numeric codes.
_ID_LIKE = re.compile(r"^(?:n\d{8}|\d{3,})$")


def _resource_text(name: str) -> str:
    return resources.files("alignprobe.probe.data").joinpath(f"resources/{name}").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def dataset_templates() -> dict[str, tuple[str, ...]]:
    """The CLIP_benchmark template set of each data set in DATASET_TEMPLATE_SETS (packaged JSON)."""
    raw = json.loads(_resource_text("zero_shot_templates.json"))
    out = {}
    for name in DATASET_TEMPLATE_SETS:
        for k, t in enumerate(raw[name]):
            check_template(t, f"zero_shot_templates.json, {name} item {k}")
        out[name] = tuple(raw[name])
    return out


@functools.lru_cache(maxsize=None)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1,000 (wnid, CLIP class name) pairs of ImageNet-1k in label order (sorted wnids)."""
    rows = []
    for line in _resource_text("imagenet_classes.tsv").splitlines():
        if line and not line.startswith("#"):
            wnid, name = line.split("\t")
            rows.append((wnid, name))
    return tuple(rows)


def imagenet_class_names() -> list[str]:
    """The CLIP ImageNet-1k class names in label order ("tench", "goldfish", ...)."""
    return [name for _, name in imagenet_classes()]


def looks_like_ids(keys: list[str]) -> bool:
    """True when every key is a WordNet id or a numeric code: a name a text encoder cannot read."""
    return bool(keys) and all(_ID_LIKE.match(str(k)) for k in keys)


def default_class_names(keys: list[str], where: str) -> list[str]:
    """Readable names for raw class keys: CLIP ImageNet names for wnids, else the keys themselves.

    All keys must be in the wnid table for it to apply (a subset of ImageNet's
    classes is fine). Keys that look like ids and are not all in the table
    are kept, with a warning: prompts such as "a photo of a n12345678." make
    zero-shot scores meaningless.
    """
    table = dict(imagenet_classes())
    if keys and all(k in table for k in keys):
        return [table[k] for k in keys]
    if looks_like_ids(keys):
        unknown = [k for k in keys if k not in table]
        log.warning("%s: the class names look like ids (%s) and %d of %d are not ImageNet-1k WordNet ids; "
                    "zero-shot prompts will contain these ids. Pass class_names=FILE (a JSON list/object or "
                    "'KEY NAME' lines) to name the classes.", where, _preview(unknown), len(unknown), len(keys))
    return list(keys)


@functools.lru_cache(maxsize=None)
def clip_imagenet_templates() -> tuple[str, ...]:
    """The 80 CLIP ImageNet prompt templates (packaged resource file)."""
    return tuple(_template_lines(_resource_text("clip_imagenet_templates.txt"), "clip_imagenet_templates.txt"))


def load_templates(spec: str | None, encoding: str | None = None) -> list[str]:
    """Return the templates named by `spec` (a built-in set name or a file path)."""
    if spec is None or spec in ("clip", "clip_imagenet"):
        return list(clip_imagenet_templates())
    if spec == "simple":
        return ["a photo of a {}."]
    if spec in DATASET_TEMPLATE_SETS:
        return list(dataset_templates()[spec])
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(
            f"templates {spec!r} is neither a built-in set ({', '.join(BUILTIN_TEMPLATE_SETS)}) "
            f"nor an existing file; pass one of the set names or a .txt file with one "
            f"template per line containing '{{}}'")
    text = read_text(path, encoding)  # UTF-8 (BOM allowed); a decode error names the byte and the fix
    if path.suffix.lower() == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"templates file {path} is not valid JSON ({exc}); "
                            f"expected a JSON list of strings") from None
        if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
            raise DataError(f"templates file {path} must hold a JSON list of strings")
        for k, t in enumerate(items):
            check_template(t, f"{path}, item {k}")
        templates = list(items)
    else:
        templates = _template_lines(text, str(path))
    if not templates:
        raise DataError(f"templates file {path} holds no templates; "
                        f"write one template per line, each containing '{{}}'")
    return templates


def check_template(template: str, where: str) -> None:
    """Raise DataError unless `template` formats with exactly one positional class name."""
    try:
        ok = template.format("\x00").count("\x00") == 1
    except (IndexError, KeyError, ValueError):
        ok = False
    if not ok:
        raise DataError(f"template {template!r} ({where}) must contain exactly one '{{}}' "
                        f"for the class name and no other braces (write literal braces as "
                        f"'{{{{' and '}}}}')")


def _template_lines(text: str, where: str) -> list[str]:
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        check_template(line, f"{where}, line {lineno}")
        out.append(line)
    return out


def load_class_names(path: str, keys: list[str], *, what: str = "classes",
                     encoding: str | None = None, integer_keys: bool = False) -> list[str]:
    """Read a class-names file and return one name per key, in the order of `keys`.

    `keys` are the data source's raw class keys in label order (folder names,
    string labels, or ``str(v)`` for the integer label values present).
    `integer_keys`: the keys are integer label values, so a plain list of names
    in class order (name ``j`` for label ``j``) also applies when some labels are
    absent from the data (a subset, or one split).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"class-names file {path!r} does not exist; pass a .json list/object "
                        f"or a text file with one name per line")
    text = read_text(p, encoding)
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"class-names file {p} is not valid JSON ({exc})") from None
        if isinstance(obj, dict):
            return _names_from_mapping({str(k): v for k, v in obj.items()}, keys, p, what)
        if isinstance(obj, list):
            return _names_from_list(obj, keys, p, what, integer_keys)
        raise DataError(f"class-names file {p} must hold a JSON list of names or an object "
                        f"mapping class keys to names, not {type(obj).__name__}")
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    key_set = set(keys)
    split = [ln.split(None, 1) for ln in lines]
    if lines and all(len(s) == 2 and s[0] in key_set for s in split):
        return _names_from_mapping({s[0]: s[1].strip() for s in split}, keys, p, what)
    return _names_from_list(lines, keys, p, what, integer_keys)


def _names_from_list(names: list, keys: list[str], path: Path, what: str,
                     integer_keys: bool = False) -> list[str]:
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise DataError(f"class-names file {path} must hold non-empty strings only")
    if (integer_keys and len(names) != len(keys) and all(re.fullmatch(r"\d+", k) for k in keys)
            and all(int(k) < len(names) for k in keys)):
        return [names[int(k)].strip() for k in keys]  # name j is label j's; absent labels skipped
    if len(names) != len(keys):
        raise DataError(
            f"class-names file {path} lists {len(names)} names but the data has {len(keys)} "
            f"{what} ({_preview(keys)}); give one name per class in class order, or "
            f"'KEY NAME' lines / a JSON object keyed by {what}")
    return [n.strip() for n in names]


def _names_from_mapping(mapping: dict, keys: list[str], path: Path, what: str) -> list[str]:
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise DataError(f"class-names file {path} has no name for {len(missing)} of the "
                        f"{len(keys)} {what}: {_preview(missing)}")
    bad = [k for k in keys if not (isinstance(mapping[k], str) and mapping[k].strip())]
    if bad:
        raise DataError(f"class-names file {path} maps {_preview(bad)} to an empty or "
                        f"non-string name")
    return [mapping[k].strip() for k in keys]


def _preview(items: list[str], k: int = 5) -> str:
    shown = ", ".join(repr(x) for x in items[:k])
    return shown + (f", ... ({len(items)} in all)" if len(items) > k else "")
