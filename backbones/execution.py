"""Which library will compute an encoder's features, decided before its weights load.

A CPU image encoder in fp32 runs its forward as an onnxruntime graph where that equals torch
(`onnx_runtime`), unless the user turned that off with `ALIGNPROBE_ONNX=0`. The backend is part of
the embeddings' cache key (the loaded encoder's manifest says which ran); the identities that must
be known without loading a model -- the lazy encoder's memo key and a run's reuse key
(`alignprobe.probe.embeddings.lazy.LazyEncoder.identity_key`) -- take it from `planned_execution`,
so that a record or a memo written with one backend is not reused with the other.

Imports no ML library (the identity code runs before anything loads).
"""

from __future__ import annotations

import importlib.util
import os
import sys

ENV = "ALIGNPROBE_ONNX"
_OFF = ("0", "false", "no", "off")

#: The builders ("module:function", as the factory resolves them) whose encoders are
#: `onnx_capable`; `tests/test_onnx_identity.py` checks each against the class it builds.
ONNX_BUILDERS = frozenset({
    "alignprobe.backbones.timm_vision:load",
    "alignprobe.backbones.hf_vision:load",
    "alignprobe.backbones.controls:random_vit",
})


def onnx_enabled() -> bool:
    """False when the user turned the onnxruntime path off (`ALIGNPROBE_ONNX=0`)."""
    return os.environ.get(ENV, "1").strip().lower() not in _OFF


def onnx_installed() -> bool:
    """Whether onnxruntime can be imported (found without importing it)."""
    if "onnxruntime" in sys.modules:  # None there: an import was made to fail (as a test does)
        return sys.modules["onnxruntime"] is not None
    return importlib.util.find_spec("onnxruntime") is not None


def onnx_capable(builder: str, modality: str) -> bool:
    """Whether the encoder `builder` makes has the choice of backends at all."""
    return modality == "vision" and builder in ONNX_BUILDERS


def why_torch(*, device_type: str, dtype: str, layer: int | None) -> str | None:
    """Why an encoder with the choice of backends runs torch without trying onnxruntime (None: it
    tries): the one rule that `Encoder._use_onnx` applies when it loads and `planned_execution`
    predicts before. ``dtype`` as `devices.dtype_name` writes it ("float32", ...)."""
    if not onnx_enabled():
        return f"{ENV}=0"
    if device_type != "cpu" or dtype != "float32":
        return "onnxruntime serves fp32 CPU encoders only"
    if layer is not None:
        return "layer features run in torch"
    return None


def planned_execution(builder: str, modality: str, *, device_type: str, dtype: str,
                      layer: int | None) -> str:
    """"onnxruntime" when an encoder built by `builder` on `device_type` in `dtype` will try the
    onnxruntime path (capable, installed, and `why_torch` finds no reason against), else "torch".
    A graph that then fails its exactness check runs torch, an outcome fixed by the weights and
    library versions (both in the identity too)."""
    if not onnx_capable(builder, modality) or not onnx_installed():
        return "torch"
    return "torch" if why_torch(device_type=device_type, dtype=dtype, layer=layer) else "onnxruntime"
