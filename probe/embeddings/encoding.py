"""Batched encoding of a data source into the embedding cache.

Images are decoded and preprocessed in DataLoader workers while the model runs
so that data loading does not starve it; texts are cheap and tokenised in the
main process, in batches of similar length (longest first within each shard, so
padding to the longest in a batch wastes little; rows are written back by index,
so the cache keeps the source's order), each distinct text once per job (`dedup`).
Work is split into cache shards: each shard is encoded and written atomically, so an
interrupted run resumes at the first missing shard and `--shard i/n` hands every n-th shard
to one of n hosts or GPUs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from alignprobe.console import progress as tqdm  # summary lines, not redraws, in a log
from alignprobe.errors import DataError, ImageLoadError, ValidationError
from alignprobe.probe.embeddings.cache import (
    CacheIdentity,
    CachedEmbeddings,
    EmbeddingCache,
    check_storage_range,
)
from alignprobe.probe.embeddings.dedup import TextReuse

log = logging.getLogger("alignprobe.encode")


# --------------------------------------------------------------------------- sources
@dataclass
class ImageSource:
    """The images of a dataset, in dataset order."""

    dataset: Any  # alignprobe.probe.data.datasets.Dataset
    kind: str = "images"

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def name(self) -> str:
        return self.dataset.name

    @property
    def ids(self) -> list[str]:
        return list(self.dataset.ids)

    def describe(self) -> dict:
        # Image embeddings do not depend on captions or labels; duck-typed datasets
        # without `image_fingerprint` fall back to their whole fingerprint.
        digest = getattr(self.dataset, "image_fingerprint", None) or self.dataset.fingerprint
        return {"kind": self.kind, "name": self.name, "fingerprint": digest(), "n": len(self)}

    def load(self, i: int):
        return self.dataset.load_image(i)


@dataclass
class TextSource:
    """A list of strings (captions or class prompts). Its fingerprint is the texts themselves,
    so re-encoding is needed only when the words change, not when image files do."""

    name: str
    texts: Sequence[str]
    kind: str = "captions"  # or "prompts"
    _fingerprint: str = field(default="", init=False, repr=False)

    def __post_init__(self):
        digest = hashlib.sha256()
        for text in self.texts:
            digest.update(text.encode("utf-8"))
            digest.update(b"\x00")
        self._fingerprint = digest.hexdigest()

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def ids(self) -> list[str]:
        return [f"{self.kind}:{i}" for i in range(len(self.texts))]

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "fingerprint": self._fingerprint, "n": len(self)}

    def load(self, i: int):
        return self.texts[i]


# --------------------------------------------------------------------------- helpers
def parse_shard(spec: str | None) -> tuple[int, int]:
    """`"i/n"` -> (i, n). None -> torchrun's RANK/WORLD_SIZE if set, else (0, 1)."""
    if spec is None:
        if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return 0, 1
    try:
        i_str, n_str = str(spec).split("/")
        i, n = int(i_str), int(n_str)
    except ValueError:
        raise ValidationError(f"--shard must look like I/N (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValidationError(f"--shard I/N needs 0 <= I < N, got {spec!r}")
    return i, n


def preprocessor_of(encoder):
    """The picklable object that turns items into model inputs (runs in DataLoader workers)."""
    return getattr(encoder, "preprocessor", None) or encoder


class ShardItems:
    """A map-style torch dataset over rows [start, end) of a source, preprocessed."""

    def __init__(self, source, preprocessor, start: int, end: int):
        self.source, self.preprocessor, self.start, self.end = source, preprocessor, start, end

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, k: int):
        i = self.start + k
        try:
            return i, self.preprocessor.preprocess(self.source.load(i)), None
        except ImageLoadError as err:
            return i, None, err.reason
        except (OSError, ValueError) as err:  # decoder errors surface as these
            return i, None, f"{type(err).__name__}: {err}"


