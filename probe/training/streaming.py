"""Training batches streamed from embedding stores (memory-mapped caches, arrays, tensors).

SAIL trains on millions of pairs (23M in the paper), more than fit in RAM as
fp32, so a batch is gathered row by row from the store -- for a
`CachedEmbeddings` entry that reads only the batch's rows from the
memory-mapped shards -- and nothing ever holds the whole matrix.

`PairStream` turns a set of image rows and their captions into batches:

* each epoch the image rows are shuffled by a permutation drawn from
  ``(seed, epoch)`` alone, so a resumed run can rebuild the order of any epoch
  without having saved it;
* each image contributes all its captions per step (``positives="all"``:
  SAIL's multi-positive loss, the raw caption and its extra captions, with
  ragged counts -- COCO's 5, CC3M's raw + long caption, images with one), or
  ``positives=k`` captions, chosen at random among the image's captions each
  epoch (``sampling="random"``) or always the first ones (``"fixed"``);
* a global batch is split across the ranks of a distributed run, each rank
  reading only its share; the choice of captions is made for the global batch
  first, so a run on one process and on several see the same pairs;
* rows stay in their storage dtype (an fp16 cache gives fp16 batches): the
  training step casts each micro-batch to the heads' dtype as it runs it, so
  the current and the prefetched batch cost half the memory of fp32 copies.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from alignprobe.errors import DataError, ValidationError

SAMPLINGS = ("random", "fixed")
#: Dtypes a batch keeps as stored; anything else (fp64, ints) is read as fp32.
_KEPT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_NUMPY_KEPT = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32}
_CACHE_DTYPES = {"fp16": (np.float16, torch.float16), "fp32": (np.float32, torch.float32)}


class EmbeddingStore:
    """Rows of an ``(n, d)`` float matrix: numpy array / memmap, torch tensor, or `CachedEmbeddings`."""

    def __init__(self, name: str, data):
        self.name = name
        if hasattr(data, "rows") and hasattr(data, "manifest"):  # CachedEmbeddings
            self.n, self.dim = (int(v) for v in data.shape)
        else:
            if not (torch.is_tensor(data) or isinstance(data, np.ndarray)):
                data = np.asarray(data)
            if data.ndim != 2:
                raise ValidationError(f"{name} must be a 2-D (rows, dim) array, got shape {tuple(data.shape)}")
            floating = data.is_floating_point() if torch.is_tensor(data) else np.issubdtype(data.dtype, np.floating)
            if not floating:
                raise ValidationError(f"{name} must hold floats (fp16/bf16/fp32/fp64), got dtype {data.dtype}")
            self.n, self.dim = int(data.shape[0]), int(data.shape[1])
        self.dtype = self._batch_dtype(data)
        if self.n == 0 or self.dim == 0:
            raise ValidationError(f"{name} is empty (shape ({self.n}, {self.dim}))")
        self.data = data

    @staticmethod
    def _batch_dtype(data) -> torch.dtype:
        """The dtype batches keep: the stored one when it is fp16, bf16 or fp32, else fp32."""
        if hasattr(data, "manifest"):
            return _CACHE_DTYPES.get(data.manifest.get("dtype"), _CACHE_DTYPES["fp32"])[1]
        if torch.is_tensor(data):
            return data.dtype if data.dtype in _KEPT_DTYPES else torch.float32
        return _NUMPY_KEPT.get(np.dtype(data.dtype), torch.float32)

    def take(self, rows: np.ndarray) -> torch.Tensor:
        """CPU tensor of the given rows in `dtype` (any order; sorted reads are fastest)."""
        rows = np.asarray(rows, dtype=np.int64)
        data = self.data
        if hasattr(data, "manifest"):
            np_dtype = _CACHE_DTYPES.get(data.manifest.get("dtype"), _CACHE_DTYPES["fp32"])[0]
            block = torch.from_numpy(data.rows(rows, dtype=np_dtype))
        elif torch.is_tensor(data):
            block = data[torch.from_numpy(rows).to(data.device)].detach().to("cpu", self.dtype)
        else:
            np_dtype = np.float16 if self.dtype == torch.float16 else np.float32
            block = torch.from_numpy(np.asarray(data[rows], dtype=np_dtype))
        finite = torch.isfinite(block).all(dim=1)
        if not bool(finite.all()):
            bad = int(rows[int(torch.nonzero(~finite)[0, 0])])
            raise DataError(f"{self.name} row {bad} holds NaN or Inf; re-encode it or drop it before training")
        return block


class ConcatStore(EmbeddingStore):
    """Several stores of one width read as one, row-concatenated (several caption sources)."""

    def __init__(self, name: str, stores: Sequence[EmbeddingStore]):
        if not stores:
            raise ValidationError(f"{name}: no stores to concatenate")
        dims = {s.dim for s in stores}
        if len(dims) != 1:
            raise ValidationError(f"{name}: the caption sources have different widths {sorted(dims)}; "
                                  f"use one text encoder for all of them")
        self.name, self.stores = name, list(stores)
        self.starts = np.cumsum([0] + [s.n for s in stores])
        self.n, self.dim = int(self.starts[-1]), stores[0].dim
        dtypes = {s.dtype for s in stores}
        self.dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32  # mixed sources: fp32 holds them all

    def take(self, rows: np.ndarray) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64)
        out = torch.empty(len(rows), self.dim, dtype=self.dtype)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        for j in np.unique(which):
            mask = which == j
            out[torch.from_numpy(mask)] = self.stores[j].take(rows[mask] - self.starts[j])
        return out


def as_store(name: str, data) -> EmbeddingStore:
    return data if isinstance(data, EmbeddingStore) else EmbeddingStore(name, data)


class CaptionIndex:
    """For each image, its caption rows (CSR): ``captions_of(i) = order[indptr[i]:indptr[i+1]]``."""

    def __init__(self, caption_image: np.ndarray, n_images: int):
        caption_image = np.asarray(caption_image)
        if caption_image.ndim != 1 or not np.issubdtype(caption_image.dtype, np.integer):
            raise ValidationError(f"caption_image must be a 1-D integer array, got {caption_image.dtype} {caption_image.shape}")
        if len(caption_image) and (caption_image.min() < 0 or caption_image.max() >= n_images):
            raise ValidationError(f"caption_image values must be image rows in [0, {n_images - 1}]")
        index_dtype = np.int32 if len(caption_image) < 2**31 else np.int64
        self.order = np.argsort(caption_image, kind="stable").astype(index_dtype)
        self.counts = np.bincount(caption_image, minlength=n_images).astype(np.int64)
        self.indptr = np.concatenate([[0], np.cumsum(self.counts)])

    def all_of(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every caption row of ``images`` and, for each, the position of its image in ``images``."""
        counts = self.counts[images]
        owner = np.repeat(np.arange(len(images)), counts)
        first = np.cumsum(counts) - counts
        rows = self.order[np.repeat(self.indptr[images], counts) + np.arange(int(counts.sum())) - first[owner]]
        return rows.astype(np.int64), owner

    def pick(self, images: np.ndarray, offsets: np.ndarray, positives: int) -> np.ndarray:
        """``(positives, len(images))`` caption rows: caption ``(offset + j) mod count`` of each image."""
        counts = self.counts[images]
        j = np.arange(positives)[:, None]
        return self.order[self.indptr[images][None, :] + (offsets[None, :] + j) % counts[None, :]].astype(np.int64)


