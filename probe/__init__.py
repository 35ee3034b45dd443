"""The probing engine: data sources, embedding cache, encoding, heads, losses, trainer, pipelines.

Names are exported lazily (PEP 562, `alignprobe._lazy`) so `import alignprobe.probe` stays
cheap: torch and the model libraries are imported only when a name that needs them is used.
The engine's internals (`Trainer`, the recipe tables, the spec parser) stay in their modules.
"""
from __future__ import annotations

from alignprobe._lazy import lazy_exports

_EXPORTS = {
    # data sources
    "open_dataset": ".data.spec", "Dataset": ".data.datasets",
    # cache and encoding
    "EmbeddingCache": ".embeddings.cache", "CachedEmbeddings": ".embeddings.cache",
    "encode_source": ".embeddings.encoding", "ImageSource": ".embeddings.encoding",
    "TextSource": ".embeddings.encoding",
    "encode_dataset": ".embeddings.encode_job",
    # heads, losses, training
    "AlignmentHead": ".training.heads", "AlignmentModel": ".training.heads",
    "sigmoid_loss": ".training.losses", "infonce_loss": ".training.losses",
    "AlignmentProbe": ".training.probe", "TrainConfig": ".training.config",
    # pipelines
    "RunConfig": ".pipelines.run", "run_pair": ".pipelines.run",
    "SweepConfig": ".pipelines.sweep", "run_sweep": ".pipelines.sweep",
    "SailRunConfig": ".pipelines.train", "train_pair": ".pipelines.train",
    "evaluate_checkpoint": ".pipelines.train", "load_aligned": ".pipelines.aligned",
}
_SUBPACKAGES = ("data", "embeddings", "training", "pipelines", "evals")
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, subpackages=_SUBPACKAGES)
