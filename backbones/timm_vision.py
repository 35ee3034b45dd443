"""Vision encoders built with timm: registry names (`timm:<arch>[.tag]`), timm exports in a
local directory, and architectures whose weights come as a checkpoint file (iBOT).

Weights always go through timm's own `load_pretrained` (strict, with its
checkpoint filters): a cached hub file or a checkpoint reaches it through
`pretrained_cfg_overlay`. Features are `forward_features` tokens pooled here;
`pooler` is timm's `forward_head(pre_logits=True)`, the model's own pooling.
On the CPU in fp32 the last-block features (forward + pooling) run as an onnxruntime graph where
it equals torch (`onnx_runtime`); `execution` and the manifest say which ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from alignprobe.errors import EncoderNotAvailableError, ValidationError

from . import dense_block
from .encoder import Encoder, split_patch_tokens
from .hf_common import import_string, versions
from .hub import (
    describe_load_failure,
    hf_hub_cache,
    hub_offline,
    load_errors,
    not_available,
    timm_weights,
)
from .pooling import pool_vision
from .resolve import preprocessing_from_timm_cfg
from .spec import EncoderSpec
from .transforms import ImagePreprocessor

# Checkpoint keys of training-only parameters that a feature extractor does not have.
_TRAINING_ONLY_KEYS = ("masked_embed", "mask_token")
_WRAPPER_KEYS = ("state_dict", "model", "teacher", "module")
_KEY_PREFIXES = ("module.", "backbone.")


class TimmVisionEncoder(Encoder):
    onnx_capable = True

    def __init__(self, spec: EncoderSpec, model, *, device, dtype, revision=None, notes=()):
        if spec.preprocessing is None:
            from timm.data import resolve_data_config

            spec = spec.replace(
                preprocessing=preprocessing_from_timm_cfg(resolve_data_config({}, model=model))
            )
        super().__init__(spec, ImagePreprocessor(spec.preprocessing), device=device, dtype=dtype)
        self.model = model.to(device=device, dtype=dtype).eval()
        # CNNs: depthwise convolutions are ~2x faster channels-last on CPU (mkldnn instead of the
        # slow NCHW kernel); ViTs keep the default layout
        self._memory_format = (
            torch.contiguous_format if hasattr(model, "patch_embed") else torch.channels_last
        )
        self.model = self.model.to(memory_format=self._memory_format)
        self.resolved_revision = revision
        self.load_notes.extend(notes)
        self.library_versions.update(versions("timm"))
        self._has_cls = getattr(model, "cls_token", None) is not None
        self._num_prefix = int(getattr(model, "num_prefix_tokens", 1 if self._has_cls else 0))
        self._finish()

    def _forward_patches(self, batch: torch.Tensor, *, attention: str = "qk",
                         skip_mlp: bool = False):
        """`forward_features` tokens (what `_forward` pools) split into prefix and patch grid."""
        if not dense_block.is_standard(attention, skip_mlp):
            raise ValidationError(f"{self.spec.name}: the last-block change (qq attention / "
                                  "skipped MLP) is written for transformers DINOv2 encoders; "
                                  "use last_attention='qk' without skip_mlp for a timm model")
        if getattr(self.spec, "layer", None) is not None:
            raise ValidationError(f"{self.spec.name}: patch tokens of a timm encoder come from its "
                                  "last block; drop the @layer")
        x = batch.to(self.device, self.dtype)
        feats = self.model.forward_features(x)
        embed = getattr(self.model, "patch_embed", None)
        if feats.ndim == 3 and embed is None:
            raise ValidationError(f"{self.spec.name}: no patch_embed; cannot place the tokens")
        h, w = embed.dynamic_feat_size(tuple(x.shape[-2:])) if feats.ndim == 3 else (0, 0)
        return split_patch_tokens(feats, int(h), int(w), self.spec.name)

    def _input(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.to(self.device, self.dtype).contiguous(memory_format=self._memory_format)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(self._input(batch))
        if self.spec.pooling == "pooler":
            return self.model.forward_head(feats, pre_logits=True).float()
        return pool_vision(
            feats, self.spec.pooling, num_prefix_tokens=self._num_prefix, has_cls=self._has_cls
        )


    # -- layer-wise features ------------------------------------------------------------------
    def _forward_layers(self, batch: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """Pool the N-th output of timm's `forward_intermediates` (N = 1..number of blocks for a
        ViT, of feature stages for a CNN; raw, without the final norm) for each requested N."""
        if self.spec.pooling == "pooler":
            raise ValidationError(
                f"{self.spec.name}: pooling 'pooler' is the model's head on its last block; for "
                "layer features use pooling 'cls', 'mean' or 'concat' (CNNs: 'mean')"
            )
        if not hasattr(self.model, "forward_intermediates"):
            raise ValidationError(
                f"{self.spec.name}: timm's {type(self.model).__name__} has no forward_intermediates,"
                " so it cannot give layer-wise features"
            )
        depth = len(getattr(self.model, "feature_info", None) or [])
        bad = [n for n in layers if not 1 <= n <= depth]
        if bad:
            raise ValidationError(
                f"{self.spec.name}: layer {bad[0]} does not exist; timm layers count the "
                f"forward_intermediates outputs from 1 to {depth}"
            )
        import inspect

        tokens_api = "return_prefix_tokens" in inspect.signature(
            self.model.forward_intermediates
        ).parameters
        kwargs = {"output_fmt": "NLC", "return_prefix_tokens": True} if tokens_api else {}
        ordered = sorted(layers)  # timm returns the intermediates in block order
        feats = self.model.forward_intermediates(
            self._input(batch),
            indices=[n - 1 for n in ordered],
            intermediates_only=True,
            **kwargs,
        )
        out = {}
        for n, f in zip(ordered, feats):
            if isinstance(f, tuple):  # (patch tokens, prefix tokens)
                f = torch.cat([f[1], f[0]], dim=1)
            out[n] = pool_vision(
                f, self.spec.pooling, num_prefix_tokens=self._num_prefix, has_cls=self._has_cls
            )
        return out


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors / .pth file, unwrapped from training checkpoints
    (`{"teacher": ...}`, `{"state_dict": ...}`) and stripped of `module.` / `backbone.` prefixes."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(path), device="cpu")
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    while isinstance(sd, dict):
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(sd.get(k), dict)), None)
        if wrapper is None:
            break
        sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValidationError(f"{path} does not hold a state dict of tensors")
    out = {}
    for key, value in sd.items():
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def _architecture(spec: EncoderSpec) -> str:
    arch = spec.model_class or spec.hub_id
    if not arch:
        raise ValidationError(
            f"timm encoder {spec.name!r} names no architecture (model_class or hub_id)"
        )
    return arch


class _LoadLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _watch_timm_loading():
    """Collect timm's loading log. timm loads non-strictly whenever it drops a classifier head
    (num_classes differs from the checkpoint's) and then only logs missing weights at INFO level."""
    logger = logging.getLogger("timm.models._builder")
    handler, level, propagate = _LoadLog(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # collected for the check, not shown: "Loading pretrained weights from file" is chatter
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _random_init_messages(messages: list[str]) -> list[str]:
    return [m for m in messages if m.startswith("Missing keys") or "random init" in m.lower()]


def build(spec: EncoderSpec) -> tuple[Any, str | None, list[str]]:
    """Create the timm model with pretrained weights; returns (model, revision, notes).

    Refuses any load that leaves parameters randomly initialised."""
    with _watch_timm_loading() as log:
        model, revision, notes = _build(spec)
    bad = _random_init_messages(log.messages)
    if bad:
        raise EncoderNotAvailableError(
            f"the weights of {spec.name!r} do not cover the architecture "
            f"{spec.model_class or spec.hub_id!r}; some layers would be randomly initialised, so "
            f"alignprobe refuses to load it: {bad[0][:300]}"
        )
    return model, revision, notes


def _build(spec: EncoderSpec) -> tuple[Any, str | None, list[str]]:
    import timm

    kwargs = {"num_classes": 0, **spec.kwargs}
    notes: list[str] = []
    revision = None
    try:
        if spec.path:
            model = timm.create_model("local-dir:" + spec.path, pretrained=True, **kwargs)
        elif spec.checkpoint and spec.checkpoint_filter:
            # timm reads the file and renames its keys with the entry's filter (packaged weights)
            model = timm.create_model(
                _architecture(spec),
                pretrained=True,
                pretrained_cfg_overlay={"file": spec.checkpoint},
                pretrained_filter_fn=import_string(spec.checkpoint_filter),
                **kwargs,
            )
        elif spec.checkpoint:
            arch = _architecture(spec)
            state = read_checkpoint(spec.checkpoint)
            probe = timm.create_model(arch.split(".")[0], pretrained=False, **kwargs)
            own = set(probe.state_dict())
            dropped = sorted(
                k for k in state if k not in own and k.split(".")[0] in _TRAINING_ONLY_KEYS
            )
            for k in dropped:
                state.pop(k)
            if dropped:
                notes.append(f"dropped training-only checkpoint keys {dropped}")
            del probe
            model = timm.create_model(
                arch, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs
            )
        else:
            found = timm_weights(spec)
            revision = found["commit"]
            if found["file"] is not None:
                model = timm.create_model(
                    spec.hub_id,
                    pretrained=True,
                    pretrained_cfg_overlay={"file": str(found["file"])},
                    **kwargs,
                )
            elif hub_offline():
                raise not_available(
                    spec,
                    "not in the local timm / Hugging Face cache and HF_HUB_OFFLINE is set",
                    repo_id=found["repo"],
                )
            else:
                # hub downloads land in the cache HF_HOME names now (timm's default froze at import)
                where = {"cache_dir": str(hf_hub_cache())} if found["repo"] else {}
                model = timm.create_model(spec.hub_id, pretrained=True, **where, **kwargs)
                revision = timm_weights(spec)["commit"]
    except EncoderNotAvailableError:
        raise
    except load_errors() as exc:
        raise describe_load_failure(spec, exc) from None
    except RuntimeError as exc:
        if "state_dict" in str(exc) or "size mismatch" in str(exc):
            raise EncoderNotAvailableError(
                f"the weights given for {spec.name!r} do not fit the architecture "
                f"{spec.model_class or spec.hub_id!r}: {str(exc).splitlines()[0][:300]}"
            ) from None
        raise
    return model, revision, notes


def match_img_size(spec: EncoderSpec) -> EncoderSpec:
    """An `img_size=` model kwarg sets the input size; the preprocessing must produce it."""
    size = spec.kwargs.get("img_size")
    if isinstance(size, int) and spec.preprocessing is not None and spec.preprocessing.size != size:
        spec = spec.replace(preprocessing=dataclasses.replace(spec.preprocessing, size=size))
    return spec


def load(spec: EncoderSpec, *, device, dtype) -> TimmVisionEncoder:
    spec = match_img_size(spec)
    model, revision, notes = build(spec)
    return TimmVisionEncoder(
        spec, model, device=device, dtype=dtype, revision=revision, notes=notes
    )
