"""Keep freed memory in the process: glibc's allocator settings, applied by the tool itself.

glibc maps every allocation above a threshold (32 MiB once it has adapted) afresh
with ``mmap`` and unmaps it on free, so a training step or an encoder forward
that allocates the same large activations every batch faults all their pages
in again -- and the kernel zeroes them -- each time: 12-14 million minor page
faults in one probe run, 28.7 vs 81.7 img/s for EfficientNet-Lite0 (DESIGN.md,
"Measured on these machines"). The cure is what ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=... MALLOC_TOP_PAD_=...`` do: serve large blocks from the
heap and never give its top back. ``mallopt`` does the same from inside the
process, but only when called *first thing*, before torch (or numpy's first big
array) has fragmented the heap; called later it measurably did not help.

This module imports nothing heavy, so an entry point can call
`keep_freed_memory` before anything else.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
#: mallopt takes a C int: the largest trim threshold it can set (2 GiB - 1; the
#: environment variable allows 2^40). The heap keeps up to this much free at its top.
TRIM_THRESHOLD = 2**31 - 1
TOP_PAD = 2**30
#: The environment variables that set the same things; a user who set any of them wins.
ENV_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory for reuse; True when the settings were applied.

    Does nothing (False) off Linux / glibc, when the user set the allocator
    through the environment, or when ``ALIGNPROBE_KEEP_ALLOCATOR=0``. Call it
    once, first thing in the process (the CLI entry does), before torch is
    imported. Idempotent.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("ALIGNPROBE_KEEP_ALLOCATOR", "1") == "0":
        return False
    if any(name in os.environ for name in ENV_VARS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in
             ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    _applied = ok
    return ok
