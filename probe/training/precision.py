"""Whether a device multiplies bf16 natively: where the small-data recipe trains under bf16 autocast.

The SAIL reference trains under mixed precision by default (lezhang7/SAIL ``train/params.py``:
``--precision amp``, fp16 autocast on a GPU). On a CPU the analogue is bf16 autocast, but it pays
only where the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX); elsewhere oneDNN
emulates bf16 and the heads would run slower than in fp32. So the choice is made per device, from
what the hardware reports, never assumed.
"""
from __future__ import annotations

import torch

#: What runs in half precision under ``precision="bf16"`` / ``"fp16"``: the heads (autocast) and
#: the sigmoid loss's matrix products (`losses.pairwise_sigmoid_loss` ``matmul_dtype``), as in
#: the reference's autocast; sums, normalisation and the loss's nonlinearities stay fp32, and the
#: logit scale's gradient is taken from the rounded products the loss used (since 2026-12-07
#: night; before, from the features). Part of the result reuse key: a record trained under
#: another scope is not reused.
HALF_PRECISION_SCOPE = "heads, sigmoid-loss products; scale gradient from the rounded products"


def _cpu_has(name: str) -> bool:
    # torch.cpu's capability probes (cpuinfo underneath); absent in some builds: then "no".
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


def native_bf16(device: torch.device | str) -> bool:
    """True when ``device`` computes bf16 matrix products in hardware (a CUDA GPU that supports
    bf16; a CPU with AVX512-BF16 or AMX tiles); False elsewhere (MPS included: not measured)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_has("_is_avx512_bf16_supported") or _cpu_has("_is_amx_tile_supported")
    return False
