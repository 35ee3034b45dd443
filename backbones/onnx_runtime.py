"""Exact onnxruntime execution of a CPU image encoder's forward, exported once and cached.

On this kind of machine (2 CPU cores) torch's eager CNN kernels are the bottleneck of image encoding:
onnxruntime runs the same EfficientNet-Lite graph several times faster (it folds BatchNorm into the
convolutions and fuses the activations; see benchmarks/README.md, issue 20). So a CPU encoder
in fp32 can run its forward (features + pooling) as an ONNX graph:

- exported once with `torch.onnx.export` (the TorchScript exporter: the dynamo one needs
  `onnxscript`, which alignprobe does not depend on) with a dynamic batch axis;
- cached in `<models dir>/onnx/` (beside the embedding cache, `backbones.onnx_dinov2.models_dir`),
  named by a key over the weights (SHA-256 of every state-dict tensor), the input shape, the
  pooling, the opset and the torch / onnxruntime versions, written atomically (temp file + rename);
- used only when its outputs equal torch's on a probe batch within `RTOL` relative
  (max |onnx - torch| / max |torch|), checked when it is exported and again whenever it is loaded
  (a damaged or partial file is rebuilt); otherwise torch runs, with the reason logged.

`ALIGNPROBE_ONNX=0` turns it off (torch always). GPU and reduced-precision encoders keep torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from alignprobe.io import write_json_atomic

from .execution import ENV, onnx_enabled  # noqa: F401 - re-exported: where the toggle is read
from .onnx_dinov2 import models_dir

log = logging.getLogger("alignprobe.encode")

#: Largest accepted max |onnx - torch| / max |torch| on the probe batch.
RTOL = 1e-4
OPSET = 17
#: Bump when the export or the graph's contract changes: part of every key.
EXPORT_VERSION = 1


def onnx_dir() -> Path:
    """Where exported graphs live: `onnx/` in the models folder beside the embedding cache."""
    return models_dir() / "onnx"


def library_version(name: str) -> str | None:
    """The installed version of distribution `name`, None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def weights_key(module: torch.nn.Module, meta: dict[str, Any]) -> str:
    """SHA-256 over `meta`, the library versions and every state-dict tensor (name, dtype, shape,
    bytes): a graph is reused only for the very weights and settings it was exported from."""
    digest = hashlib.sha256()
    head = {**meta, "opset": OPSET, "export_version": EXPORT_VERSION,
            "torch": torch.__version__, "onnxruntime": library_version("onnxruntime")}
    digest.update(json.dumps(head, sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (inf when the shapes differ or values are not finite)."""
    if got.shape != want.shape or not np.isfinite(got).all():
        return float("inf")
    return float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))


class _Traced(torch.nn.Module):
    """The function to export as a module (what `torch.onnx.export` takes)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], owner: torch.nn.Module):
        super().__init__()
        self.owner = owner  # registers the weights, so the exporter keeps them as initializers
        self._fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)


@dataclass
class OnnxForward:
    """An onnxruntime session standing in for a torch forward on `(n, *sample_shape)` batches."""

    session: Any
    path: Path
    sample_shape: tuple[int, ...]
    rel_error: float

    def accepts(self, batch: torch.Tensor) -> bool:
        """Batches of the exported shape and dtype; any other goes to torch."""
        return tuple(batch.shape[1:]) == self.sample_shape and batch.dtype == torch.float32

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.detach().to("cpu").contiguous().numpy()
        (out,) = self.session.run(None, {"pixels": x})
        return torch.from_numpy(out)


