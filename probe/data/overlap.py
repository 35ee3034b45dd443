"""Train/test image overlap: the images a probe trained on must not be the images it is scored on.

The case this exists for: COCO train2017 contains the Karpathy test images
(the 2014 val images were split between train2017 and val2017 and renamed),
so probing on COCO train2017 and scoring retrieval on the Karpathy test
split, or on anything drawn from val2014, reports inflated numbers.

Two images are the same when they have the same resolved file path
(symlinks followed) or the same content. Content is the SHA-256 of the
image file's bytes (of the tar member's bytes for webdataset shards; of the
decoded pixels for in-memory sets). Hashing 118k COCO images would cost
as much as reading them, so only files whose byte size also occurs on the
other side are hashed: equal content implies equal size.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from alignprobe.errors import DataError, ImageLoadError
from alignprobe.probe.data.datasets import Dataset
from alignprobe.console import progress as tqdm

log = logging.getLogger(__name__)


class TrainTestOverlapError(DataError):
    """The training images and a reported test set share images."""


@dataclass
class Overlap:
    """Test images of `test` that also occur in `train`.

    ``test_rows``: the test rows found; ``by_path`` / ``by_content``: how
    many were found each way (a row found by path is not hashed);
    ``examples``: up to 3 (test id, train id) pairs.
    """

    train: str
    test: str
    n_test: int
    test_rows: list[int] = field(default_factory=list)
    by_path: int = 0
    by_content: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.test_rows)

    def to_record(self, allowed: bool) -> dict[str, Any]:
        """What a run record stores under ``details.overlap[<role>]``."""
        return {"train": self.train, "test": self.test, "n": self.n, "n_test": self.n_test,
                "by_path": self.by_path, "by_content": self.by_content,
                "examples": [list(e) for e in self.examples], "allowed": bool(allowed)}


# --------------------------------------------------------------- per-sample keys
def _file_paths(ds: Dataset) -> list[str] | None:
    paths = getattr(ds, "paths", None)
    return list(paths) if paths is not None else None


def _resolved_paths(ds: Dataset) -> list[str | None]:
    """A path that names the stored image, or None for images with no file of their own."""
    paths = _file_paths(ds)
    if paths is not None:
        return [os.path.realpath(p) for p in paths]
    shards = getattr(ds, "shards", None)
    members = getattr(ds, "_members", None)
    index = getattr(ds, "_shard_index", None)
    if shards is not None and members is not None and index is not None:
        real = [os.path.realpath(s) for s in shards]
        no_image = getattr(ds, "no_image", {})  # webdataset samples without an image: nothing stored
        return [None if i in no_image else f"{real[int(s)]}::{m}"
                for i, (s, m) in enumerate(zip(index, members))]
    return [None] * len(ds)


def _sizes_and_readers(ds: Dataset) -> tuple[list[int | None], Callable[[int], bytes]]:
    """Per sample, the byte size of its stored image (None: unknown) and a reader of its content bytes."""
    paths = _file_paths(ds)
    if paths is not None:
        sizes: list[int | None] = []
        for p in paths:
            try:
                sizes.append(os.stat(p).st_size)
            except OSError:
                sizes.append(None)  # missing: the run skips it anyway

        def read_file(i: int) -> bytes:
            with open(paths[i], "rb") as f:
                return f.read()

        return sizes, read_file
    if hasattr(ds, "raw_bytes") and hasattr(ds, "raw_size"):  # stored members (webdataset tars)
        def read_member(i: int) -> bytes:
            try:
                return ds.raw_bytes(i)
            except ImageLoadError as err:  # no image, so no content to match (not the empty string's digest)
                raise DataError(f"{ds.ids[i]}: {err.reason}") from None

        sizes = [ds.raw_size(i) for i in range(len(ds))]
        return [-1 if size is None else size for size in sizes], read_member

    def read_pixels(i: int) -> bytes:
        img = ds.load_image(i)
        return f"{img.mode}:{img.size}:".encode() + img.tobytes()

    return [None] * len(ds), read_pixels


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digests(rows: list[int], read: Callable[[int], bytes], what: str):
    """(row, SHA-256 of its content) for each readable row; unreadable ones cannot leak into scores."""
    for i in tqdm(rows, desc=f"hashing {what} images", unit="img", disable=None if len(rows) >= 2000 else True,
                  leave=False):
        try:
            yield i, _digest(read(i))
        except (OSError, DataError):
            continue


def find_overlap(train: Dataset, test: Dataset, *, by_content: bool = True) -> Overlap:
    """Find the images of `test` that are also in `train` (same resolved path, or same content).

    `by_content=False` compares paths only (cheap: no file is read).
    """
    result = Overlap(train=train.name, test=test.name, n_test=len(test))
    train_paths, test_paths = _resolved_paths(train), _resolved_paths(test)
    path_row = {p: i for i, p in enumerate(train_paths) if p is not None}
    found: dict[int, int] = {}
    for j, p in enumerate(test_paths):
        if p is not None and p in path_row:
            found[j] = path_row[p]
    result.by_path = len(found)

    if by_content:
        tr_sizes, tr_read = _sizes_and_readers(train)
        te_sizes, te_read = _sizes_and_readers(test)
        # Equal content implies equal size: where sizes are known, only sizes seen on both sides are hashed.
        tr_known = {s for s in tr_sizes if s is not None}
        te_rows = [j for j, s in enumerate(te_sizes) if j not in found and (s is None or s in tr_known)]
        if te_rows:
            wanted = {te_sizes[j] for j in te_rows}
            any_unknown = None in wanted
            tr_rows = [i for i, s in enumerate(tr_sizes) if s is None or any_unknown or s in wanted]
            tr_hash: dict[str, int] = {}
            for i, d in _digests(tr_rows, tr_read, "training"):
                tr_hash.setdefault(d, i)
            for j, d in _digests(te_rows, te_read, "test"):
                if d in tr_hash:
                    found[j] = tr_hash[d]
    result.test_rows = sorted(found)
    result.by_content = len(found) - result.by_path
    result.examples = [(test.ids[j], train.ids[found[j]]) for j in result.test_rows[:3]]
    return result


def check_no_overlap(
    train: Dataset,
    test: Dataset,
    *,
    train_role: str = "--pairs",
    test_role: str = "--retrieval",
    allow: bool = False,
    by_content: bool = True,
) -> Overlap:
    """Raise TrainTestOverlapError when `test` shares images with `train`, unless `allow`.

    With `allow`, the overlap is logged as a warning and returned, so the
    caller can write ``overlap.to_record(allowed=True)`` into the run
    record. The error names the count, both sets, and an example pair.
    """
    ov = find_overlap(train, test, by_content=by_content)
    if ov.n == 0:
        return ov
    test_id, train_id = ov.examples[0]
    msg = (f"{ov.n} of the {ov.n_test} {test_role} images ({test.name}) are also in the {train_role} images "
           f"({train.name}): {ov.by_path} by path, {ov.by_content} by content; e.g. {test_role} {test_id!r} is "
           f"{train_role} {train_id!r}. Scores on images the probe trained on are inflated (COCO train2017 "
           f"holds the Karpathy test images). Train on a disjoint set (e.g. the Karpathy train+restval split, or "
           f"CC3M), or pass allow_overlap=True (--allow-overlap) to run anyway; the record then says so.")
    if not allow:
        raise TrainTestOverlapError(msg)
    log.warning("overlap allowed: %s", msg)
    return ov
