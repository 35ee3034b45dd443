"""alignprobe: assess and learn the alignment of frozen vision and language encoders (SAIL).

The public API is re-exported here lazily (PEP 562): `import alignprobe` is
cheap, and torch or the model libraries load only when a name needs them.
"""
from __future__ import annotations

import importlib

from alignprobe._version import __version__

_EXPORTS = {
    "create_vision_encoder": "alignprobe.backbones",
    "create_text_encoder": "alignprobe.backbones",
    "list_encoders": "alignprobe.backbones",
    "register_encoder": "alignprobe.backbones",
    "resolve_spec": "alignprobe.backbones",
    "EncoderSpec": "alignprobe.backbones",
    "EncoderRequest": "alignprobe.backbones",
    "open_dataset": "alignprobe.probe.data.spec",
    "EmbeddingCache": "alignprobe.probe.embeddings.cache",
    "encode_dataset": "alignprobe.probe.embeddings.encode_job",
    "EncodeOptions": "alignprobe.config",
    "RunConfig": "alignprobe.probe.pipelines.run",
    "run_pair": "alignprobe.probe.pipelines.run",
    "SweepConfig": "alignprobe.probe.pipelines.sweep",
    "run_sweep": "alignprobe.probe.pipelines.sweep",
    "load_aligned": "alignprobe.probe.pipelines.aligned",
    "export_vision_tower": "alignprobe.probe.export",
}
__all__ = ["__version__", *sorted(_EXPORTS)]

# transformers' AutoConfig / AutoModel learn the exported vision tower's model type when they load
import alignprobe.probe.export  # noqa: E402,F401  (stdlib only: imports no ML library)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alignprobe' has no attribute {name!r}")


def __dir__():
    return __all__
