"""Each distinct text encoded once per encode job, its rows copied to every duplicate.

Templated caption sets repeat strings a lot (the built-in `shapes:train` has 7,200 captions but
2,940 distinct ones), and class prompts can repeat too. A text's embedding does not depend on its
row, so the encode job runs the model on the first row of each distinct string and copies that row
to the later ones; the cache keeps its layout and row order (and its key: the stored numbers are
the same up to the float noise of batch composition). The first occurrence may sit in an earlier
shard of the job: its row (and whether it was readable) is kept in memory until the last shard
that copies it is written, so memory grows with the distinct strings that recur across shards,
not with the source.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np


class TextReuse:
    """Which rows of an encode job run the model and which copy an earlier row of the same text.

    Args:
        source: a text source (`load(i)` gives row i's string).
        shard_range: `j -> (start, end)`, the rows of shard j.
        shards: the shards this job encodes, in the order it encodes them.
    """

    def __init__(self, source, shard_range, shards):
        self._range = shard_range
        first: dict[str, int] = {}
        shard_of: dict[int, int] = {}  # first row of a text -> the index of its shard in `shards`
        self._copies: dict[int, list[tuple[int, int]]] = {}  # shard -> [(row, row it copies)]
        self._encode: dict[int, list[int]] = {}  # shard -> local positions that run the model
        self._keep: dict[int, set[int]] = defaultdict(set)  # shard index -> its rows later shards copy
        self._last_use: dict[int, int] = {}  # kept row -> index of the last shard that copies it
        for order, j in enumerate(shards):
            start, end = shard_range(j)
            runs, copies = [], []
            for i in range(start, end):
                text = source.load(i)
                # a non-string is refused (skipped) by the preprocessor; it is never shared
                src = first.setdefault(text, i) if isinstance(text, str) else i
                if src == i:
                    runs.append(i - start)
                    shard_of[i] = order
                else:
                    copies.append((i, src))
                    if shard_of[src] != order:
                        self._keep[shard_of[src]].add(src)
                        self._last_use[src] = order
            self._encode[j], self._copies[j] = runs, copies
        self._order = {j: k for k, j in enumerate(shards)}
        self._kept: dict[int, tuple[dict[Any, np.ndarray], bool, str | None]] = {}

    def to_encode(self, j: int) -> list[int]:
        """Local positions (0 = the shard's first row) of shard j whose text is new to the job."""
        return self._encode[j]

    def copies(self, j: int) -> int:
        """How many rows of shard j copy an earlier row instead of running the model."""
        return len(self._copies[j])

    def fill(self, j: int, outs: dict[Any, np.ndarray], valid: np.ndarray, skipped: dict[str, str],
             ids) -> None:
        """Copy the rows of shard j's duplicates (from this shard or a kept earlier row), with their
        readability and skip reason, then keep the rows of j that later shards copy."""
        start, _ = self._range(j)
        for i, src in self._copies[j]:
            if start <= src:
                row = {key: out[src - start] for key, out in outs.items()}
                ok, reason = bool(valid[src - start]), skipped.get(ids[src])
            else:
                row, ok, reason = self._kept[src]
            for key, emb in row.items():
                if key not in outs:  # every row this shard ran was unreadable, or it ran none
                    outs[key] = np.zeros((len(valid), emb.shape[-1]), dtype=np.float32)
                outs[key][i - start] = emb
            valid[i - start] = ok
            if not ok and reason is not None:
                skipped[ids[i]] = reason
        order = self._order[j]
        for src in self._keep.pop(order, ()):
            self._kept[src] = ({key: out[src - start].copy() for key, out in outs.items()},
                               bool(valid[src - start]), skipped.get(ids[src]))
        for src in [s for s in self._kept if self._last_use[s] <= order]:
            del self._kept[src]  # no later shard copies it