class SkippingCollate:
    """Collates the readable items of a batch and lists the unreadable ones (row, reason) apart."""

    def __init__(self, preprocessor):
        self.preprocessor = preprocessor

    def __call__(self, batch):
        rows = [i for i, item, _ in batch if item is not None]
        items = [item for _, item, _ in batch if item is not None]
        failed = [(i, reason) for i, item, reason in batch if item is None]
        return rows, (self.preprocessor.collate(items) if items else None), failed


#: Captions per call of a CPU text encoder at least. Measured (benchmarks/encode_throughput.py,
#: issue 20): MiniLM on 2 cores runs 0.4 of SentenceTransformer.encode's best batch (256) at
#: batch 64 even length-sorted and ~0.8-1.0 at 256; the per-call cost of the many small matmuls
#: dominates small batches. Sorted captions pad little, so the larger batch costs little memory.
CPU_TEXT_BATCH = 256


def runs_on_cpu(device) -> bool:
    """Whether an encoder's ``device`` (a `torch.device`, a string, or None: unknown, as for plain
    Python encoders) is the CPU."""
    return device is None or getattr(device, "type", str(device)) == "cpu"


def text_batch(batch_size: int, device) -> int:
    """The batch a text source runs in: `batch_size`, raised to `CPU_TEXT_BATCH` on the CPU (on a
    GPU the user's batch is kept: it may be what fits a large embedder's memory)."""
    return max(batch_size, CPU_TEXT_BATCH) if runs_on_cpu(device) else batch_size


def batch_order(source, start: int, end: int, positions: Sequence[int] | None = None) -> list[int]:
    """Positions 0..end-start-1 of a shard's rows (or the given `positions` among them), longest
    text first (stable), so that each batch holds texts of similar length and padding to the
    longest wastes little (the order sentence-transformers' `encode` uses; characters stand in for
    tokens, as there). Rows are written back by their index, so the cached order is the source's."""
    positions = range(end - start) if positions is None else positions
    return sorted(positions, key=lambda k: -len(source.load(start + k)))


#: Up to this many cores, an image encoder that runs on the CPU decodes in the main process.
SMALL_CPU_CORES = 2


def default_num_workers(source, device=None) -> int:
    """Images: decode in parallel with the model (one worker per spare core, at most 8) -- except
    when the model itself runs on the CPU of a machine with at most `SMALL_CPU_CORES` cores: its
    forward already keeps every core busy, so a worker only adds the cost of shipping each
    preprocessed batch between processes and of competing for the cores (EfficientNet-Lite0 on 2
    cores: the 600 images of ``shapes:test`` in 5.7 s without a worker, 10.4 s with one; 2,400 in
    the same time either way; benchmarks/README.md "main_job.py")."""
    if getattr(source, "kind", "") != "images":
        return 0
    cores = os.cpu_count() or 2
    if runs_on_cpu(device) and cores <= SMALL_CPU_CORES:
        return 0
    return max(1, min(8, cores - 1))


def nonfinite_message(encoder_name, source_name, start: int, end: int, compute_dtype: str | None) -> str:
    """What to say when an encoder produced NaN/Inf: a dtype hint only when a lower precision could be the cause."""
    head = f"{encoder_name} produced NaN/Inf embeddings on {source_name} rows {start}-{end}"
    if compute_dtype in ("fp16", "bf16"):
        return f"{head} in {compute_dtype}; try --dtype fp32 (overflow in {compute_dtype} is the usual cause)."
    return (f"{head} while already computing in {compute_dtype or 'fp32'}, so precision is not the cause: "
            f"the weights or these inputs are broken; check the checkpoint (re-download it) and those rows.")


def strict_error(source, skipped: dict[str, str], where: str) -> DataError:
    shown = "; ".join(f"{k!r} ({v})" for k, v in list(skipped.items())[:10])
    more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    return DataError(
        f"--strict: {len(skipped)} of the {len(source)} {source.kind} of {source.name} were skipped as "
        f"unreadable by an earlier run without --strict ({where}): {shown}{more}. Fix or replace those "
        f"files (a changed file changes the cache key, so it is re-encoded), or run without --strict.")


