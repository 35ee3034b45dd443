"""Shared transformers loading: lazy class import, one error for missing files, no random layers."""

from __future__ import annotations

import importlib
from typing import Any

from alignprobe.console import quiet_loading
from alignprobe.errors import EncoderNotAvailableError, ValidationError

from .hub import (
    cached_snapshot,
    describe_load_failure,
    hf_location,
    hub_marker,
    load_errors,
    snapshot_commit,
)
from .spec import EncoderSpec


def import_string(path: str) -> Any:
    """Import `"module:attr"` (lm-eval style lazy loading of heavy backends)."""
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ValidationError(f"expected 'module:attr', got {path!r}")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValidationError(f"cannot import {path!r}: {exc}") from None


def _unused_missing(missing: set[str], pooling: str) -> bool:
    """Missing weights are harmless only when they belong to a pooler head we do not use."""
    return pooling != "pooler" and all(k.startswith("pooler.") for k in missing)


def load_pretrained(spec: EncoderSpec, *, dtype, default_class: str = "transformers:AutoModel"):
    """`from_pretrained` for a spec; returns (eval-mode model, resolved commit or None, notes).

    Refuses checkpoints that leave layers randomly initialised (a probing toolkit
    must not measure random weights), except an unused pooler head.
    """
    cls = import_string(spec.model_class or default_class)
    src, kwargs = hf_location(spec)
    try:
        with quiet_loading():  # no "Loading weights" bars; missing weights are checked below
            model, info = cls.from_pretrained(
                src,
                dtype=dtype,
                trust_remote_code=spec.trust_remote_code,
                output_loading_info=True,
                **kwargs,
                **spec.kwargs,
            )
    except load_errors() as exc:
        raise describe_load_failure(spec, exc) from None
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise ValidationError(
            f"{spec.name!r} ships its own model code; pass trust_remote_code=True if you trust it "
            f"(registered encoders that need it set it themselves)"
        ) from None
    except RuntimeError as exc:
        if "mismatch" not in str(exc) and "state_dict" not in str(exc):
            raise
        raise EncoderNotAvailableError(
            f"the checkpoint of {spec.name!r} does not fit {spec.model_class or default_class} "
            f"(tensor shapes differ): {str(exc).splitlines()[0][:300]}"
        ) from None
    missing = set(info.get("missing_keys") or ()) | {
        k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or ()
    }
    notes = []
    if missing:
        if not _unused_missing(missing, spec.pooling):
            shown = ", ".join(sorted(missing)[:5])
            raise EncoderNotAvailableError(
                f"the checkpoint of {spec.name!r} lacks weights for {len(missing)} parameter(s) "
                f"({shown}...); they would be randomly initialised, so alignprobe refuses to load "
                f"it. Check the hub id / model_class ({spec.model_class or default_class}) match "
                "the checkpoint."
            )
        notes.append(f"unused pooler weights absent from the checkpoint: {sorted(missing)}")
    model.eval()
    return model, resolved_commit(spec), notes


def load_tokenizer(spec: EncoderSpec):
    from transformers import AutoTokenizer

    src, kwargs = hf_location(spec)
    try:
        return AutoTokenizer.from_pretrained(
            src, trust_remote_code=spec.trust_remote_code, **kwargs
        )
    except load_errors() as exc:
        raise describe_load_failure(spec, exc) from None


def resolved_commit(spec: EncoderSpec) -> str | None:
    """The commit of the cached snapshot used, for the manifest (None for local directories)."""
    if spec.path or not spec.hub_id:
        return None
    return (
        snapshot_commit(cached_snapshot(spec.hub_id, spec.revision, hub_marker(spec)))
        or spec.revision
    )


def hf_read_json(spec: EncoderSpec, filename: str) -> dict | None:
    """One JSON file of the model (local dir or hub cache/download); None if there is none."""
    import json
    from pathlib import Path

    if spec.path:
        f = Path(spec.path) / filename
        return json.loads(f.read_text()) if f.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    _, kwargs = hf_location(spec)
    try:
        f = hf_hub_download(spec.hub_id, filename, **kwargs)
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None
    except load_errors() as exc:
        raise describe_load_failure(spec, exc) from None
    return json.loads(Path(f).read_text())


def versions(*modules: str) -> dict[str, str]:
    out = {}
    for name in modules:
        try:
            out[name] = importlib.import_module(name).__version__
        except (ImportError, AttributeError):
            pass
    return out
