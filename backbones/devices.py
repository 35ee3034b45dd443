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


def resolve_device(device: Any = "auto", *, local_rank: int | None = None):
    """The one device resolver of the package (encoders, the training engine, distributed ranks).

    ``"auto"``/None: CUDA if available (``cuda:<local_rank>`` for a torchrun rank), else Apple
    MPS, else CPU. Anything else must exist: ``cuda:3`` on a one-GPU machine, CUDA on a CPU
    machine or MPS off a Mac is one clear `ValidationError` at the boundary. A bare ``cuda``
    under torchrun becomes the rank's own GPU.
    """
    import torch  # lazily: resolving a name must not load it

    if isinstance(device, torch.device):
        dev = device
    elif device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            if local_rank is None:
                return torch.device("cuda")
            return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    else:
        try:
            dev = torch.device(device.strip() if isinstance(device, str) else device)
        except (RuntimeError, TypeError):
            raise ValidationError(
                "device must be 'auto', 'cpu', 'cuda', 'cuda:<i>', 'mps' or a torch.device, got "
                f"{device!r}"
            ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValidationError(
                f"device {str(device)!r} requested but CUDA is not available; use device 'auto' or 'cpu'"
            )
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValidationError(
                f"device {str(device)!r} requested but only {torch.cuda.device_count()} CUDA device(s) "
                "exist; use device 'auto' or one of cuda:0..cuda:"
                f"{max(0, torch.cuda.device_count() - 1)}"
            )
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValidationError(
                f"device {str(device)!r} requested but MPS is not available; use device 'auto' or 'cpu'"
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
