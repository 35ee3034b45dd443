"""The embedding cache: encode once, reuse everywhere.

A grid of M vision x N text encoders costs M + N encodings because every
embedding matrix is stored once, keyed by everything that changes it.

Layout of one entry::

    <root>/<modality>/<encoder-slug>/<source-slug>-<key>/
        manifest.json            # identity + shape + status ("complete" once all shards exist)
        shard-00000.safetensors  # rows [0, shard_rows) : "embeddings" (rows, dim), "valid" (rows,) uint8
        shard-00001.safetensors  # ...

`key` is a hash of the identity (encoder manifest, source fingerprint, storage
dtype, shard size, code-format version), so a setting that changes an
embedding lands in a different directory and can never be mistaken for a hit
(platonic-rep's lesson: every setting belongs in the key). Shards are written
atomically, so an interrupted encode resumes from the last complete shard, and
several hosts can fill one entry over shared storage (`--shard i/n`).
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from alignprobe._version import __version__
from alignprobe.config import ENV_CACHE_DIR, default_cache_dir  # noqa: F401  (re-exported: the cache's home)
from alignprobe.errors import AlignprobeError, CacheDamagedError, CacheMismatchError, DataError, ValidationError
from alignprobe.hashing import slug, stable_hash
from alignprobe.io import atomic_path, library_write, write_json_atomic

log = logging.getLogger("alignprobe.cache")

#: Bump when the on-disk format changes; part of every key.
CACHE_FORMAT = 1
STORAGE_DTYPES = {"fp16": np.float16, "fp32": np.float32}
#: Rows per shard, the unit an interrupted encode resumes from. Small enough that a kill -9
#: of a slow encoder (a 7B text embedder on CPU at ~2 rows/s) loses about half an hour at most,
#: large enough that a 10M-row cache stays at a few thousand files. `--shard-rows` changes it.
DEFAULT_SHARD_ROWS = 4096
_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "U8": np.uint8, "I64": np.int64}


def open_cache(options) -> "EmbeddingCache":
    """The embedding cache `EncodeOptions` name (its directory and shard size)."""
    root = options.cache_root()
    return EmbeddingCache(root) if options.shard_rows is None else EmbeddingCache(root, shard_rows=options.shard_rows)


@dataclass(frozen=True)
class CacheIdentity:
    """Everything that determines the rows of one cached embedding matrix."""

    modality: str  # "vision" | "text"
    encoder: dict  # the encoder's manifest(): name, hub id, revision, pooling, preprocessing, prefix...
    source: dict  # what was encoded: kind ("images"|"captions"|"prompts"), name, fingerprint, n
    storage_dtype: str = "fp16"
    shard_rows: int = DEFAULT_SHARD_ROWS

    def __post_init__(self):
        if isinstance(self.shard_rows, bool) or not isinstance(self.shard_rows, int) or self.shard_rows < 1:
            raise ValidationError(f"shard_rows (--shard-rows) must be an integer >= 1, got {self.shard_rows!r}")

    def as_dict(self) -> dict:
        return {
            "modality": self.modality,
            "encoder": self.encoder,
            "source": self.source,
            "storage_dtype": self.storage_dtype,
            "shard_rows": self.shard_rows,
            "cache_format": CACHE_FORMAT,
        }

    @property
    def key(self) -> str:
        return stable_hash(self.as_dict())

    @property
    def n_rows(self) -> int:
        return int(self.source["n"])

    @property
    def n_shards(self) -> int:
        return max(1, -(-self.n_rows // self.shard_rows))

    def shard_range(self, j: int) -> tuple[int, int]:
        start = j * self.shard_rows
        return start, min(start + self.shard_rows, self.n_rows)


def _read_safetensors_header(path: Path) -> tuple[int, dict]:
    """(data start, header) of a safetensors file; CacheDamagedError if it is truncated or garbled."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CacheDamagedError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                raise CacheDamagedError(f"{path}: truncated safetensors header ({size} bytes, "
                                        f"header claims {header_len})")
            header = json.loads(fh.read(header_len))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CacheDamagedError(f"{path}: unreadable safetensors header ({err})") from None
    except OSError as err:
        raise CacheDamagedError(f"{path}: cannot be read ({err})") from None
    if not isinstance(header, dict):
        raise CacheDamagedError(f"{path}: safetensors header is not a JSON object")
    return 8 + header_len, header


