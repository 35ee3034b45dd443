"""The inputs of zero-shot classification of a user's own images: image files and class names.

`image_files` takes one image file or a directory (searched recursively, hidden files skipped, in
sorted order, so predictions line up with a stable list); `class_names` takes comma-separated names
or a file with one name per line (blank lines and ``#`` comments skipped).
"""
from __future__ import annotations

from pathlib import Path

from alignprobe.errors import DataError, ValidationError
from alignprobe.probe.data.datasets import IMAGE_EXTENSIONS


def image_files(images: str | Path) -> list[Path]:
    """The image files named by `images`: the file itself, or every image under the directory."""
    path = Path(images).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"images {str(images)!r} is neither an image file nor a directory")
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {path}")
    return files


def class_names(classes: str | Path) -> list[str]:
    """Class names from `classes`: a file with one name per line, else a comma-separated list."""
    path = Path(classes).expanduser()
    if path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        names = [c.strip() for c in str(classes).split(",")]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise ValidationError("classes is empty: give comma-separated names or a file with one name per line")
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ValidationError(f"classes names {repeated} more than once; each class once")
    return names


def check_top_k(top_k: int, n_classes: int) -> int:
    """`top_k` classes listed per image must be between 1 and the number of classes."""
    if not 1 <= top_k <= n_classes:
        raise ValidationError(f"top_k={top_k} but there are {n_classes} classes; give 1 <= top_k <= {n_classes}")
    return top_k
