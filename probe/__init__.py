"""The probing engine: data sources, embedding cache, encoding, heads, losses, trainer, pipelines.

Names are loaded lazily (PEP 562) so `import alignprobe.probe` stays cheap:
torch and the model libraries are imported only when a name that needs them is used.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    # data sources
    "open_dataset": "data.spec", "parse_spec": "data.spec", "Dataset": "data.datasets",
    "flatten_captions": "data.datasets", "class_prompts": "data.datasets",
    "load_templates": "data.templates", "clip_imagenet_templates": "data.templates",
    # cache and encoding
    "EmbeddingCache": "embeddings.cache", "CachedEmbeddings": "embeddings.cache", "default_cache_dir": "embeddings.cache",
    "encode_source": "embeddings.encoding", "ImageSource": "embeddings.encoding", "TextSource": "embeddings.encoding",
    "encode_dataset": "embeddings.encode_job",
    # heads, losses, training
    "AlignmentHead": "training.heads", "AlignmentModel": "training.heads",
    "sigmoid_loss": "training.losses", "infonce_loss": "training.losses",
    "AlignmentProbe": "training.probe", "TrainConfig": "training.config", "resolve_recipe": "training.config",
    "PRESETS": "training.config", "Trainer": "training.engine",
    # pipelines
    "RunConfig": "pipelines.run", "run_pair": "pipelines.run", "METRIC_GROUPS": "pipelines.run",
    "SweepConfig": "pipelines.sweep", "run_sweep": "pipelines.sweep",
    "load_aligned": "pipelines.aligned",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"alignprobe.probe.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'alignprobe.probe' has no attribute {name!r}")


def __dir__():
    return __all__
