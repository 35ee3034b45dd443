"""MMVP-VLM in the layout of its official release (MMVP/MMVP_VLM), read as SAIL's
``evaluation/mmvp.py`` reads it.

``DIR/Questions.csv``: a header row, then rows ``question id, type, statement``; two
consecutive rows form a pair. Images at ``DIR/MLLM_VLM Images/<type>/<id>.jpg`` (the type
of the pair's first row names the folder of both, as in the reference). The statement with
the odd id describes the pair's first image (``gt = img1 if qid % 2 == 1``), the other the
second; the reader requires that order (odd id first), where the reference's parity rule
and "statement q describes image q.jpg" agree. Statements are kept raw; the evaluation adds
the ``"a photo of "`` prefix.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from alignprobe.errors import DataError
from alignprobe.io import read_text
from alignprobe.probe.data.datasets import decode_image

IMAGE_FOLDER = "MLLM_VLM Images"


@dataclass(frozen=True)
class MMVPPair:
    category: str
    ids: tuple[int, int]
    statements: tuple[str, str]
    image_paths: tuple[str, str]
    targets: tuple[int, int]  # the image (0 or 1) each statement describes

    def load_images(self):
        return [decode_image(p, str(q), p) for q, p in zip(self.ids, self.image_paths)]


def read_mmvp(path: str | Path, encoding: str | None = None) -> list[MMVPPair]:
    """Every pair of ``DIR/Questions.csv`` in file order; checks ids and that images exist.

    `encoding`: of ``Questions.csv`` (None: UTF-8, a BOM allowed); a file in another
    encoding fails naming the file, the byte and the fix, as every reader's does.
    """
    root = Path(path).expanduser().resolve()
    table = root / "Questions.csv"
    if not table.is_file():
        raise DataError(f"mmvp: {table} does not exist; the layout is DIR/Questions.csv and "
                        f"'DIR/{IMAGE_FOLDER}/<type>/<id>.jpg' (the official MMVP_VLM release)")
    text = read_text(table, encoding, spec_key=False)
    try:
        rows = [r for r in csv.reader(io.StringIO(text, newline="")) if any(cell.strip() for cell in r)]
    except csv.Error as exc:
        raise DataError(f"mmvp: {table} is not a readable CSV file ({exc})") from None
    body = rows[1:]  # the header
    if not body:
        raise DataError(f"mmvp: {table} has no rows after its header")
    if len(body) % 2:
        raise DataError(f"mmvp: {table} has {len(body)} statement rows; consecutive rows form a "
                        "pair, so the count must be even")
    parsed = []
    for lineno, row in enumerate(body, 2):
        if len(row) != 3:
            raise DataError(f"mmvp: {table}:{lineno} has {len(row)} columns; expected 3 "
                            "(question id, type, statement)")
        try:
            qid = int(row[0])
        except ValueError:
            raise DataError(f"mmvp: {table}:{lineno}: question id {row[0]!r} is not an "
                            "integer") from None
        parsed.append((lineno, qid, row[1].strip(), row[2].strip()))
    pairs = []
    for (l1, q1, t1, s1), (l2, q2, t2, s2) in zip(parsed[0::2], parsed[1::2]):
        if t1 != t2:
            raise DataError(f"mmvp: {table}:{l1}-{l2}: a pair's rows have different types "
                            f"({t1!r}, {t2!r}); rows may be out of order")
        if q1 % 2 != 1 or q2 % 2 != 0:
            # The reference's rule (gt = img1 if qid % 2 == 1, img1 = the first row's image)
            # maps statement q to image q.jpg only when the odd id comes first, as it does in
            # the official file; any other order would pair statements with the wrong images.
            raise DataError(f"mmvp: {table}:{l1}-{l2}: ids {q1}, {q2}; a pair is an odd id "
                            "(the first image) followed by an even id (the second)")
        paths = tuple(str(root / IMAGE_FOLDER / t1 / f"{q}.jpg") for q in (q1, q2))
        for p in paths:
            if not Path(p).is_file():
                raise DataError(f"mmvp: pair {q1}/{q2} needs image {p}, which does not exist")
        targets = (0, 1)  # the odd id's statement describes the first image
        pairs.append(MMVPPair(t1, (q1, q2), (s1, s2), paths, targets))  # type: ignore[arg-type]
    return pairs
