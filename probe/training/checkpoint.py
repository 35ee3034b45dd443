"""SAIL training checkpoints: atomic, resumable, best and latest kept.

Layout of a run directory::

    OUT/aligned.json                      # the trained model: encoders, pooling, dims, configs,
                                          # metrics, and the weights file of the best step
    OUT/checkpoints/step-000001234/       # one directory per saved step, never modified once named
        model.safetensors                 # the heads and the logit scale/bias
        optimizer.pt                      # optimizer (and fp16 grad-scaler) state
        rng.pt                            # torch / CUDA / numpy / python RNG states
        state.json                        # epoch, position in the epoch, step, best-so-far, history
    OUT/checkpoints/latest.json           # {"step": ..., "dir": "step-..."}
    OUT/checkpoints/best.json

A step directory is written under a temporary name and renamed into place, and
the pointers are JSON files replaced atomically, so a run killed at any moment
leaves a consistent latest checkpoint. Directories that neither pointer names
are removed after each save.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignprobe.errors import ValidationError
from alignprobe.io import apply_umask, library_write, write_json_atomic
from alignprobe.probe.training.model_file import ALIGNED_FILE, BEST_FILE, MODEL_FILE, inside

OPTIM_FILE, RNG_FILE, STATE_FILE = "optimizer.pt", "rng.pt", "state.json"
POINTERS = ("latest", "best")


def rng_state() -> dict[str, Any]:
    """Every global RNG state, in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointStore:
    """The ``checkpoints/`` directory of a run (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"

    # ---- pointers
    def _pointer(self, name: str) -> dict | None:
        path = self.root / f"{name}.json"
        if not path.is_file():
            return None
        return json.loads(path.read_text())

    def path(self, name: str = "latest") -> Path | None:
        """The step directory ``latest`` or ``best`` points at, or None."""
        pointer = self._pointer(name)
        if pointer is None:
            return None
        # a pointer is data: it may only name a step directory inside this run's checkpoints/
        directory = inside(self.root, str(pointer["dir"]), f"{self.root}/{name}.json's directory")
        if directory.is_dir():
            return directory
        old = directory.with_name(directory.name + ".old")  # killed in the middle of a swap
        return old if old.is_dir() else None

    def exists(self) -> bool:
        return self.path("latest") is not None

    # ---- save
    def save(self, step: int, model_state: dict[str, torch.Tensor], optimizer_state: dict, rng: dict,
             state: dict, pointers: tuple[str, ...] = ("latest",),
             best_state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write step ``step`` and point ``pointers`` at it; returns the step directory.

        ``best_state``: the weights kept so far (best epoch), written beside the
        step's own as ``best.safetensors`` -- so one directory resumes a run."""
        from safetensors.torch import save_file

        name = f"step-{step:09d}"
        target = self.root / name
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=self.root))
        apply_umask(tmp, directory=True)  # mkdtemp's 0700 would hide a shared run from colleagues
        try:
            # A full disk surfaces as safetensors' own error: re-raised as the OSError it is; the
            # temp directory goes, and the checkpoints already saved stay as they were.
            with library_write(tmp / MODEL_FILE):
                save_file({k: v.detach().to("cpu").contiguous() for k, v in model_state.items()},
                          str(tmp / MODEL_FILE), metadata={"step": str(step), "format": "alignprobe.sail/1"})
            if best_state is not None:
                with library_write(tmp / BEST_FILE):
                    save_file({k: v.detach().to("cpu").contiguous() for k, v in best_state.items()},
                              str(tmp / BEST_FILE), metadata={"step": str(step)})
            torch.save(optimizer_state, tmp / OPTIM_FILE)
            torch.save(rng, tmp / RNG_FILE)
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True, default=_json_default))
            for f in tmp.iterdir():
                apply_umask(f)
                _fsync(f)
            if target.exists():  # the same step saved again (epoch end right after a periodic save)
                old = target.with_name(name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for pointer in pointers:
            write_json_atomic(self.root / f"{pointer}.json", {"step": step, "dir": name})
        self.prune()
        return target

    def prune(self) -> None:
        """Remove the step directories that no pointer and no ``aligned.json`` names."""
        keep = {p["dir"] for p in (self._pointer(n) for n in POINTERS) if p}
        aligned = self.run_dir / ALIGNED_FILE
        if aligned.is_file():
            try:
                keep.add(Path(json.loads(aligned.read_text())["weights"]).parent.name)
            except (ValueError, KeyError, TypeError):
                pass
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.is_dir() and entry.name.startswith("step-") and entry.name not in keep:
                shutil.rmtree(entry, ignore_errors=True)
            # A save killed before its rename leaves `.step-*.tmp`; only the saving process writes
            # here and its own temp directory is already renamed, so any left now is stale.
            elif entry.is_dir() and entry.name.startswith(".step-") and entry.name.endswith(".tmp"):
                shutil.rmtree(entry, ignore_errors=True)

    def clear(self) -> None:
        """Forget a previous run in this directory (its checkpoints and ``aligned.json``)."""
        shutil.rmtree(self.root, ignore_errors=True)
        (self.run_dir / ALIGNED_FILE).unlink(missing_ok=True)

    # ---- load
    def load(self, name: str = "latest", device: torch.device | str = "cpu") -> dict[str, Any]:
        """``{"model": state_dict, "optimizer": ..., "rng": ..., "state": ..., "dir": path}``."""
        directory = self.path(name)
        if directory is None:
            raise ValidationError(f"{self.run_dir} has no {name} checkpoint (no {self.root / (name + '.json')})")
        return {
            "model": load_weights(directory / MODEL_FILE, device=device),
            "optimizer": _torch_load(directory / OPTIM_FILE, device),
            "rng": _torch_load(directory / RNG_FILE, "cpu"),
            "state": _read_state(directory / STATE_FILE),
            "dir": directory,
        }


def load_weights(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors weights file (``model.safetensors``, ``best.safetensors``).

    A missing, truncated or garbled file is one `ValidationError` naming the file,
    not safetensors' own error: a run killed while copying, or a disk that filled up,
    leaves such files behind.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"weights file {path} does not exist; the checkpoint is incomplete -- resume from "
                              f"another one, or retrain")
    try:
        return load_file(str(path), device=str(device))
    except OSError as err:
        raise ValidationError(f"weights file {path} cannot be read ({err.strerror or err})") from None
    except Exception as err:  # safetensors raises its own SafetensorError (and others) for a damaged file
        raise ValidationError(f"weights file {path} is damaged ({_short(err)}; {path.stat().st_size} bytes): "
                              f"truncated or not a safetensors file; resume from another checkpoint, restore "
                              f"the file from a copy, or retrain") from None


def _torch_load(path: Path, device) -> Any:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise ValidationError(f"checkpoint file {path} does not exist; the checkpoint is incomplete") from None
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as err:
        raise ValidationError(f"checkpoint file {path} is damaged ({_short(err)}); resume from another "
                              f"checkpoint, or start afresh") from None


def _read_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValidationError(f"checkpoint file {path} is damaged ({_short(err)}); resume from another "
                              f"checkpoint, or start afresh") from None
    if not isinstance(state, dict):
        raise ValidationError(f"checkpoint file {path} is damaged: it holds a {type(state).__name__}, "
                              f"not a JSON object")
    return state


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"{type(err).__name__}: {text[:200]}"


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")