def check_shard(path: str | os.PathLike, rows: int | None = None, dim: int | None = None) -> str | None:
    """Why the shard file at `path` is unusable (truncated, garbled, wrong shape), or None if it is sound.

    Reads only the header and the file size, so checking a whole entry costs
    one small read per shard.
    """
    path = Path(path)
    try:
        data_start, header = _read_safetensors_header(path)
    except CacheDamagedError as err:
        return str(err).split(": ", 1)[-1]
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    emb, valid = tensors.get("embeddings"), tensors.get("valid")
    if not isinstance(emb, dict) or not isinstance(valid, dict):
        return "lacks the 'embeddings' or 'valid' tensor"
    try:
        end = max(int(t["data_offsets"][1]) for t in tensors.values())
        shape = [int(v) for v in emb["shape"]]
    except (KeyError, TypeError, ValueError, IndexError):
        return "has a malformed tensor table"
    size = os.path.getsize(path)
    if data_start + end != size:
        return f"truncated or padded: {size} bytes where its header needs {data_start + end}"
    if rows is not None and shape[0] != rows:
        return f"holds {shape[0]} rows, expected {rows}"
    if dim is not None and len(shape) == 2 and shape[1] != dim:
        return f"holds dim {shape[1]}, expected {dim}"
    return None


def shard_skipped(path: str | os.PathLike) -> dict[str, str]:
    """The skipped sample ids (id -> reason) recorded in one shard's metadata."""
    _, header = _read_safetensors_header(Path(path))
    try:
        return dict(json.loads((header.get("__metadata__") or {}).get("skipped", "{}")))
    except (json.JSONDecodeError, TypeError, ValueError):
        raise CacheDamagedError(f"{path}: unreadable 'skipped' metadata") from None


