"""alignprobe.backbones: the encoder registry, loaders, poolers and control encoders.

Importing this package registers the built-in encoders and imports no ML
library (torch, transformers, timm, sentence-transformers load only when an
encoder is created); `Encoder` itself is imported lazily on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import catalog as _catalog  # noqa: F401  (registers the built-in encoders)
from .factory import create_text_encoder, create_vision_encoder
from .hub import check_available
from .registry import list_encoders, register_encoder, registry_table, unregister_encoder
from .request import EncoderRequest
from .resolve import WrongModalityError, resolve_spec
from .spec import EncoderSpec, Preprocessing

if TYPE_CHECKING:  # pragma: no cover
    from .encoder import Encoder

__all__ = [
    "Encoder",
    "EncoderRequest",
    "EncoderSpec",
    "Preprocessing",
    "WrongModalityError",
    "check_available",
    "create_text_encoder",
    "create_vision_encoder",
    "list_encoders",
    "register_encoder",
    "registry_table",
    "resolve_spec",
    "unregister_encoder",
]


def __getattr__(name: str):
    if name == "Encoder":
        from .encoder import Encoder

        return Encoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