@dataclass
class Batch:
    """One rank's share of a global batch, on the CPU (the trainer moves it).

    ``texts`` holds this rank's captions; ``positive_index[j]`` is the row in
    ``images`` of the image caption ``j`` describes (with ``positives=k``: ``k``
    blocks of ``n`` captions, ``positive_index = tile(arange(n), k)``).
    """

    epoch: int
    index: int
    images: torch.Tensor
    texts: torch.Tensor
    positive_index: torch.Tensor
    global_size: int


class PairStream:
    """Shuffled, sharded batches of (image, captions) from embedding stores.

    Args:
        images: store of image embeddings ``(N_img, d_img)``.
        captions: store of caption embeddings ``(M, d_txt)``.
        caption_image: ``(M,)`` image row of each caption.
        image_rows: the image rows this stream draws from (e.g. the training split);
            each must have at least one caption.
        batch_size: global batch (images per step, over all ranks).
        positives: captions per image per step: ``"all"`` (every caption; ragged) or an int.
        sampling: ``"random"`` (new captions each epoch) or ``"fixed"`` (the first ones).
        seed, stream: the permutation of epoch ``e`` is drawn from ``(seed, stream, e)``.
        shuffle: False keeps ``image_rows`` in order (evaluation).
        drop_last: True (the SAIL reference's training loader): ``floor(n / batch_size)``
            full batches an epoch, the remainder left for a later shuffle; False:
            every image, in near-equal batches.
        rank, world_size: this process's share of each global batch.
        prefetch: gather the next batch in a background thread while the current one trains.

    Every batch is a multiple of ``world_size`` (up to ``world_size - 1``
    images an epoch are left out, different ones each epoch). With
    ``drop_last`` each batch holds ``batch_size // world_size`` images per rank
    and the images that do not fill one more are left out of the epoch; without
    it the epoch is split into ``steps_per_epoch`` near-equal batches, so a batch
    never shrinks to a noisy remainder. Either way, when the stream holds fewer
    images than one batch, the epoch is one batch of all of them
    (``batch_exceeds_data``): a tiny set still trains.
    """

    def __init__(self, images, captions, caption_image, image_rows, *, batch_size: int, positives: int | str = 1,
                 sampling: str = "random", seed: int = 0, stream: int = 0, shuffle: bool = True,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1, prefetch: bool = True,
                 caption_index: CaptionIndex | None = None):
        if sampling not in SAMPLINGS:
            raise ValidationError(f"caption sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if positives != "all" and (isinstance(positives, str) or positives < 1):
            raise ValidationError(f"positives must be 'all' or >= 1, got {positives!r}")
        self.images, self.captions = as_store("image embeddings", images), as_store("caption embeddings", captions)
        self.index = caption_index or CaptionIndex(caption_image, self.images.n)
        self.image_rows = np.asarray(image_rows, dtype=np.int64)
        if len(self.image_rows) and (self.index.counts[self.image_rows] == 0).any():
            raise DataError("some images of the stream have no caption; drop them before training")
        self.batch_size, self.sampling = int(batch_size), sampling
        self.positives = positives if positives == "all" else int(positives)
        self.seed, self.stream, self.shuffle = int(seed), int(stream), shuffle
        self.rank, self.world_size, self.prefetch = int(rank), int(world_size), prefetch
        self.units = len(self.image_rows) // self.world_size
        if self.units == 0:
            raise DataError(f"{len(self.image_rows)} images cannot be shared by {self.world_size} ranks")
        if self.batch_size < 1:
            raise ValidationError(f"batch_size must be >= 1, got {batch_size!r}")
        self.drop_last = bool(drop_last)
        self.batch_exceeds_data = self.units * self.world_size < self.batch_size
        # Per-rank images of one full batch (drop_last); at least one.
        self._full_units = max(1, self.batch_size // self.world_size)
        if self.drop_last:
            self.steps_per_epoch = max(1, self.units // self._full_units)
        else:
            self.steps_per_epoch = max(1, min(self.units, math.ceil(self.units * self.world_size / self.batch_size)))

    def __len__(self) -> int:
        return self.steps_per_epoch

    @property
    def images_per_epoch(self) -> int:
        """Images trained on per epoch (those ``drop_last`` leaves out excluded)."""
        if self.drop_last and not self.batch_exceeds_data:
            return self.steps_per_epoch * self._full_units * self.world_size
        return self.units * self.world_size

    def plan(self, epoch: int) -> list[np.ndarray]:
        """The global batches of ``epoch``: image rows in permutation order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.stream, 1, epoch]).permutation(self.image_rows)
        else:
            order = self.image_rows
        order = order[: self.units * self.world_size]
        if self.drop_last and not self.batch_exceeds_data:
            bounds = np.arange(self.steps_per_epoch + 1, dtype=np.int64) * self._full_units * self.world_size
        else:
            bounds = np.linspace(0, self.units, self.steps_per_epoch + 1).round().astype(np.int64) * self.world_size
        return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def _offsets(self, epoch: int, index: int, rows: np.ndarray) -> np.ndarray:
        if self.sampling == "fixed":
            return np.zeros(len(rows), dtype=np.int64)
        rng = np.random.default_rng([self.seed, self.stream, 2, epoch, index])
        return np.floor(rng.random(len(rows)) * self.index.counts[rows]).astype(np.int64)

    def _load(self, epoch: int, index: int, rows: np.ndarray) -> Batch:
        offsets = self._offsets(epoch, index, rows)
        share = len(rows) // self.world_size
        mine = slice(self.rank * share, (self.rank + 1) * share)
        rows, offsets = rows[mine], offsets[mine]
        order = np.argsort(rows, kind="stable")  # sorted reads: sequential on disk
        rows, offsets = rows[order], offsets[order]
        if self.positives == "all":
            caption_rows, owner = self.index.all_of(rows)
            positive_index = torch.from_numpy(owner)
        else:
            caption_rows = self.index.pick(rows, offsets, self.positives).reshape(-1)
            positive_index = torch.arange(len(rows)).repeat(self.positives)
        # Each block of captions is read in sorted order, then put back in image order.
        sort = np.argsort(caption_rows, kind="stable")
        texts = torch.empty(len(caption_rows), self.captions.dim, dtype=self.captions.dtype)
        texts[torch.from_numpy(sort)] = self.captions.take(caption_rows[sort])
        return Batch(epoch, index, self.images.take(rows), texts, positive_index, share * self.world_size)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` from batch ``start`` on (``start > 0`` when resuming mid-epoch)."""
        plan = self.plan(epoch)
        if not self.prefetch:
            for index in range(start, len(plan)):
                yield self._load(epoch, index, plan[index])
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="alignprobe-prefetch") as pool:
            pending = pool.submit(self._load, epoch, start, plan[start]) if start < len(plan) else None
            for index in range(start, len(plan)):
                batch = pending.result()
                pending = pool.submit(self._load, epoch, index + 1, plan[index + 1]) if index + 1 < len(plan) else None
                yield batch
