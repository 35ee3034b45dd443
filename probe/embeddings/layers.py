"""One encode, several layers: fill the cache entries of blocks N1, N2, ... of one vision
encoder with a single forward pass per batch (`--vision-layer 4,8,12`).

Each layer is its own encoder view (`encoder.at_layer(n)`, named `NAME@n`), so
each has its own manifest, cache key and entry -- the same entries that
`encode_source(encoder.at_layer(n), ...)` reads and writes, so a later run of one
layer alone is a cache hit. Layers already cached are not recomputed; with a
single layer left this is `encode_source` itself. The loop mirrors
`encode_source` (shards written atomically, resumable, `--shard i/n`, skipped
images, `strict`), calling `encoder.forward_layers` once per batch.
"""
from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

from alignprobe.config import EncodeOptions
from alignprobe.errors import DataError, ValidationError
from alignprobe.probe.data.spec import open_dataset
from alignprobe.probe.embeddings.cache import DEFAULT_SHARD_ROWS, CacheIdentity, EmbeddingCache, open_cache
from alignprobe.probe.embeddings.encode_job import create_encoder, resolve_model
from alignprobe.probe.embeddings.encoding import (
    EncodeResult,
    ImageSource,
    encode_shards,
    encode_source,
    parse_shard,
    preprocessor_of,
    strict_error,
)

log = logging.getLogger("alignprobe.encode")


def parse_layers(text: str | int | Sequence[int] | None) -> list[int] | None:
    """`"4,8,12"` (the `--vision-layer` flag) -> [4, 8, 12]; None -> None (the last block)."""
    if text is None:
        return None
    items = [text] if isinstance(text, int) else (str(text).split(",") if isinstance(text, str) else list(text))
    out: list[int] = []
    for item in items:
        try:
            n = int(str(item).strip())
        except ValueError:
            raise ValidationError(f"--vision-layer takes block numbers like 4,8,12; got {text!r}") from None
        if n < 0:
            raise ValidationError(f"--vision-layer numbers must be >= 0, got {n}")
        if n not in out:
            out.append(n)
    if not out:
        raise ValidationError(f"--vision-layer names no layer: {text!r}")
    return out


#: The `encode_source` settings the multi-layer pass takes, with encode_source's defaults.
LAYER_SETTINGS = dict(batch_size=64, num_workers=None, storage_dtype="fp16", shard_rows=None, recompute=True,
                      shard=(0, 1), strict=False, quiet=False)


def encode_source_layers(encoder, source, layers: Sequence[int], *, cache: EmbeddingCache | None = None,
                         **settings) -> dict[int, EncodeResult]:
    """Encode `source` at each of `layers` into `cache`; `{layer: EncodeResult}` in order.

    ``settings``: `encode_source`'s keywords (`LAYER_SETTINGS`: batch_size, num_workers, storage_dtype,
    shard_rows, recompute, shard, strict, quiet), the same for every layer. Layers already cached are
    read back; the others are encoded together, one forward pass per batch.
    """
    unknown = sorted(set(settings) - set(LAYER_SETTINGS))
    if unknown:
        raise TypeError(f"encode_source_layers got unexpected setting(s) {unknown}; it takes {sorted(LAYER_SETTINGS)}")
    common = {**LAYER_SETTINGS, **settings}
    layers = parse_layers(list(layers))
    common["cache"] = cache = cache or EmbeddingCache()
    if common["shard_rows"] is None:
        common["shard_rows"] = DEFAULT_SHARD_ROWS
    storage_dtype, shard_rows, recompute = common["storage_dtype"], common["shard_rows"], common["recompute"]
    views = {n: encoder.at_layer(n) for n in layers}
    if len(source) == 0:
        raise DataError(f"{source.name!r} has no {source.kind} to encode")
    described = source.describe()
    identities = {n: CacheIdentity(modality=v.modality, encoder=v.manifest(), source=described,
                                   storage_dtype=storage_dtype, shard_rows=shard_rows)
                  for n, v in views.items()}
    results: dict[int, EncodeResult] = {}
    for n, identity in identities.items():
        if cache.lookup(identity, repair=recompute) is not None:
            results[n] = encode_source(views[n], source, **common)  # a hit: cheap, and checks strict
    left = [n for n in layers if n not in results]
    if len(left) == 1:
        results[left[0]] = encode_source(views[left[0]], source, **common)
    elif left:
        results.update(_encode_together(encoder, views, identities, left, source, **common))
    return {n: results[n] for n in layers}


def _encode_together(encoder, views, identities, left, source, *, cache, batch_size, num_workers,
                     storage_dtype, shard_rows, recompute, shard, strict, quiet) -> dict[int, EncodeResult]:
    started = time.perf_counter()
    rank, world = shard
    first = identities[left[0]]
    mine = [j for j in range(first.n_shards) if j % world == rank]
    todo = {n: set(cache.missing_shards(identities[n], mine)) for n in left}
    if any(todo.values()) and not recompute:
        raise cache.mismatch_error(identities[next(n for n in left if todo[n])])
    for n in left:
        if strict and cache.skipped_so_far(identities[n]):
            raise strict_error(source, cache.skipped_so_far(identities[n]),
                               f"shards already encoded in {cache.entry_dir(identities[n])}")
        cache.begin(identities[n])

    def forward(batch, wanted):
        return {n: emb.numpy() for n, emb in encoder.forward_layers(batch, wanted).items()}

    names = ",".join(str(n) for n in left)
    encoded, skipped_all = encode_shards(
        source, preprocessor_of(encoder), cache, {n: identities[n] for n in left}, todo, forward,
        batch_size=batch_size, num_workers=num_workers, storage_dtype=storage_dtype, strict=strict, quiet=quiet,
        desc=f"encode {encoder.spec.base_name}@{names} [{source.name} {source.kind}]",
        device=getattr(encoder, "device", None))
    seconds = time.perf_counter() - started
    out = {}
    for n in left:
        result = cache.finalize(identities[n])
        skipped = dict(result.manifest.get("skipped", {})) if result is not None else dict(skipped_all)
        out[n] = EncodeResult(result, False, encoded if todo[n] else 0, skipped, seconds)
    return out


def encode_dataset_layers(model: str, data: str, layers, *, split: str | None = None,
                          options=None) -> dict[str, EncodeResult]:
    """`alignprobe encode --vision-layer 4,8,12`: one vision encoder, one pass over the images,
    one cache entry per layer; results keyed `images@N` (the `kind` column of `encode`)."""
    options = options or EncodeOptions()
    wanted = parse_layers(layers)
    spec = resolve_model(model, "vision")
    encoder = create_encoder(spec, options=options)
    dataset = open_dataset(data, split=split, strict=options.strict)
    results = encode_source_layers(
        encoder, ImageSource(dataset), wanted, cache=open_cache(options), batch_size=options.batch_size,
        num_workers=options.num_workers, storage_dtype=options.storage_dtype,
        shard_rows=options.shard_rows, recompute=options.recompute, shard=parse_shard(options.shard),
        strict=options.strict, quiet=options.quiet)
    return {f"images@{n}": r for n, r in results.items()}
