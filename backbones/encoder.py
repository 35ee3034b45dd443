"""The `Encoder` base class: preprocess -> collate -> forward, and the manifest of all that.

Subclasses implement `_forward(batch)` returning `(n, dim)` on any device and
dtype; `forward` wraps it in inference mode and returns float32 on the CPU.
Preprocessing lives in `self.preprocessor`, a separate picklable object,
so DataLoader workers never pickle the model.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import torch

from alignprobe._version import __version__
from alignprobe.errors import ValidationError

from .dense_block import check_last_block
from .devices import dtype_name
from .hub import fingerprint_dir, fingerprint_file
from .execution import why_torch
from .onnx_runtime import OnnxForward, library_version, prepare
from .spec import EncoderSpec

log = logging.getLogger("alignprobe.encode")


def _layer_list(layers: Sequence[int]) -> list[int]:
    if isinstance(layers, int):
        layers = [layers]
    out = []
    for n in layers:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValidationError(f"layers must be block indices >= 0, got {list(layers)!r}")
        if n not in out:
            out.append(n)
    if not out:
        raise ValidationError("give at least one layer")
    return out


def split_patch_tokens(tokens: torch.Tensor, h: int, w: int, name: str):
    """`(n, T, d)` tokens laid out `[prefix..., h*w patches row-major]` -> `(prefix, (n, h, w, d))`;
    an `(n, C, h, w)` feature map -> `(None, (n, h, w, C))`."""
    if tokens.ndim == 4:
        return None, tokens.permute(0, 2, 3, 1)
    num_prefix = tokens.shape[1] - h * w
    if tokens.ndim != 3 or num_prefix < 0:
        raise ValidationError(
            f"{name}: {tuple(tokens.shape)} tokens for a {h}x{w} patch grid; some patches were "
            "dropped (a masking ratio above 0?)")
    return tokens[:, :num_prefix], tokens[:, num_prefix:].reshape(tokens.shape[0], h, w, -1)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    return str(value)


def nonfinite_hint(dtype: str) -> str:
    """What to try after NaN/Inf outputs: a precision hint only below fp32 (in fp32 it would go in circles)."""
    if dtype in ("fp16", "bf16"):
        return "try --dtype fp32 (dtype='fp32'); overflow in reduced precision is the usual cause"
    return ("it already computes in fp32, so precision is not the cause: the weights or the inputs are "
            "broken (re-download the checkpoint, check the inputs)")


class Encoder:
    """A frozen encoder of one modality producing `(n, dim)` float32 embeddings."""

    spec: EncoderSpec
    modality: str
    dim: int
    device: torch.device
    dtype: torch.dtype
    #: Opt-in for vision encoders whose `_forward` takes one `(n, 3, H, W)` float batch: on the
    #: CPU in fp32 it runs as an onnxruntime graph where that equals torch (`onnx_runtime`).
    onnx_capable: bool = False
    #: the graph that runs `forward` (None: torch), and why it is or is not used
    _onnx: OnnxForward | None = None
    execution_note: str = ""

    def __init__(
        self, spec: EncoderSpec, preprocessor: Any, *, device: torch.device, dtype: torch.dtype
    ):
        self.spec = spec
        self.modality = spec.modality
        self.preprocessor = preprocessor
        self.device = device
        self.dtype = dtype
        self.resolved_revision: str | None = spec.revision
        self.library_versions: dict[str, str] = {"torch": torch.__version__}
        self.load_notes: list[str] = []
        self.dim = spec.dim if spec.dim is not None else 0

    @property
    def is_loaded(self) -> bool:
        """A constructed encoder holds its weights (`alignprobe.probe.embeddings.lazy.LazyEncoder`
        is the stand-in that defers them until a real encode)."""
        return True

    # -- set-up helpers for subclasses ------------------------------------------------------
    def _finish(self) -> None:
        """Measure the width when the spec does not state it, and record it in the spec."""
        if self.spec.dim is None:
            self.dim = int(self._probe().shape[1])
        else:
            self.dim = self.spec.dim
        self.spec = self.spec.replace(dim=self.dim)
        if self.onnx_capable:
            self._use_onnx()

    # -- execution: onnxruntime on the CPU where it is exact --------------------------------
    def _use_onnx(self) -> None:
        """Run `_forward` through a cached onnxruntime graph where that is possible and exact
        (`alignprobe.backbones.onnx_runtime`); otherwise keep torch and say why in the log."""
        self._onnx = None
        reason = why_torch(device_type=self.device.type, dtype=dtype_name(self.dtype), layer=self.spec.layer)
        if reason:
            self.execution_note = reason
        else:
            size = self.spec.preprocessing.size if self.spec.preprocessing else 224
            example = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
            meta = {"encoder": type(self).__name__, "model": type(self.model).__name__,
                    "pooling": self.spec.pooling, "model_kwargs": _jsonable(self.spec.kwargs),
                    "config": str(getattr(self.model, "config", ""))}
            self._onnx, self.execution_note = prepare(self._forward, self.model, example,
                                                      name=self.spec.name, meta=meta)
            if self._onnx is None:
                log.warning("%s runs in torch: %s", self.spec.name, self.execution_note)

    @property
    def execution(self) -> str:
        """Which library computes `encode` / `forward`: "onnxruntime" or "torch"."""
        return "onnxruntime" if self._onnx is not None and self.spec.layer is None else "torch"

    def _probe(self) -> torch.Tensor:
        if self.modality == "vision":
            from PIL import Image

            size = self.spec.preprocessing.size if self.spec.preprocessing else 224
            item: Any = Image.new("RGB", (size, size), (127, 127, 127))
        else:
            item = "a"
        with torch.inference_mode():
            return self._features(self.collate([self.preprocess(item)]))

    # -- the contract ----------------------------------------------------------------------
    def preprocess(self, item: Any) -> Any:
        """One PIL image -> CHW float tensor; one string -> string with the instruction prefix."""
        return self.preprocessor.preprocess(item)

    def collate(self, items: list) -> Any:
        """Preprocessed items -> one batch (stacked tensor, tokenized dict, or strings)."""
        return self.preprocessor.collate(items)

    def forward(self, batch: Any) -> torch.Tensor:
        """Run the model on one batch; returns `(n, dim)` float32 on the CPU."""
        with torch.inference_mode():
            out = self._features(batch)
        return self._checked(out, self.spec.name, self.dim)

    def _checked(self, out: torch.Tensor, name: str, dim: int | None) -> torch.Tensor:
        # clone outside inference mode: callers may train on the result (inference tensors refuse)
        out = out.detach().to(device="cpu", dtype=torch.float32).clone()
        if out.ndim != 2 or (dim is not None and out.shape[1] != dim):
            raise ValidationError(
                f"encoder {name!r} produced shape {tuple(out.shape)}, expected (n, "
                f"{dim}); the registry's dim or pooling for it is wrong"
            )
        if not torch.isfinite(out).all():
            raise ValidationError(
                f"encoder {name!r} produced NaN/Inf embeddings in "
                f"{dtype_name(self.dtype)}; {nonfinite_hint(dtype_name(self.dtype))}"
            )
        return out

    # -- layer-wise features -----------------------------------------------------------------
    def _features(self, batch: Any) -> torch.Tensor:
        """The spec's features: the last block (`_forward`, or its onnxruntime graph) or block
        `spec.layer`."""
        if self.execution == "onnxruntime" and self._onnx.accepts(batch):
            return self._onnx(batch)
        if self.spec.layer is None:
            return self._forward(batch)
        return self._forward_layers(batch, [self.spec.layer])[self.spec.layer]

    def _forward_layers(self, batch: Any, layers: list[int]) -> dict[int, torch.Tensor]:
        raise ValidationError(
            f"encoder {self.spec.name!r} ({type(self).__name__}) cannot give layer-wise features; "
            "layers are available for transformers and timm vision encoders and for transformers and "
            "sentence-transformers text encoders"
        )

    def at_layer(self, layer: int) -> Encoder:
        """This encoder (sharing its model) with the features of block `layer`: its own spec
        (`NAME@layer`), width and manifest, hence its own cache entry."""
        view = copy.copy(self)
        view.spec = self.spec.with_layer(layer)
        view.load_notes = list(self.load_notes)
        view.library_versions = dict(self.library_versions)
        if view.spec is not self.spec:
            view._finish()
        return view

    def forward_layers(self, batch: Any, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """One forward pass, the pooled features of several blocks: `{layer: (n, dim_layer)}`
        float32 on the CPU (the same values `at_layer(layer).forward(batch)` gives)."""
        wanted = _layer_list(layers)
        with torch.inference_mode():
            out = self._forward_layers(batch, wanted)
        return {n: self._checked(out[n], f"{self.spec.base_name}@{n}", None) for n in wanted}

    def encode_layers(self, items: list, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """A list of PIL images -> `{layer: (n, dim_layer)}` from one forward pass."""
        items = list(items)
        wanted = _layer_list(layers)
        if not items:
            return {n: torch.empty(0, self.at_layer(n).dim) for n in wanted}
        return self.forward_layers(self.collate([self.preprocess(x) for x in items]), wanted)

    def encode(self, items: list) -> torch.Tensor:
        """A list of PIL images or strings -> `(n, dim)` float32 CPU tensor."""
        items = list(items)
        if not items:
            return torch.empty(0, self.dim, dtype=torch.float32)
        return self.forward(self.collate([self.preprocess(x) for x in items]))

    def _forward(self, batch: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- dense (patch) features --------------------------------------------------------------
    def encode_patches(self, images, *, return_prefix: bool = False,
                       last_attention: str = "qk", skip_last_mlp: bool = False):
        """PIL images (preprocessed as for `encode`) or a ready `(n, 3, H, W)` input batch ->
        `(n, H/p, W/p, hidden)` float32 CPU patch tokens: the pooling-free tokens the spec's
        pooling starts from. `return_prefix=True` also returns the `(n, P, hidden)` prefix
        tokens (CLS first, then registers; None for a feature map without them).

        ``last_attention='qq'`` / ``skip_last_mlp=True``: the reference's segmentation variant
        of the last block used (SAIL ``model/dinoforseg.py``; see
        `alignprobe.backbones.dense_block`), for transformers DINOv2 encoders."""
        check_last_block(last_attention, skip_last_mlp)
        batch = images if torch.is_tensor(images) else self.collate(
            [self.preprocess(x) for x in images])
        with torch.inference_mode():
            if last_attention == "qk" and not skip_last_mlp:
                prefix, grid = self._forward_patches(batch)
            else:
                prefix, grid = self._forward_patches(batch, attention=last_attention,
                                                     skip_mlp=skip_last_mlp)
        grid = grid.detach().to("cpu", torch.float32).clone()
        if prefix is not None:
            prefix = prefix.detach().to("cpu", torch.float32).clone()
        if not torch.isfinite(grid).all():
            raise ValidationError(f"encoder {self.spec.name!r} produced NaN/Inf patch tokens in "
                                  f"{dtype_name(self.dtype)}; {nonfinite_hint(dtype_name(self.dtype))}")
        return (grid, prefix) if return_prefix else grid

    def _forward_patches(self, batch: Any,
                         **last_block) -> tuple[torch.Tensor | None, torch.Tensor]:
        raise ValidationError(
            f"encoder {self.spec.name!r} ({type(self).__name__}) has no patch tokens; dense "
            "features need a ViT (or CNN feature map) loaded through transformers or timm")

    def manifest(self) -> dict:
        """Everything that changes an embedding, JSON-able (the cache key of the embeddings)."""
        s = self.spec
        out: dict[str, Any] = {
            "name": s.name,
            "modality": s.modality,
            "source": s.source,
            "backend": s.backend,
            "hub_id": s.hub_id,
            "revision": self.resolved_revision,
            "revision_requested": s.revision,
            "pooling": s.pooling,
            "dim": self.dim,
            "dtype": dtype_name(self.dtype),
            "preprocessing": s.preprocessing.to_dict() if s.preprocessing else None,
            "prefix": s.prefix,
            "max_length": s.max_length,
            "model_class": s.model_class,
            "model_kwargs": _jsonable(s.kwargs),
            "trust_remote_code": s.trust_remote_code,
            "is_control": s.is_control,
            "local_path": None,
            "checkpoint": None,
            "library_versions": dict(sorted(self.library_versions.items())),
            "load_notes": list(self.load_notes),
        }
        if self.onnx_capable:
            # only for encoders that have the choice, so other cache keys stay what they were
            out["execution"] = self.execution
            if self.execution == "onnxruntime":
                out["library_versions"] = dict(sorted({**self.library_versions,
                                                       "onnxruntime": library_version("onnxruntime")}.items()))
        if s.layer is not None:
            # only when set, so the cache keys of last-block features stay what they were
            out["layer"] = s.layer
        if s.path and not s.converter:
            out["local_path"] = {"path": s.path, "files": fingerprint_dir(s.path)}
        elif s.path:
            # a directory converted from the checkpoint (fingerprinted below) is derived data:
            # converting it again must not change the key
            out["local_path"] = {"converted_by": s.converter}
        if s.checkpoint:
            out["checkpoint"] = fingerprint_file(s.checkpoint)
        if s.is_control:
            out["control_params"] = _jsonable(s.kwargs)
        out["alignprobe_version"] = __version__
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.spec.name!r}, modality={self.modality!r}, "
            f"dim={self.dim}, "
            f"pooling={self.spec.pooling!r}, device={self.device}, dtype={dtype_name(self.dtype)})"
        )
