"""Device and dtype choice: "auto" picks the best accelerator present, never a hard-coded cuda."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from alignprobe.errors import ValidationError

if TYPE_CHECKING:  # torch is imported lazily: resolving a name must not load it
    import torch

_DTYPE_NAMES = {
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}


def resolve_device(device: Any = "auto"):
    """`"auto"`/None: cuda if available, else mps, else cpu; otherwise a device that must exist."""
    import torch

    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValidationError(
            "device must be 'auto', 'cpu', 'cuda', 'cuda:<i>', 'mps' or a torch.device, got "
            f"{device!r}"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValidationError(
                f"device {device!r} requested but CUDA is not available; use device='auto' or 'cpu'"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValidationError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) "
                "exist"
            )
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValidationError(
                f"device {device!r} requested but MPS is not available; use device='auto' or 'cpu'"
            )
    return dev


def resolve_dtype(dtype: Any, device) -> "torch.dtype":
    """None/"auto": float16 on cuda, float32 elsewhere.

    Accepts "fp32"/"fp16"/"bf16", their long names, or torch dtypes.
    """
    import torch

    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        name = str(dtype).replace("torch.", "")
    elif isinstance(dtype, str):
        name = _DTYPE_NAMES.get(dtype.strip().lower(), "")
    else:
        name = ""
    if name not in ("float32", "float16", "bfloat16"):
        raise ValidationError(
            "dtype must be one of 'fp32', 'fp16', 'bf16' (or torch.float32/float16/bfloat16), "
            f"got {dtype!r}"
        )
    return getattr(torch, name)


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")
