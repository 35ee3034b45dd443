"""Encoders whose weights load on first real use, so that a cache hit loads no model.

An embedding's cache key is its encoder's `manifest()` (pooling, revision,
dtype, library versions, ...), which a loaded encoder reports. Loading
NV-Embed-v2 (7B parameters) only to learn that its embeddings are cached
would cost minutes per pair of a sweep, so `LazyEncoder` keeps a small memo in
the cache directory: the manifest of each encoder, keyed on what determines
it before loading (`identity_key`: the resolved registry entry with its
overrides, the device kind and dtype, the weights' local revision or
fingerprint, library versions). A memo hit answers `manifest()` without
loading; anything else -- `encode`, `forward`, `preprocessor`, ... -- loads
the weights once and delegates to the real encoder.
"""
from __future__ import annotations

import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

from alignprobe._version import __version__
from alignprobe.io import write_json_atomic

from alignprobe.probe.embeddings.cache import stable_hash

log = logging.getLogger("alignprobe.encode")

MEMO_DIR = "encoder-identities"
_LIBRARIES = ("torch", "transformers", "timm", "sentence-transformers", "open_clip_torch")


def _library_versions() -> dict[str, str]:
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _local_revision(spec) -> str | None:
    """The commit of a hub model in the local Hugging Face cache (no network), if any."""
    if spec.revision or not spec.hub_id or spec.backend not in ("hf", "st", "timm"):
        return spec.revision
    try:
        from huggingface_hub import try_to_load_from_cache

        hub_id = spec.hub_id.split(":", 1)[-1]
        found = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # noqa: BLE001 - no cache, odd id: the identity just lacks a revision
        return None
    if isinstance(found, str) and "/snapshots/" in found:
        return found.split("/snapshots/", 1)[1].split("/", 1)[0]
    return None


class LazyEncoder:
    """A stand-in for `create_vision_encoder` / `create_text_encoder` that defers loading.

    Args:
        modality: ``"vision"`` or ``"text"``.
        name: what the user asked for (name, alias, hub id, directory, ``NAME@N``).
        memo_dir: the cache directory's memo folder (None: no memo, `manifest` loads).
        device, dtype: as for the factories.
        **overrides: factory overrides (``pooling``, ``layer``, ...); None values are unset.

    ``is_loaded`` tells whether the weights are in memory; ``loads`` counts loads.
    """

    def __init__(self, modality: str, name: str, *, memo_dir: str | Path | None, device: Any = "auto",
                 dtype: Any = None, **overrides):
        from alignprobe.backbones import check_available, resolve_spec
        from alignprobe.backbones.factory import _apply_overrides

        self.modality, self.name = modality, name
        self._device, self._dtype = device, dtype
        self._overrides = {k: v for k, v in overrides.items() if v is not None}
        self.spec = _apply_overrides(resolve_spec(name, modality), dict(self._overrides))  # it pops what it applies
        check_available(self.spec)
        self._memo_dir = Path(memo_dir) if memo_dir is not None else None
        self._encoder = None
        self.loads = 0

    @property
    def is_loaded(self) -> bool:
        return self._encoder is not None

    def identity_key(self) -> str:
        """What determines the manifest before the weights load (see the module docstring)."""
        from alignprobe.backbones.devices import dtype_name, resolve_device, resolve_dtype

        spec = self.spec
        device = resolve_device(self._device)
        local = None
        if spec.path:
            from alignprobe.backbones.hub import fingerprint_dir

            local = fingerprint_dir(spec.path)
        return stable_hash({
            "modality": self.modality, "spec": repr(spec), "overrides": self._overrides,
            "device": device.type, "dtype": dtype_name(resolve_dtype(self._dtype, device)),
            "revision": _local_revision(spec), "local": local, "libraries": _library_versions(),
            "alignprobe": __version__,
        }, length=20)

    def _memo_path(self) -> Path | None:
        return None if self._memo_dir is None else self._memo_dir / f"{self.identity_key()}.json"

    def load(self):
        """The real encoder (loaded on the first call)."""
        if self._encoder is None:
            from alignprobe.backbones import create_text_encoder, create_vision_encoder

            factory = create_vision_encoder if self.modality == "vision" else create_text_encoder
            self._encoder = factory(self.name, device=self._device, dtype=self._dtype, **self._overrides)
            self.loads += 1
            memo = self._memo_path()
            if memo is not None:
                try:
                    write_json_atomic(memo, self._encoder.manifest())
                except OSError as err:  # a read-only cache still works, it just cannot skip loads
                    log.debug("cannot write the encoder memo %s: %s", memo, err)
        return self._encoder

    def manifest(self) -> dict:
        """The encoder's manifest: from the memo when it has one, else from the loaded encoder."""
        if self._encoder is None:
            memo = self._memo_path()
            if memo is not None and memo.is_file():
                try:
                    return json.loads(memo.read_text())
                except (OSError, ValueError):
                    log.debug("unreadable encoder memo %s; loading the encoder", memo)
        return self.load().manifest()

    @property
    def dim(self) -> int:
        if self._encoder is None:
            dim = self.manifest().get("dim")
            if dim:
                return int(dim)
        return self.load().dim

    def release(self) -> None:
        """Drop the weights (a later use loads them again)."""
        self._encoder = None

    def __getattr__(self, attr: str):
        # Only reached for attributes this class lacks: everything else is the real encoder's.
        if attr.startswith("__") or attr in ("_encoder", "_memo_dir", "_overrides", "_device", "_dtype"):
            raise AttributeError(attr)
        return getattr(self.load(), attr)

    def __repr__(self) -> str:
        return f"LazyEncoder({self.modality}, {self.name!r}, loaded={self.is_loaded})"
