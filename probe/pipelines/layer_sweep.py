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

from alignprobe.backbones.request import EncoderRequest
from alignprobe.config import EncodeOptions
from alignprobe.errors import AlignprobeError
from alignprobe.probe.embeddings.encoding import ImageSource
from alignprobe.probe.embeddings.layers import encode_source_layers
from alignprobe.probe.embeddings.lazy import EncoderPool
from alignprobe.probe.pipelines.run import RunConfig, RunPipeline, reusable_record
from alignprobe.reports.records import record_path

log = logging.getLogger("alignprobe.sweep")


def base_request(request: EncoderRequest) -> tuple[EncoderRequest, int] | None:
    """(the last-block request, layer) of a vision request whose features come from a chosen block
    (``layer=N`` or a registered ``NAME@N``), else None (also for a name that does not resolve:
    that pair fails, and is recorded, when it runs)."""
    try:
        spec = request.spec()
    except AlignprobeError:
        return None
    if spec.layer is None:
        return None
    if request.layer is not None:
        return request.replace(layer=None), request.layer
    return request.replace(name=spec.base_name, layer=None), int(spec.layer)


def encode_layer_groups(todo: list[RunConfig], *, out_dir: str | Path, options: EncodeOptions, pool: EncoderPool,
                        force: bool = False) -> list[tuple[str, list[int]]]:
    """Encode, together, the layers of each base vision encoder that ``todo`` probes at several
    layers; returns the ``(base, layers)`` groups it encoded (none when all were done or cached)."""
    groups: dict[str, dict] = {}
    for config in todo:
        try:
            found = base_request(config.request("vision"))
        except AlignprobeError:  # a bad setting: that pair fails, and is recorded, when it runs
            found = None
        if found is not None:
            base, layer = found
            group = groups.setdefault(base.key(), {"base": base, "layers": set(), "pipelines": []})
            group["layers"].add(layer)
            group["pipelines"].append((RunPipeline(config, options, pool=pool), layer))
    done = []
    for group in groups.values():
        if len(group["layers"]) < 2:
            continue
        pending = []
        for pipeline, layer in group["pipelines"]:
            config = pipeline.config
            path = record_path(out_dir, config.vision, config.text, config.config_hash())
            if force or reusable_record(path, pipeline.reuse_key()) is None:
                pending.append((pipeline, layer))
        if not pending:
            continue
        base, layers = group["base"], sorted(group["layers"])
        workspace = pending[0][0].workspace
        specs = sorted({spec for pipeline, _ in pending for spec in pipeline.data_specs().values()})
        log.info("encoding %s at layers %s in one pass per batch over %s", base.label, layers, ", ".join(specs))
        encoder = base.build(device=options.device, dtype=options.dtype, trust_remote_code=options.trust_remote_code)
        for spec in specs:
            encode_source_layers(encoder, ImageSource(workspace.dataset(spec)), layers, cache=workspace.cache,
                                 batch_size=options.batch_size, num_workers=options.num_workers,
                                 storage_dtype=options.storage_dtype, recompute=options.recompute,
                                 strict=options.strict, quiet=options.quiet)
        for pipeline, layer in pending:  # the pairs' lazy encoders now answer from the memo: no second load
            pipeline.workspace.encoder("vision").remember(encoder.at_layer(layer).manifest())
        del encoder
        done.append((base.label, layers))
    return done
