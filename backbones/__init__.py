"""alignprobe.backbones: the encoder registry, loaders, poolers and control encoders.

Importing this package registers the built-in encoders and imports no ML
library (torch, transformers, timm, sentence-transformers load only when an
encoder is created); its names are exported lazily (PEP 562, `alignprobe._lazy`).
"""
from __future__ import annotations

from alignprobe._lazy import lazy_exports

from . import catalog as _catalog  # noqa: F401  (registers the built-in encoders)

_EXPORTS = {
    "Encoder": ".encoder",
    "EncoderRequest": ".request",
    "EncoderSpec": ".spec", "Preprocessing": ".spec",
    "WrongModalityError": ".resolve", "resolve_spec": ".resolve",
    "check_available": ".hub",
    "create_text_encoder": ".factory", "create_vision_encoder": ".factory",
    "list_encoders": ".registry", "register_encoder": ".registry", "registry_table": ".registry",
    "unregister_encoder": ".registry",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