def lookup(cache: EmbeddingCache, encoder, identity: CacheIdentity, recompute: bool):
    """`(identity, cached entry or None)`. A lazy encoder's manifest comes from its memo; on a miss
    the encoder loads anyway, and what runs now (e.g. torch instead of onnxruntime after
    ALIGNPROBE_ONNX=0) is what a new entry must name, so the loaded encoder's manifest decides.
    Without `recompute` a miss is an error anyway: nothing is loaded for it."""
    hit = cache.lookup(identity, repair=recompute)
    if hit is None and recompute and not getattr(encoder, "is_loaded", True):
        encoder.load()
        loaded = encoder.manifest()
        if loaded != identity.encoder:
            identity = dataclasses.replace(identity, encoder=loaded)
            hit = cache.lookup(identity, repair=recompute)
    return identity, hit


# --------------------------------------------------------------------------- main entry
@dataclass
class EncodeResult:
    embeddings: CachedEmbeddings | None  # None when other shards (hosts) are still missing
    cache_hit: bool
    encoded_rows: int
    skipped: dict[str, str]
    seconds: float


def _check_settings(source, batch_size, text_batch_size, num_workers, storage_dtype) -> None:
    """`encode_source`'s arguments, each refused with a clear error before any work."""
    for what, value in (("batch_size", batch_size), ("text_batch_size", text_batch_size)):
        if value is not None and value < 1:
            raise ValidationError(f"{what} must be >= 1, got {value}")
    if num_workers is not None and num_workers < 0:
        raise ValidationError(f"num_workers (--num-workers) must be >= 0, got {num_workers}")
    if storage_dtype not in ("fp16", "fp32"):
        raise ValidationError(f"storage dtype must be 'fp16' or 'fp32', got {storage_dtype!r}")
    if len(source) == 0:
        raise DataError(f"{source.name!r} has no {source.kind} to encode")


def _shards_to_encode(cache, identity, source, shard, recompute, strict) -> list[int]:
    """This rank's shards still missing from the entry (which is then begun); a miss without
    `recompute`, or skips left by an earlier lenient run under `strict`, is an error."""
    rank, world = shard
    mine = [j for j in range(identity.n_shards) if j % world == rank]
    todo = cache.missing_shards(identity, mine)
    if todo and not recompute:
        raise cache.mismatch_error(identity)
    if strict:  # shards finished by an earlier lenient run must not carry their skips into a strict one
        earlier = cache.skipped_so_far(identity)
        if earlier:
            raise strict_error(source, earlier, f"shards already encoded in {cache.entry_dir(identity)}")
    cache.begin(identity)
    return todo


