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

import hashlib
import json
import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from alignprobe._version import __version__
from alignprobe.errors import AlignprobeError, CacheMismatchError
from alignprobe.io import atomic_path, write_json_atomic

#: Bump when the on-disk format changes; part of every key.
CACHE_FORMAT = 1
ENV_CACHE_DIR = "ALIGNPROBE_CACHE_DIR"
STORAGE_DTYPES = {"fp16": np.float16, "fp32": np.float32}
_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "U8": np.uint8, "I64": np.int64}


def default_cache_dir() -> Path:
    """`$ALIGNPROBE_CACHE_DIR`, else `$XDG_CACHE_HOME/alignprobe`, else `~/.cache/alignprobe`."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "alignprobe"


def _slug(text: str, limit: int = 60) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
    return slug[:limit] or "unnamed"


def stable_hash(obj: Any, length: int = 16) -> str:
    """A hash of a JSON-able object that does not depend on dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class CacheIdentity:
    """Everything that determines the rows of one cached embedding matrix."""

    modality: str  # "vision" | "text"
    encoder: dict  # the encoder's manifest(): name, hub id, revision, pooling, preprocessing, prefix...
    source: dict  # what was encoded: kind ("images"|"captions"|"prompts"), name, fingerprint, n
    storage_dtype: str = "fp16"
    shard_rows: int = 16384

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
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(header_len))
    return 8 + header_len, header


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
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)
    return arrays


class CachedEmbeddings:
    """A read-only, memory-mapped view of one complete cache entry.

    Rows are in the order of the source; rows whose item could not be loaded
    (a missing or corrupt image) are zero and have `valid[i] == False`.
    """

    def __init__(self, directory: Path, manifest: dict):
        self.directory = Path(directory)
        self.manifest = manifest
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
            out[mask] = self._shards[j]["embeddings"][local]
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

    def __post_init__(self):
        self.root = Path(self.root).expanduser()

    def entry_dir(self, identity: CacheIdentity) -> Path:
        enc_name = identity.encoder.get("name", "encoder")
        src = identity.source
        src_slug = _slug(f"{src.get('name', 'data')}-{src.get('kind', '')}")
        return self.root / identity.modality / _slug(enc_name) / f"{src_slug}-{identity.key}"

    def shard_path(self, identity: CacheIdentity, j: int) -> Path:
        return self.entry_dir(identity) / f"shard-{j:05d}.safetensors"

    def lookup(self, identity: CacheIdentity) -> CachedEmbeddings | None:
        """The complete entry for `identity`, or None. A manifest that disagrees is a miss."""
        directory = self.entry_dir(identity)
        manifest_path = directory / "manifest.json"
        if not manifest_path.exists():
            return None
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("status") != "complete" or manifest.get("identity") != json.loads(
            json.dumps(identity.as_dict(), default=str)
        ):
            return None
        if not all((directory / name).exists() for name in manifest["shards"]):
            return None
        return CachedEmbeddings(directory, manifest)

    def missing_shards(self, identity: CacheIdentity, shards: Iterable[int] | None = None) -> list[int]:
        shards = range(identity.n_shards) if shards is None else shards
        return [j for j in shards if not self.shard_path(identity, j).exists()]

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
        tensors = {
            "embeddings": np.ascontiguousarray(embeddings, dtype=dtype),
            "valid": np.ascontiguousarray(valid, dtype=np.uint8),
        }
        metadata = {"skipped": json.dumps(skipped), "rows": f"{start}:{end}"}
        with atomic_path(self.shard_path(identity, j)) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)

    def finalize(self, identity: CacheIdentity, extra: dict | None = None) -> CachedEmbeddings | None:
        """Write the complete manifest if every shard exists (any host may call this)."""
        from safetensors import safe_open

        if self.missing_shards(identity):
            return None
        directory = self.entry_dir(identity)
        names = [self.shard_path(identity, j).name for j in range(identity.n_shards)]
        skipped: dict[str, str] = {}
        dim = None
        for name in names:
            with safe_open(str(directory / name), framework="numpy") as fh:
                skipped.update(json.loads(fh.metadata().get("skipped", "{}")))
                dim = fh.get_slice("embeddings").get_shape()[1]
        manifest = {
            "status": "complete",
            "identity": json.loads(json.dumps(identity.as_dict(), default=str)),
            "key": identity.key,
            "shape": [identity.n_rows, dim],
            "dtype": identity.storage_dtype,
            "shards": names,
            "skipped": skipped,
            "alignprobe_version": __version__,
            **(extra or {}),
        }
        write_json_atomic(directory / "manifest.json", manifest)
        partial = directory / "manifest.partial.json"
        if partial.exists():
            partial.unlink()
        return CachedEmbeddings(directory, manifest)

    def near_misses(self, identity: CacheIdentity) -> list[tuple[Path, list[str]]]:
        """Complete entries for the same encoder name and source name whose identity differs.

        Used to explain a cache miss under `--no-recompute`: which settings changed.
        """
        parent = self.entry_dir(identity).parent
        if not parent.exists():
            return []
        want = json.loads(json.dumps(identity.as_dict(), default=str))
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
                f"{self.root}; run without --no-recompute to encode them."
            )
        lines = [f"  {path.name}: differs in {', '.join(diff) or 'nothing visible'}" for path, diff in misses]
        return CacheMismatchError(
            f"cached embeddings of {src!r} by {name!r} were made with other settings:\n"
            + "\n".join(lines)
            + "\nrun without --no-recompute to encode with the current settings."
        )


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]
