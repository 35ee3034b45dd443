"""A labelled image folder in the ImageNet layout: ``DIR/<class>/<image>``.

Each subdirectory of ``DIR`` is a class (sorted by name, so label ids match
torchvision's ``ImageFolder``); the images under it (searched recursively,
by extension) are its samples.  Class names default to the folder names,
except that ImageNet WordNet-id folders (``n01440764``) get the CLIP
ImageNet-1k class names ("tench"); see
`alignprobe.probe.data.templates.default_class_names`.  A class-names file
maps them otherwise (`alignprobe.probe.data.templates.load_class_names`).  Empty class folders stay
classes, so label ids do not shift when a subset of the images is present.

With a split, the folder read is ``DIR/<split>`` (``folder:imagenet`` with
split ``val`` reads ``imagenet/val/<class>/...``).  Ids are the paths relative
to the folder read (``n01440764/ILSVRC2012_val_00000293.JPEG``).  The folder
has no captions; zero-shot classification uses the class prompts.

Symbolic links to directories are followed, each real directory at most once:
a link that leads back into the tree (``ln -s .. DIR/dog/loop``: a loop) or to a
directory already listed (which would count its images twice, perhaps under
another class) is an error naming the link.
"""
from __future__ import annotations

import os
from pathlib import Path

from alignprobe.errors import DataError
from alignprobe.probe.data.datasets import IMAGE_EXTENSIONS, FileDataset
from alignprobe.probe.data.templates import default_class_names
from alignprobe.console import progress as tqdm


class FolderDataset(FileDataset):
    kind = "folder"

    def _class_key_word(self) -> str:
        return "class folders"


def read_folder(path: str, *, split: str | None = None, name: str | None = None) -> FolderDataset:
    base = Path(path).expanduser().resolve()
    if not base.is_dir():
        raise DataError(f"folder:{path}: {base} is not a directory")
    if split is not None:
        if not (base / split).is_dir():
            subdirs = sorted(d.name for d in base.iterdir() if d.is_dir())
            raise DataError(f"folder:{path}: split {split!r} was requested but {base / split} "
                            f"is not a directory (subfolders: {subdirs[:10]})")
        base = base / split
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"folder:{path}: {base} has no class subfolders; the layout is "
                        f"DIR/<class>/<image>")
    ids, paths, labels = [], [], []
    cut = len(str(base)) + 1  # slicing, not os.path.relpath: ImageNet has 1.28M files

    listing = tqdm(classes, desc="listing class folders", unit="class",
                   disable=None if len(classes) >= 50 else True, leave=False)
    base_real = os.path.realpath(base)
    seen: dict[str, str] = {}  # real path of each directory listed -> the path it was listed under
    for c, cls in enumerate(listing):
        for dirpath, dirnames, filenames in os.walk(base / cls, followlinks=True):
            _visit_once(dirpath, base_real, seen, path)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in sorted(filenames):
                if fn.startswith(".") or not fn.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                full = os.path.join(dirpath, fn)
                ids.append(full[cut:].replace(os.sep, "/"))
                paths.append(full)
                labels.append(c)
    if not ids:
        raise DataError(f"folder:{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) under the "
                        f"{len(classes)} class folders of {base}")
    return FolderDataset(name or f"folder:{base}", ids, paths, None, labels=labels,
                         class_keys=classes, class_names=default_class_names(classes, f"folder:{path}"),
                         root=str(base),
                         split=split, params={})


def _visit_once(dirpath: str, base_real: str, seen: dict[str, str], spec_path: str) -> None:
    """Refuse a directory reached a second time (through a symlink) or one that contains the tree."""
    real = os.path.realpath(dirpath)
    if real == base_real or base_real.startswith(real.rstrip(os.sep) + os.sep):
        raise DataError(f"folder:{spec_path}: {dirpath} is a symbolic link back to {real}, which holds the "
                        "whole folder (a symlink loop); its images would be listed again and again under "
                        "another class. Remove the link")
    if real in seen:
        raise DataError(f"folder:{spec_path}: directory {real} is reached twice, as {seen[real]} and as "
                        f"{dirpath} (a symlink loop or a second link to the same images), so its images would "
                        "count twice, perhaps under two classes; remove the link")
    seen[real] = dirpath
