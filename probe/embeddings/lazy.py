"""Encoders whose weights load on first real use, so that a cache hit loads no model.

An embedding's cache key is its encoder's `manifest()` (pooling, revision,
dtype, library versions, ...), which a loaded encoder reports. Loading
NV-Embed-v2 (7B parameters) only to learn that its embeddings are cached
would cost minutes per pair of a sweep, so `LazyEncoder` keeps a small memo in
the cache directory: the manifest of each encoder, keyed on what determines
it before loading (`identity_key`: the `EncoderRequest`'s key, the device
kind and dtype, the weights' local revision or
fingerprint, library versions, and for a CPU image encoder the backend that will run:
onnxruntime or, with `ALIGNPROBE_ONNX=0`, torch). A memo hit answers `manifest()` without
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
from alignprobe.backbones.devices import dtype_name, resolve_device, resolve_dtype
from alignprobe.backbones.execution import onnx_capable, planned_execution
from alignprobe.backbones.factory import builder_target
from alignprobe.backbones.hub import check_available, fingerprint_dir
from alignprobe.backbones.request import EncoderRequest
from alignprobe.hashing import stable_hash
from alignprobe.io import write_json_atomic

log = logging.getLogger("alignprobe.encode")

MEMO_DIR = "encoder-identities"
_LIBRARIES = ("torch", "transformers", "timm", "sentence-transformers", "open_clip_torch")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _library_versions() -> dict[str, str]:
    return {name: v for name in _LIBRARIES if (v := _version(name)) is not None}


def _local_revision(spec) -> str | None:
    """The commit of a hub model in the local Hugging Face cache (no network), if any."""
    if spec.revision or not spec.hub_id or spec.backend not in ("hf", "st", "timm"):
        return spec.revision
    try:
        from huggingface_hub import try_to_load_from_cache  # only for hub specs

        hub_id = spec.hub_id.split(":", 1)[-1]
        found = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # noqa: BLE001 - no cache, odd id: the identity just lacks a revision
        return None
    if isinstance(found, str) and "/snapshots/" in found:
        return found.split("/snapshots/", 1)[1].split("/", 1)[0]
    return None


class LazyEncoder:
    """A stand-in for the encoder an `EncoderRequest` names, loaded on first real use.

    Args:
        request: the encoder's identity (`alignprobe.EncoderRequest`).
        memo_dir: the cache directory's memo folder (None: no memo, `manifest` loads).
        device, dtype: as for the factories.
        trust_remote_code: the opt-in to model code the registry does not pin (a permission, not identity).

    ``is_loaded`` tells whether the weights are in memory; ``loads`` counts loads.
    """

    def __init__(self, request: EncoderRequest, *, memo_dir: str | Path | None, device: Any = "auto",
                 dtype: Any = None, trust_remote_code: bool = False):
        if not isinstance(request, EncoderRequest):
            raise TypeError(f"LazyEncoder takes an EncoderRequest, got {type(request).__name__}")
        self.request = request
        self.trust_remote_code = trust_remote_code
        self.modality, self.name = request.modality, request.name
        self.device_request, self.dtype_request = device, dtype
        self.spec = request.spec()
        check_available(self.spec)
        self.memo_dir = Path(memo_dir) if memo_dir is not None else None
        self._encoder = None
        self.loads = 0

    @property
    def is_loaded(self) -> bool:
        return self._encoder is not None

    def identity_key(self) -> str:
        """What determines the manifest before the weights load (see the module docstring); for an
        encoder with a choice of backends, the one that will run (`planned_execution`)."""
        spec = self.spec
        device = resolve_device(self.device_request)
        dtype = dtype_name(resolve_dtype(self.dtype_request, device))
        identity = {
            "request": self.request.key(), "device": device.type, "dtype": dtype,
            "revision": _local_revision(spec), "local": fingerprint_dir(spec.path) if spec.path else None,
            "libraries": _library_versions(), "alignprobe": __version__,
        }
        builder = builder_target(spec, self.modality)
        if onnx_capable(builder, self.modality):  # only these, so other encoders keep their keys
            identity["execution"] = planned_execution(builder, self.modality, device_type=device.type,
                                                      dtype=dtype, layer=spec.layer)
            if identity["execution"] == "onnxruntime":
                identity["libraries"] = {**identity["libraries"], "onnxruntime": _version("onnxruntime")}
        return stable_hash(identity, length=20)

    def memo_path(self) -> Path | None:
        """Where this encoder's manifest is remembered (None without a memo folder)."""
        return None if self.memo_dir is None else self.memo_dir / f"{self.identity_key()}.json"

    def remember(self, manifest: dict) -> None:
        """Store ``manifest`` as this encoder's, so later runs answer `manifest()` without loading
        (a layer sweep writes each layer's after one multi-layer pass)."""
        memo = self.memo_path()
        if memo is None:
            return
        try:
            write_json_atomic(memo, manifest)
        except OSError as err:  # a read-only cache still works, it just cannot skip loads
            log.debug("cannot write the encoder memo %s: %s", memo, err)

    def load(self):
        """The real encoder (loaded on the first call)."""
        if self._encoder is None:
            self._encoder = self.request.build(device=self.device_request, dtype=self.dtype_request,
                                               trust_remote_code=self.trust_remote_code)
            self.loads += 1
            self.remember(self._encoder.manifest())
        return self._encoder

    def manifest(self) -> dict:
        """The encoder's manifest: from the memo when it has one, else from the loaded encoder."""
        if self._encoder is None:
            memo = self.memo_path()
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
        if attr.startswith("__") or attr in ("_encoder", "memo_dir", "request", "device_request", "dtype_request"):
            raise AttributeError(attr)
        return getattr(self.load(), attr)

    def __repr__(self) -> str:
        return f"LazyEncoder({self.request.modality}, {self.request.label!r}, loaded={self.is_loaded})"


class EncoderPool:
    """The lazily loaded encoders of one process, one per `EncoderRequest` key.

    A sweep shares one pool across its pairs, so each encoder loads at most once
    (none when its embeddings are cached), and `release` drops the weights of one
    that no later pair needs.
    """

    def __init__(self, *, memo_dir: str | Path | None = None, device: Any = "auto", dtype: Any = None,
                 trust_remote_code: bool = False):
        self.memo_dir = Path(memo_dir) if memo_dir is not None else None
        self.device, self.dtype, self.trust_remote_code = device, dtype, trust_remote_code
        self._encoders: dict[str, LazyEncoder] = {}

    def get(self, request: EncoderRequest) -> LazyEncoder:
        key = request.key()
        if key not in self._encoders:
            self._encoders[key] = LazyEncoder(request, memo_dir=self.memo_dir, device=self.device, dtype=self.dtype,
                                              trust_remote_code=self.trust_remote_code)
        return self._encoders[key]

    def release(self, request: EncoderRequest) -> None:
        encoder = self._encoders.pop(request.key(), None)
        if encoder is not None:
            encoder.release()

    def __contains__(self, request: EncoderRequest) -> bool:
        return request.key() in self._encoders

    def __len__(self) -> int:
        return len(self._encoders)