def _session(path: Path):
    import onnxruntime as ort  # lazy: optional, see `prepare`

    opts = ort.SessionOptions()
    # follow torch's thread setting, which the user (or the tool) has already chosen
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    # on a shared 2-core machine spinning threads steal the core the image decoder needs
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _export(fn, owner, example: torch.Tensor, path: Path) -> None:
    """Export to a temporary file in `path`'s folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the TorchScript exporter is deprecated in favour of dynamo's, which needs onnxscript
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Traced(fn, owner).eval(), (example,), tmp, dynamo=False, opset_version=OPSET,
                input_names=["pixels"], output_names=["features"],
                dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
            )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _remove_stale_temporaries(folder: Path, age_s: float = 3600.0) -> None:
    """Temporary files of exports killed midway (an export takes seconds; an hour-old one is dead)."""
    now = time.time()
    for tmp in folder.glob("*.tmp.onnx"):
        try:
            if now - tmp.stat().st_mtime > age_s:
                tmp.unlink()
        except OSError:  # another process removed or renamed it meanwhile
            continue


def _checked(path: Path, example: torch.Tensor, want: np.ndarray) -> tuple[Any, float]:
    session = _session(path)
    (got,) = session.run(None, {"pixels": example.numpy()})
    return session, relative_error(np.asarray(got), want)


def prepare(fn: Callable[[torch.Tensor], torch.Tensor], owner: torch.nn.Module, example: torch.Tensor,
            *, name: str, meta: dict[str, Any]) -> tuple[OnnxForward | None, str]:
    """The cached (or newly exported) graph of `fn` on batches like `example`, checked against
    torch; `(None, reason)` when it cannot be used. `owner` holds the weights `fn` reads.
    The graph is traced on the first two rows and checked on all of `example` (give three or
    more), so a batch size frozen into the trace shows as a failure, not as wrong features."""
    try:
        # lazy: an optional dependency (the `demo` extra), imported only where a CPU encoder loads
        import onnxruntime  # noqa: F401 - only to learn whether it is installed
    except ImportError:
        return None, "onnxruntime is not installed (pip install onnxruntime)"
    example = example.detach().to("cpu", torch.float32).contiguous()
    with torch.inference_mode():
        want = fn(example).float().numpy()
    meta = {**meta, "sample_shape": list(example.shape[1:])}
    key = weights_key(owner, meta)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
    path = onnx_dir() / f"{safe}-{key[:24]}.onnx"
    record = path.with_suffix(".json")
    if record.is_file() and not path.is_file():
        try:
            earlier = json.loads(record.read_text())
        except (OSError, ValueError):
            earlier = {}
        if earlier.get("key") == key and earlier.get("usable") is False:
            return None, f"an earlier export was not usable ({record}): {earlier.get('reason')}"
    if path.is_file():
        try:
            session, err = _checked(path, example, want)
            if err <= RTOL:
                return OnnxForward(session, path, tuple(example.shape[1:]), err), "loaded"
            log.warning("cached ONNX graph %s differs from torch (relative %.2g); exporting again", path, err)
        except Exception as exc:  # noqa: BLE001 - a damaged or partial file: onnxruntime's errors vary
            log.warning("cached ONNX graph %s is unreadable (%s); exporting again", path, exc)
        path.unlink(missing_ok=True)
    return _export_checked(fn, owner, example, want, path, record, key)


def _export_checked(fn, owner, example, want, path: Path, record: Path, key: str):
    try:
        _export(fn, owner, example[:2], path)
        session, err = _checked(path, example, want)
    except Exception as exc:  # noqa: BLE001 - any export failure leaves the exact torch path
        path.unlink(missing_ok=True)
        reason = f"export failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        # remembered, so that later loads do not spend the export again (delete the record to retry)
        _remember(record, {"key": key, "usable": False, "reason": reason})
        return None, reason
    if err > RTOL:
        path.unlink(missing_ok=True)
        reason = f"onnxruntime's outputs differ from torch's by {err:.2g} relative (limit {RTOL:g})"
        _remember(record, {"key": key, "usable": False, "reason": reason})
        return None, reason
    _remember(record, {"key": key, "usable": True, "relative_error": err,
                       "sample_shape": list(example.shape[1:]), "opset": OPSET})
    return OnnxForward(session, path, tuple(example.shape[1:]), err), "exported"


def _remember(record: Path, content: dict) -> None:
    try:
        write_json_atomic(record, content)
    except OSError as err:  # a read-only cache still runs; it only cannot remember
        log.debug("cannot write %s: %s", record, err)
