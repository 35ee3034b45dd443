"""Winoground in the layout of its official release (facebook/winoground).

``DIR/examples.jsonl``: one example a line with ``id``, ``caption_0``, ``caption_1``,
``image_0``, ``image_1`` (image names without extension, e.g. ``ex_0_img_0``; other fields
such as ``tag`` are kept in ``extra``); images at ``DIR/images/<name>.png``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from alignprobe.errors import DataError
from alignprobe.io import read_text
from alignprobe.probe.data.datasets import decode_image

REQUIRED = ("id", "caption_0", "caption_1", "image_0", "image_1")


@dataclass(frozen=True)
class WinogroundExample:
    id: str
    captions: tuple[str, str]
    image_paths: tuple[str, str]
    extra: dict = field(default_factory=dict)

    def load_images(self):
        """The two RGB PIL images (ImageLoadError when one is missing or undecodable)."""
        return [decode_image(p, f"{self.id}/image_{k}", p) for k, p in enumerate(self.image_paths)]


def read_winoground(path: str | Path, encoding: str | None = None) -> list[WinogroundExample]:
    """Every example of ``DIR/examples.jsonl``, in file order; checks the images exist.

    `encoding`: of ``examples.jsonl`` (None: UTF-8, a BOM allowed); a file in another
    encoding fails naming the file, the byte and the fix, as every reader's does.
    """
    root = Path(path).expanduser().resolve()
    listing = root / "examples.jsonl"
    if not listing.is_file():
        raise DataError(f"winoground: {listing} does not exist; the layout is DIR/examples.jsonl "
                        "and DIR/images/<image_0>.png (the official facebook/winoground release)")
    examples, seen = [], set()
    for lineno, line in enumerate(read_text(listing, encoding, spec_key=False).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"winoground: {listing}:{lineno} is not valid JSON ({exc})") from None
        missing = [k for k in REQUIRED if k not in row] if isinstance(row, dict) else list(REQUIRED)
        if missing:
            raise DataError(f"winoground: {listing}:{lineno} lacks field(s) {missing}; each line "
                            f"needs {', '.join(REQUIRED)}")
        ex_id = str(row["id"])
        if ex_id in seen:
            raise DataError(f"winoground: {listing}:{lineno} repeats id {ex_id!r}")
        seen.add(ex_id)
        paths = tuple(str(root / "images" / f"{row[f'image_{k}']}.png") for k in (0, 1))
        for p in paths:
            if not Path(p).is_file():
                raise DataError(f"winoground: example {ex_id} names image {p}, which does not "
                                "exist; images live at DIR/images/<name>.png")
        extra = {k: v for k, v in row.items() if k not in REQUIRED}
        examples.append(WinogroundExample(ex_id, (str(row["caption_0"]), str(row["caption_1"])),
                                          paths, extra))  # type: ignore[arg-type]
    if not examples:
        raise DataError(f"winoground: {listing} holds no examples")
    return examples
