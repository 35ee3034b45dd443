"""The one on-disk format of a trained model, written by the probe and by SAIL training alike.

A trained model is a directory holding ``aligned.json`` (what was trained on what:
the two encoders' `EncoderRequest`s and manifests, the heads' config, the training
config, the history) and safetensors weights that ``aligned.json`` names. Both
`AlignmentProbe.save` and the training engine write it, and `load_aligned` /
`AlignmentProbe.load` read it -- and the older formats, listed here once.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alignprobe.errors import ValidationError

MODEL_FILE = "model.safetensors"
ALIGNED_FILE = "aligned.json"
BEST_FILE = "best.safetensors"
#: The current format of ``aligned.json`` (probe and SAIL).
ALIGNED_FORMAT = "alignprobe.aligned/3"
#: Older formats that are still read: SAIL runs, and saved probes (``probe.json`` beside the weights).
LEGACY_SAIL_FORMATS = ("alignprobe.sail/1", "alignprobe.sail/2")
LEGACY_PROBE_FILE, LEGACY_PROBE_FORMAT = "probe.json", "alignprobe.alignment_probe/2"
READABLE_FORMATS = (ALIGNED_FORMAT, *LEGACY_SAIL_FORMATS, LEGACY_PROBE_FORMAT)
_REQUIRED = ("model_config",)


def find_model_file(path: str | Path) -> Path:
    """The ``aligned.json`` (or a legacy ``probe.json``) of a trained-model directory, or the file itself."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (ALIGNED_FILE, LEGACY_PROBE_FILE):
            if (path / name).is_file():
                return path / name
        raise ValidationError(
            f"{path} holds no {ALIGNED_FILE}: pass the directory of `alignprobe train --run-dir DIR` or of "
            f"`AlignmentProbe.save(DIR)` (a training run that has not finished its first epoch has none yet)")
    if not path.is_file():
        raise ValidationError(f"{path} does not exist; pass a trained model's directory or its {ALIGNED_FILE}")
    return path


def read_model_file(path: str | Path) -> tuple[dict[str, Any], Path]:
    """``(info, file)``: the parsed model file, checked for a readable format and its required keys.

    Every damage (unreadable JSON, another format, a missing key) is one `ValidationError`
    naming the file."""
    file = find_model_file(path)
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValidationError(f"{file} is damaged ({type(err).__name__}: {err}); retrain, or restore the file "
                              f"from a copy") from None
    if not isinstance(info, dict):
        raise ValidationError(f"{file} is damaged: it holds a {type(info).__name__}, not a JSON object")
    if info.get("format") not in READABLE_FORMATS:
        raise ValidationError(f"{file} has format {info.get('format')!r}, which is not a trained alignprobe "
                              f"model; readable: {', '.join(READABLE_FORMATS)}")
    missing = [k for k in _REQUIRED if k not in info]
    if missing:
        raise ValidationError(f"{file} is damaged: it lacks {missing}; retrain, or restore the file from a copy")
    return info, file


def inside(run_dir: Path, relative: str, what: str) -> Path:
    """``run_dir / relative``, refused when it would leave ``run_dir`` (a model file is data, and
    data must not point a reader at files elsewhere)."""
    root = run_dir.resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise ValidationError(f"{what} {relative!r} points outside the run directory {run_dir}; refusing to read it")
    return target
