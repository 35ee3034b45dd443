"""A layer sweep costs one encode: the sweep's ``NAME@4``, ``NAME@8``, ... (or ``--vision-layer 4,8``)
of one vision encoder are encoded together, one forward pass per batch, before their pairs run.

`encode_layer_groups` finds the pairs that share a base encoder and pooling but
differ in their layer, and -- only when some of them still have to run -- loads
the base encoder once and fills every layer's cache entry for every data set
those pairs read (`alignprobe.probe.embeddings.layers.encode_source_layers`). It
also writes each layer's manifest into the lazy-encoder memo, so the pairs that
follow find their embeddings cached without loading the model again.
"""
from __future__ import annotations

import logging
from pathlib import Path

from alignprobe.config import EncodeOptions
from alignprobe.io import write_json_atomic

from alignprobe.probe.pipelines.run import RunConfig, RunPipeline, reusable_record

log = logging.getLogger("alignprobe.sweep")


def _layer_of(config: RunConfig) -> tuple[str, int] | None:
    """(base name, layer) of a pair whose vision features come from a chosen block, else None."""
    from alignprobe.backbones import resolve_spec

    spec = resolve_spec(config.vision, "vision")
    if config.vision_layer is not None:
        return config.vision, int(config.vision_layer)
    if getattr(spec, "layer", None) is not None:
        return spec.base_name, int(spec.layer)
    return None


def encode_layer_groups(todo: list[RunConfig], *, out_dir: str | Path, options: EncodeOptions, pool: dict,
                        force: bool = False) -> list[tuple[str, list[int]]]:
    """Encode, together, the layers of each base vision encoder that ``todo`` probes at several
    layers; returns the ``(base, layers)`` groups it encoded (none when all were done or cached)."""
    from alignprobe.backbones import create_vision_encoder
    from alignprobe.probe.embeddings.encoding import ImageSource
    from alignprobe.probe.embeddings.layers import encode_source_layers
    from alignprobe.reports.records import record_path

    groups: dict[tuple, dict] = {}
    for config in todo:
        found = _layer_of(config)
        if found is not None:
            base, layer = found
            group = groups.setdefault((base, config.vision_pooling), {"layers": set(), "configs": []})
            group["layers"].add(layer)
            group["configs"].append(config)
    done = []
    for (base, pooling), group in groups.items():
        if len(group["layers"]) < 2:
            continue
        pending = []
        for config in group["configs"]:
            pipeline = RunPipeline(config, options, encoders=pool)
            key = pipeline.reuse_key()
            path = record_path(out_dir, config.vision, config.text, config.config_hash())
            if force or reusable_record(path, key) is None:
                pending.append(pipeline)
        if not pending:
            continue
        layers = sorted(group["layers"])
        specs = sorted({spec for pipeline in pending for spec in pipeline._specs().values()})
        log.info("encoding %s at layers %s in one pass per batch over %s", base, layers, ", ".join(specs))
        encoder = create_vision_encoder(base, device=options.device, dtype=options.dtype, pooling=pooling)
        for spec in specs:
            encode_source_layers(encoder, ImageSource(pending[0]._dataset(spec)), layers, cache=options.cache(),
                                 batch_size=options.batch_size, num_workers=options.num_workers,
                                 storage_dtype=options.storage_dtype, recompute=options.recompute,
                                 strict=options.strict, quiet=options.quiet)
        for pipeline in pending:  # the pairs' lazy encoders now answer from the memo: no second load
            lazy = pipeline.encoder("vision")
            layer = _layer_of(pipeline.config)[1]
            memo = lazy._memo_path()
            if memo is not None:
                write_json_atomic(memo, encoder.at_layer(layer).manifest())
        del encoder
        done.append((base, layers))
    return done
