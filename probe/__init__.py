"""The probing engine: data sources, embedding cache, encoding, heads, losses, trainer, pipelines.

Names are loaded lazily (PEP 562) so `import alignprobe.probe` stays cheap:
torch and the model libraries are imported only when a name that needs them is used.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # data sources
    "open_dataset": "data_spec", "parse_spec": "data_spec", "Dataset": "datasets",
    "flatten_captions": "datasets", "class_prompts": "datasets",
    "load_templates": "templates", "clip_imagenet_templates": "templates",
    # cache and encoding
    "EmbeddingCache": "cache", "CachedEmbeddings": "cache", "default_cache_dir": "cache",
    "encode_source": "encoding", "ImageSource": "encoding", "TextSource": "encoding",
    "encode_dataset": "encode_job",
    # heads, losses, training
    "AlignmentHead": "heads", "AlignmentModel": "heads",
    "sigmoid_loss": "losses", "infonce_loss": "losses",
    "AlignmentProbe": "trainer", "ProbeConfig": "trainer",
    # pipelines
    "RunConfig": "pipeline", "run_pair": "pipeline", "METRIC_GROUPS": "pipeline",
    "SweepConfig": "sweep", "run_sweep": "sweep",
    "load_aligned": "aligned",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"alignprobe.probe.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'alignprobe.probe' has no attribute {name!r}")


def __dir__():
    return __all__