def encode_source(
    encoder,
    source,
    *,
    cache: EmbeddingCache | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    storage_dtype: str = "fp16",
    shard_rows: int | None = None,
    recompute: bool = True,
    shard: tuple[int, int] = (0, 1),
    strict: bool = False,
    quiet: bool = False,
    on_batch: Callable[[int], None] | None = None,
    length_sorted: bool | None = None,
    text_batch_size: int | None = None,
    deduplicate: bool | None = None,
) -> EncodeResult:
    """Encode `source` with `encoder` into `cache`, reusing whatever is already there.

    Returns the memory-mapped embeddings (rows in source order). With
    `recompute=False` a miss raises `CacheMismatchError` naming the settings that
    differ. Under `strict`, one unreadable image raises `DataError`; otherwise it
    is skipped (its row stays zero, `valid` False) and named in the manifest;
    a cached entry (or finished shards) with skipped items is an error under
    `strict` too, naming them. `shard_rows` (None: the cache's, `DEFAULT_SHARD_ROWS`) is the
    unit an interrupted encode resumes from. A damaged cache entry is moved
    aside and re-encoded (`recompute`) or an error naming it. `length_sorted` (None: for texts)
    batches the rows of each shard by length (see `batch_order`); the rows come back in order.
    `text_batch_size` (None: `text_batch` of `batch_size`) is the batch of a text source.
    `deduplicate` (None: for texts) runs the model once per distinct text of this job and copies
    its row to the duplicates (`dedup.TextReuse`); the rows and the cache key stay the same.
    """
    _check_settings(source, batch_size, text_batch_size, num_workers, storage_dtype)
    cache = cache or EmbeddingCache()
    shard_rows = cache.shard_rows if shard_rows is None else shard_rows
    identity = CacheIdentity(
        modality=encoder.modality,
        encoder=encoder.manifest(),
        source=source.describe(),
        storage_dtype=storage_dtype,
        shard_rows=shard_rows,
    )
    started = time.perf_counter()
    identity, hit = lookup(cache, encoder, identity, recompute)
    if hit is not None:
        log.info("cache hit: %s", hit)
        skipped = dict(hit.manifest.get("skipped", {}))
        if strict and skipped:
            raise strict_error(source, skipped, f"the cached entry {hit.directory}")
        return EncodeResult(hit, True, 0, skipped, 0.0)

    todo = _shards_to_encode(cache, identity, source, shard, recompute, strict)
    if source.kind != "images":
        batch_size = text_batch_size or text_batch(batch_size, getattr(encoder, "device", None))

    def forward(batch, wanted):
        return {0: encoder.forward(batch).detach().float().cpu().numpy()}

    encoded, skipped_all = encode_shards(
        source, preprocessor_of(encoder), cache, {0: identity}, {0: set(todo)}, forward, batch_size=batch_size,
        num_workers=num_workers, storage_dtype=storage_dtype, strict=strict, quiet=quiet,
        desc=f"encode {identity.encoder.get('name')} [{source.name} {source.kind}]", on_batch=on_batch,
        length_sorted=length_sorted, deduplicate=deduplicate, device=getattr(encoder, "device", None))
    if skipped_all:
        log.warning("%d of %d %s skipped (missing or corrupt); see the manifest's 'skipped' list",
                    len(skipped_all), len(source), source.kind)
    result = cache.finalize(identity)
    seconds = time.perf_counter() - started
    if result is not None:
        skipped_all = dict(result.manifest.get("skipped", {}))
    return EncodeResult(result, False, encoded, skipped_all, seconds)


def encode_shards(source, preprocessor, cache: EmbeddingCache, identities: dict, todo: dict[Any, set[int]],
                  forward: Callable, *, batch_size: int, num_workers: int | None, storage_dtype: str, strict: bool,
                  quiet: bool, desc: str, on_batch: Callable[[int], None] | None = None,
                  length_sorted: bool | None = None, deduplicate: bool | None = None,
                  device=None) -> tuple[int, dict[str, str]]:
    """The one shard loop of single- and multi-layer encoding.

    ``identities``: ``{key: CacheIdentity}`` of the entries being filled (one per layer; they
    share the source and shard layout); ``todo``: the shards each still needs. Every needed
    shard is read once -- rows loaded and preprocessed in DataLoader workers, unreadable ones
    skipped (an error under ``strict``) -- and ``forward(batch, wanted_keys)`` returns
    ``{key: (rows, dim) float32 array}`` once per batch. Values are range-checked per batch and
    the shard written atomically to each entry that needs it. Returns ``(rows encoded, skipped)``.
    ``length_sorted``: batch each shard's rows in `batch_order` (None: texts only).
    ``deduplicate``: run the model once per distinct text of the job and copy its row to the
    duplicates (`dedup.TextReuse`; None: texts only). ``device``: where the model runs (it picks
    the default number of decoding workers, `default_num_workers`).
    """
    first = next(iter(identities.values()))
    shards = sorted(set().union(*todo.values()))
    texts = source.kind != "images"
    loop = _ShardLoop(source, preprocessor, forward, identities, strict=strict, storage_dtype=storage_dtype,
                      batch_size=batch_size, on_batch=on_batch,
                      workers=default_num_workers(source, device) if num_workers is None else num_workers,
                      length_sorted=texts if length_sorted is None else length_sorted)
    deduplicate = texts if deduplicate is None else deduplicate
    # Across shards only when every entry needs the same shards (a copied row must exist for all)
    across = deduplicate and len({frozenset(v) for v in todo.values()}) == 1
    reuse = TextReuse(source, first.shard_range, shards) if across else None
    total = sum(first.shard_range(j)[1] - first.shard_range(j)[0] for j in shards)
    loop.bar = tqdm(total=total, disable=quiet, unit="img" if source.kind == "images" else "txt",
                    unit_scale=True, desc=desc)
    skipped_all, encoded = {}, 0
    try:
        for j in shards:
            start, end = first.shard_range(j)
            plan = reuse or (TextReuse(source, first.shard_range, [j]) if deduplicate else None)
            wanted = [key for key in identities if j in todo[key]]
            outs, valid, skipped = loop.run(start, end, wanted, plan.to_encode(j) if plan else None)
            if plan is not None:
                plan.fill(j, outs, valid, skipped, loop.ids)
                loop.advance(plan.copies(j))
            for key in wanted:
                out = outs.get(key)
                if out is None:  # every row of the shard was unreadable
                    out = np.zeros((end - start, int(identities[key].encoder.get("dim") or 0)), dtype=np.float32)
                if not np.isfinite(out).all():
                    raise DataError(nonfinite_message(identities[key].encoder.get("name"), source.name, start, end,
                                                      identities[key].encoder.get("dtype")))
                cache.write_shard(identities[key], j, out, valid, skipped)
            skipped_all.update(skipped)
            encoded += end - start
    finally:
        loop.bar.close()
    return encoded, skipped_all