def memmap_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Memory-map every tensor of a safetensors file as a read-only numpy array.

    Hand-written because safetensors' own loaders copy tensors into RAM; the
    format (8-byte header length, JSON header, raw little-endian data) lets
    numpy map each tensor in place, so opening a 1M x 1024 cache reads only headers.
    """
    path = Path(path)
    data_start, header = _read_safetensors_header(path)
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise AlignprobeError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end == begin:
            arrays[name] = np.zeros(shape, dtype=dtype)
        else:
            try:
                arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)
            except ValueError as err:  # "mmap length is greater than file size": a truncated shard
                raise CacheDamagedError(f"{path}: tensor {name!r} is truncated ({err}); delete the "
                                        f"entry or re-encode (a lookup moves damaged entries aside)") from None
    return arrays


class CachedEmbeddings:
    """A read-only, memory-mapped view of one complete cache entry.

    Rows are in the order of the source; rows whose item could not be loaded
    (a missing or corrupt image) are zero and have `valid[i] == False`.
    """

    def __init__(self, directory: Path, manifest: dict):
        self.directory = Path(directory)
        self.manifest = manifest
        # A shard that fails to map is damaged; its path is in the message (no bare mmap error).
        self._shards = [memmap_safetensors(self.directory / name) for name in manifest["shards"]]
        self._starts = np.cumsum([0] + [s["embeddings"].shape[0] for s in self._shards])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.manifest["shape"][0]), int(self.manifest["shape"][1]))

    @property
    def dim(self) -> int:
        return self.shape[1]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def valid(self) -> np.ndarray:
        """Boolean mask (n,) of rows whose item was encoded."""
        return np.concatenate([np.asarray(s["valid"], dtype=bool) for s in self._shards])

    @property
    def skipped_ids(self) -> list[str]:
        return list(self.manifest.get("skipped", {}).keys())

    def rows(self, index: Sequence[int] | np.ndarray | slice | None = None, dtype=np.float32) -> np.ndarray:
        """Gather rows (any order) into a new in-memory array of `dtype`.

        Only the requested rows are read from disk, so batches can stream from
        a cache far larger than RAM.
        """
        if index is None:
            index = slice(None)
        contiguous = isinstance(index, slice) and index.step in (None, 1)
        if isinstance(index, slice):
            index = np.arange(len(self))[index]
        index = np.asarray(index, dtype=np.int64)
        # Random gathers (training batches) should fault in only the rows asked
        # for; the kernel's default read-around would map megabytes per row.
        self._advise(mmap.MADV_NORMAL if contiguous else mmap.MADV_RANDOM)
        out = np.empty((len(index), self.dim), dtype=dtype)
        shard_of = np.searchsorted(self._starts, index, side="right") - 1
        for j in np.unique(shard_of):
            mask = shard_of == j
            local = index[mask] - self._starts[j]
            block = self._shards[j]["embeddings"][local]
            if not np.isfinite(block).all():  # never written so (write_shard refuses it): damage
                raise CacheDamagedError(_nonfinite_shard(self.directory, self.manifest["shards"][j], block, local))
            out[mask] = block
        return out

    def _advise(self, advice: int) -> None:
        for shard in self._shards:
            handle = getattr(shard["embeddings"], "_mmap", None)
            if handle is not None and hasattr(handle, "madvise"):
                handle.madvise(advice)

    def to_numpy(self, dtype=np.float32) -> np.ndarray:
        return self.rows(None, dtype=dtype)

    def __repr__(self) -> str:
        enc = self.manifest["identity"]["encoder"].get("name")
        src = self.manifest["identity"]["source"].get("name")
        return f"CachedEmbeddings(encoder={enc!r}, source={src!r}, shape={self.shape})"


@dataclass
class EmbeddingCache:
    """Root of the on-disk embedding cache (see module docstring for the layout)."""

    root: Path = field(default_factory=default_cache_dir)
    #: Rows per shard for entries encoded through this cache when the caller names none
    #: (`--shard-rows` travels this way, so every command that encodes honours it).
    shard_rows: int = DEFAULT_SHARD_ROWS

    def __post_init__(self):
        self.root = Path(self.root).expanduser()
        if isinstance(self.shard_rows, bool) or not isinstance(self.shard_rows, int) or self.shard_rows < 1:
            raise ValidationError(f"shard_rows (--shard-rows) must be an integer >= 1, got {self.shard_rows!r}")

    def entry_dir(self, identity: CacheIdentity) -> Path:
        enc_name = identity.encoder.get("name", "encoder")
        src = identity.source
        src_slug = slug(f"{src.get('name', 'data')}-{src.get('kind', '')}")
        return self.root / identity.modality / slug(enc_name) / f"{src_slug}-{identity.key}"

    def shard_path(self, identity: CacheIdentity, j: int) -> Path:
        return self.entry_dir(identity) / f"shard-{j:05d}.safetensors"

    def lookup(self, identity: CacheIdentity, *, repair: bool = True) -> CachedEmbeddings | None:
        """The complete entry for `identity`, or None. A manifest that disagrees is a miss.

        An entry made with another `shard_rows` but otherwise equal holds the
        same rows, so it is a hit too. A damaged entry (unreadable manifest,
        truncated or missing shard) is reported and its damaged files moved
        aside into ``damaged-<time>/`` so the encode recomputes only them
        (`repair`); with ``repair=False`` (``--no-recompute``) it is a
        `CacheDamagedError` naming the entry.
        """
        found = self._lookup_dir(self.entry_dir(identity), identity, repair=repair, exact=True)
        if found is not None:
            return found
        parent = self.entry_dir(identity).parent
        if not parent.is_dir():
            return None
        # Same identity, another shard size: only complete, sound entries of the same encoder/source qualify.
        want = _identity_json(identity)
        want.pop("shard_rows")
        for manifest_path in sorted(parent.glob("*/manifest.json")):
            if manifest_path.parent == self.entry_dir(identity):
                continue
            manifest = _read_manifest(manifest_path)
            other = dict((manifest or {}).get("identity") or {})
            other.pop("shard_rows", None)
            if other == want:
                hit = self._lookup_dir(manifest_path.parent, None, repair=False, exact=False)
                if hit is not None:
                    return hit
        return None

    def _lookup_dir(self, directory: Path, identity: CacheIdentity | None, *, repair: bool,
                    exact: bool) -> CachedEmbeddings | None:
        manifest_path = directory / "manifest.json"
        if not manifest_path.exists():
            return None
        manifest = _read_manifest(manifest_path)
        if manifest is None:
            if not exact:
                return None
            return self._damaged(directory, [manifest_path], "manifest.json is not readable JSON", repair)
        if manifest.get("status") != "complete":
            return None
        if identity is not None and manifest.get("identity") != _identity_json(identity):
            return None
        problems = _manifest_problems(directory, manifest)
        if problems:
            if not exact:
                return None
            bad = [directory / name for name, _ in problems if (directory / name).exists()]
            detail = "; ".join(f"{name}: {why}" for name, why in problems)
            return self._damaged(directory, [manifest_path, *bad], detail, repair)
        try:
            return CachedEmbeddings(directory, manifest)
        except (CacheDamagedError, KeyError, TypeError, ValueError) as err:
            if not exact:
                return None
            return self._damaged(directory, [manifest_path], str(err), repair)

    def _damaged(self, directory: Path, files: list[Path], detail: str, repair: bool) -> None:
        if not repair:
            raise CacheDamagedError(
                f"cache entry {directory} is damaged ({detail}); run with recompute=True (no --no-recompute) to move the "
                f"damaged files aside and re-encode them, or delete the entry")
        aside = self.quarantine(directory, files)
        log.warning("cache entry %s is damaged (%s); moved the damaged files to %s and re-encoding them",
                    directory, detail, aside)
        return None

    def quarantine(self, directory: Path, files: Iterable[Path]) -> Path:
        """Move `files` of an entry into ``<entry>/damaged-<time>/`` (kept for inspection, never deleted)."""
        aside = Path(directory) / f"damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        aside.mkdir(parents=True, exist_ok=True)
        for f in files:
            try:
                os.replace(f, aside / Path(f).name)
            except FileNotFoundError:  # another process moved or replaced it first
                pass
        return aside

    def missing_shards(self, identity: CacheIdentity, shards: Iterable[int] | None = None) -> list[int]:
        """Shards of `identity` not on disk; a damaged shard file is moved aside and counts as missing."""
        shards = range(identity.n_shards) if shards is None else shards
        missing = []
        for j in shards:
            path = self.shard_path(identity, j)
            if not path.exists():
                missing.append(j)
                continue
            start, end = identity.shard_range(j)
            why = check_shard(path, rows=end - start)
            if why is not None:
                aside = self.quarantine(path.parent, [path])
                log.warning("cache shard %s is damaged (%s); moved to %s, it will be re-encoded", path, why, aside)
                missing.append(j)
        return missing

    def skipped_so_far(self, identity: CacheIdentity) -> dict[str, str]:
        """Skipped ids recorded in the shards of `identity` already on disk (for `--strict` on resume)."""
        out: dict[str, str] = {}
        for j in range(identity.n_shards):
            path = self.shard_path(identity, j)
            if path.exists():
                out.update(shard_skipped(path))
        return out

    def begin(self, identity: CacheIdentity) -> None:
        """Record the identity of an entry being filled (so a resume can be checked)."""
        directory = self.entry_dir(identity)
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / "manifest.partial.json"
        if not partial.exists():
            write_json_atomic(partial, {"identity": identity.as_dict(), "alignprobe_version": __version__})

    def write_shard(self, identity: CacheIdentity, j: int, embeddings: np.ndarray, valid: np.ndarray,
                    skipped: dict[str, str]) -> None:
        """Write shard `j` atomically; `skipped` maps sample id -> reason for rows not encoded."""
        from safetensors.numpy import save_file

        start, end = identity.shard_range(j)
        if embeddings.shape[0] != end - start:
            raise AlignprobeError(f"shard {j} expects {end - start} rows, got {embeddings.shape[0]}")
        dtype = STORAGE_DTYPES[identity.storage_dtype]
        check_storage_range(embeddings, identity.storage_dtype,
                            f"cache entry {self.entry_dir(identity)}, shard {j} ({identity.encoder.get('name')} "
                            f"rows {start}-{end})")
        tensors = {
            "embeddings": np.ascontiguousarray(embeddings, dtype=dtype),
            "valid": np.ascontiguousarray(valid, dtype=np.uint8),
        }
        metadata = {"skipped": json.dumps(skipped), "rows": f"{start}:{end}"}
        target = self.shard_path(identity, j)
        # A full disk surfaces as safetensors' own error; re-raised as the OSError it is, the
        # finished shards stay and a rerun resumes from this one.
        with atomic_path(target) as tmp, library_write(target):
            save_file(tensors, str(tmp), metadata=metadata)

    def finalize(self, identity: CacheIdentity, extra: dict | None = None) -> CachedEmbeddings | None:
        """Write the complete manifest if every shard exists (any host may call this).

        Idempotent and safe when several processes finish the same entry at
        once: each writes the same manifest atomically (the last rename wins,
        with equal content), and a partial manifest another process already
        removed is not an error.
        """
        if self.missing_shards(identity):
            return None
        directory = self.entry_dir(identity)
        names = [self.shard_path(identity, j).name for j in range(identity.n_shards)]
        skipped: dict[str, str] = {}
        dim = None
        for name in names:
            _, header = _read_safetensors_header(directory / name)
            skipped.update(shard_skipped(directory / name))
            dim = int(header["embeddings"]["shape"][1])
        manifest = {
            "status": "complete",
            "identity": _identity_json(identity),
            "key": identity.key,
            "shape": [identity.n_rows, dim],
            "dtype": identity.storage_dtype,
            "shards": names,
            "skipped": skipped,
            "alignprobe_version": __version__,
            **(extra or {}),
        }
        write_json_atomic(directory / "manifest.json", manifest)
        (directory / "manifest.partial.json").unlink(missing_ok=True)
        return CachedEmbeddings(directory, manifest)

    def near_misses(self, identity: CacheIdentity) -> list[tuple[Path, list[str]]]:
        """Complete entries for the same encoder name and source name whose identity differs.

        Used to explain a cache miss under `--no-recompute`: which settings changed.
        """
        parent = self.entry_dir(identity).parent
        if not parent.exists():
            return []
        want = _identity_json(identity)
        out = []
        for manifest_path in parent.glob("*/manifest.json"):
            try:
                other = json.loads(manifest_path.read_text()).get("identity", {})
            except (OSError, json.JSONDecodeError):
                continue
            if other.get("source", {}).get("name") != want["source"].get("name"):
                continue
            out.append((manifest_path.parent, _diff_keys(want, other)))
        return out

    def mismatch_error(self, identity: CacheIdentity) -> CacheMismatchError:
        misses = self.near_misses(identity)
        name = identity.encoder.get("name")
        src = identity.source.get("name")
        if not misses:
            return CacheMismatchError(
                f"no cached {identity.source.get('kind')} embeddings of {src!r} by {name!r} under "
                f"{self.root}; run with recompute=True (no --no-recompute) to encode them."
            )
        lines = [f"  {path.name}: differs in {', '.join(diff) or 'nothing visible'}" for path, diff in misses]
        return CacheMismatchError(
            f"cached embeddings of {src!r} by {name!r} were made with other settings:\n"
            + "\n".join(lines)
            + "\nrun without --no-recompute to encode with the current settings."
        )


def _identity_json(identity: CacheIdentity) -> dict:
    """The identity as it reads back from a manifest (JSON round trip: tuples become lists)."""
    return json.loads(json.dumps(identity.as_dict(), default=str))


def _read_manifest(path: Path) -> dict | None:
    """The manifest at `path`, or None when it is truncated, empty or not a JSON object."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _manifest_problems(directory: Path, manifest: dict) -> list[tuple[str, str]]:
    """(shard name, reason) for each shard a complete manifest names that is missing or unsound."""
    try:
        names = list(manifest["shards"])
        n_rows, dim = (int(v) for v in manifest["shape"])
        shard_rows = int(manifest["identity"]["shard_rows"])
    except (KeyError, TypeError, ValueError):
        return [("manifest.json", "lacks shards, shape or shard_rows")]
    problems = []
    for j, name in enumerate(names):
        path = directory / str(name)
        if not path.exists():
            problems.append((str(name), "missing"))
            continue
        rows = min(shard_rows, n_rows - j * shard_rows)
        why = check_shard(path, rows=rows, dim=dim)
        if why is not None:
            problems.append((str(name), why))
    if not problems and len(names) != max(1, -(-n_rows // shard_rows)):
        problems.append(("manifest.json", f"names {len(names)} shards for {n_rows} rows"))
    return problems


def check_storage_range(embeddings: np.ndarray, storage_dtype: str, where: str) -> None:
    """Refuse NaN / Inf (any storage dtype) and values that the storage dtype cannot hold
    (fp16 overflows to Inf above 65,504).

    Checked before the cast: numpy would store Inf with only a warning, and a
    later `run` would fail far from the cause. Finiteness is checked on its own,
    first: a maximum taken over values that include a NaN is NaN, and a NaN compares
    false with any limit, so a range check alone would let the whole shard through.
    """
    if embeddings.size == 0:
        return
    finite = np.isfinite(embeddings)
    if not finite.all():
        rows = (np.flatnonzero(~finite.reshape(len(embeddings), -1).all(axis=1)) if embeddings.ndim > 1
                else np.flatnonzero(~finite))
        raise DataError(
            f"{where}: {len(rows)} of {len(embeddings)} rows hold NaN or Inf (the first is row {int(rows[0])} of "
            f"these), so nothing was cached. The encoder produced them: in fp16/bf16 an overflow is the usual "
            f"cause (encode with dtype='fp32' (--dtype fp32)); in fp32 the weights or those inputs are broken")
    if storage_dtype != "fp16":
        return
    peak = float(np.max(np.abs(embeddings)))
    limit = float(np.finfo(np.float16).max)
    if peak > limit:
        raise ValidationError(
            f"{where}: embedding values reach {peak:.4g}, beyond the fp16 range (+-{limit:.0f}), so an fp16 "
            f"cache would store Inf; encode with --storage-dtype fp32 (storage_dtype='fp32')")


def _nonfinite_shard(directory: Path, shard: str, block: np.ndarray, local: np.ndarray) -> str:
    bad = np.flatnonzero(~np.isfinite(block).reshape(len(block), -1).all(axis=1))
    return (f"cache entry {directory}: shard {shard} holds NaN or Inf in {len(bad)} of the rows read (first: row "
            f"{int(local[bad[0]])} of the shard); the entry is damaged. Delete the entry (or the shard and its "
            f"manifest.json) and encode again")


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