class _ShardLoop:
    """Runs the model over rows of one shard at a time: DataLoader, skips, per-batch range checks."""

    def __init__(self, source, preprocessor, forward, identities, *, strict, storage_dtype, batch_size,
                 on_batch, workers, length_sorted):
        self.source, self.preprocessor, self.forward, self.identities = source, preprocessor, forward, identities
        self.strict, self.storage_dtype, self.batch_size = strict, storage_dtype, batch_size
        self.on_batch, self.workers, self.length_sorted = on_batch, workers, length_sorted
        self.collate, self.ids, self.bar = SkippingCollate(preprocessor), source.ids, None

    def advance(self, n: int) -> None:
        """Count `n` rows as done (rows copied rather than encoded)."""
        if n:
            self.bar.update(n)
            if self.on_batch is not None:
                self.on_batch(n)

    def run(self, start: int, end: int, wanted: list, positions: list[int] | None):
        """`(outs by key, valid, skipped)` of rows [start, end) (only `positions` among them, if given)."""
        import torch  # the DataLoader; this module stays importable without it

        source, ids = self.source, self.ids
        if self.length_sorted:
            sampler = batch_order(source, start, end, positions)
        else:
            sampler = positions  # None: all rows in order
        loader = torch.utils.data.DataLoader(
            ShardItems(source, self.preprocessor, start, end), batch_size=self.batch_size, sampler=sampler,
            num_workers=self.workers, collate_fn=self.collate, persistent_workers=False,
            prefetch_factor=4 if self.workers > 0 else None)
        outs: dict[Any, np.ndarray] = {}
        valid = np.zeros(end - start, dtype=bool)
        skipped: dict[str, str] = {}
        for rows, batch, failed in loader:
            for i, reason in failed:
                if self.strict:
                    raise DataError(f"{source.name}: sample {ids[i]!r} could not be loaded ({reason}); "
                                    "fix or remove it, or run without --strict to skip it.")
                log.warning("skipped %s: %s", ids[i], reason)
                skipped[ids[i]] = reason
            if batch is not None:
                local = np.asarray(rows) - start
                for key, emb in self.forward(batch, wanted).items():
                    # Checked per batch, before the shard is cast: fail within seconds of the cause.
                    check_storage_range(emb, self.storage_dtype, f"{self.identities[key].encoder.get('name')} on "
                                                                 f"{source.name} rows {min(rows)}-{max(rows)}")
                    if key not in outs:
                        outs[key] = np.zeros((end - start, emb.shape[1]), dtype=np.float32)
                    outs[key][local] = emb
                valid[local] = True
            self.bar.update(len(rows) + len(failed))
            if self.on_batch is not None:
                self.on_batch(len(rows))
        return outs, valid, skipped
