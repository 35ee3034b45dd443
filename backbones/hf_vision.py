"""Vision encoders loaded with transformers.

DINOv2, DINO, MAE, I-JEPA, the CLIP / SigLIP vision towers, and any `hf:` id.
"""

from __future__ import annotations

import inspect
import warnings

import torch

from alignprobe.errors import ValidationError

from . import dense_block
from .encoder import Encoder, split_patch_tokens
from .hf_common import hf_read_json, load_pretrained, versions
from .pooling import pool_vision
from .resolve import hf_preprocessing
from .spec import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, Preprocessing
from .transforms import ImagePreprocessor


def _patch_size(config) -> tuple[int, int] | None:
    p = getattr(config, "patch_size", None)
    if p is None:
        return None
    return (int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1]))


class HFVisionEncoder(Encoder):
    """Runs `model(pixel_values=...)` and pools `last_hidden_state` (or uses `pooler_output`).

    The prefix-token count (CLS + registers) is measured, not looked up: it is the
    sequence length minus the number of patches of the input. Models whose forward
    takes a `noise` argument (ViTMAE's random patch shuffling) get an ascending
    noise so the patch order, and so the result, is deterministic.
    """

    onnx_capable = True  # `_forward` takes one pixel batch: onnxruntime on the CPU (encoder.py)

    def __init__(self, spec: EncoderSpec, model, *, device, dtype, revision=None, notes=()):
        super().__init__(spec, ImagePreprocessor(spec.preprocessing), device=device, dtype=dtype)
        self.model = model.to(device)
        self.resolved_revision = revision
        self.load_notes.extend(notes)
        self.library_versions.update(versions("transformers"))
        self._patch = _patch_size(model.config)
        self._takes_noise = "noise" in inspect.signature(model.forward).parameters
        self._finish()

    def _inputs(self, batch: torch.Tensor) -> tuple[torch.Tensor, dict, int | None]:
        """The pixel batch on the model's device, the forward kwargs, and the number of patches.

        MAE-style models mask patches at random unless given ``noise``; a fixed
        ascending noise keeps every patch in order, so features are deterministic.
        """
        x = batch.to(self.device, self.dtype)
        kwargs: dict = {}
        n_patches = None
        if self._patch is not None:
            n_patches = (x.shape[-2] // self._patch[0]) * (x.shape[-1] // self._patch[1])
            if self._takes_noise:
                kwargs["noise"] = torch.arange(n_patches, device=self.device, dtype=torch.float32).expand(
                    x.shape[0], -1)
        return x, kwargs, n_patches

    def _forward_patches(self, batch: torch.Tensor, *, attention: str = "qk",
                         skip_mlp: bool = False):
        """The tokens `_forward` pools (`last_hidden_state`; `hidden_states[layer]` for a layer
        view) split into prefix tokens and the patch grid; with ``attention='qq'`` or
        ``skip_mlp``, the reference's segmentation variant of that last block
        (`alignprobe.backbones.dense_block`)."""
        if self._patch is None:
            raise ValidationError(f"{self.spec.name}: the model config has no patch_size")
        x, kwargs, _ = self._inputs(batch)
        h, w = x.shape[-2] // self._patch[0], x.shape[-1] // self._patch[1]
        layer = getattr(self.spec, "layer", None)
        if not dense_block.is_standard(attention, skip_mlp):
            tokens = dense_block.dense_tokens(self.model, x, block=layer, attention=attention,
                                              skip_mlp=skip_mlp, model_name=self.spec.name,
                                              **kwargs)
            return split_patch_tokens(tokens, h, w, self.spec.name)
        out = self.model(pixel_values=x, output_hidden_states=layer is not None, **kwargs)
        if layer is not None:
            tokens = out.hidden_states[layer]
        else:
            tokens = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return split_patch_tokens(tokens, h, w, self.spec.name)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        x, kwargs, n_patches = self._inputs(batch)
        out = self.model(pixel_values=x, **kwargs)
        tokens = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        num_prefix = 0
        if tokens.ndim == 3:
            if n_patches is None:
                raise ValidationError(
                    f"{self.spec.name}: the model config has no patch_size; cannot locate patch "
                    "tokens"
                )
            num_prefix = tokens.shape[1] - n_patches
            if num_prefix < 0:
                raise ValidationError(
                    f"{self.spec.name}: {tokens.shape[1]} tokens for {n_patches} patches; some "
                    "patches were dropped (a masking ratio above 0?)"
                )
        return pool_vision(
            tokens,
            self.spec.pooling,
            num_prefix_tokens=num_prefix,
            pooler_output=getattr(out, "pooler_output", None),
        )


    # -- layer-wise features ------------------------------------------------------------------
    def _forward_layers(self, batch: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """Pool `hidden_states[n]` (n = 0: the embeddings; n = L: the last block, before the
        final norm that `last_hidden_state` has) of one forward pass for each requested n."""
        if self.spec.pooling == "pooler":
            raise ValidationError(
                f"{self.spec.name}: pooling 'pooler' is the model's head on its last block; for "
                "layer features use pooling 'cls', 'mean' or 'concat'"
            )
        x, kwargs, n_patches = self._inputs(batch)
        hidden = self.model(pixel_values=x, output_hidden_states=True, **kwargs).hidden_states
        if hidden is None:
            raise ValidationError(f"{self.spec.name}: the model returns no hidden_states")
        too_deep = [n for n in layers if n >= len(hidden)]
        if too_deep:
            raise ValidationError(
                f"{self.spec.name} has {len(hidden) - 1} blocks; layer {too_deep[0]} does not "
                f"exist (choose 0..{len(hidden) - 1}; 0 is the patch embeddings)"
            )
        out = {}
        for n in layers:
            tokens = hidden[n]
            num_prefix = 0 if tokens.ndim != 3 or n_patches is None else tokens.shape[1] - n_patches
            out[n] = pool_vision(tokens, self.spec.pooling, num_prefix_tokens=num_prefix)
        return out


def _preprocessing(spec: EncoderSpec, model, notes: list[str]) -> Preprocessing:
    """The registry's preprocessing, else preprocessor_config.json, else a stated guess."""
    if spec.preprocessing is not None:
        return spec.preprocessing
    cfg = hf_read_json(spec, "preprocessor_config.json")
    if cfg is not None:
        return hf_preprocessing(cfg)
    size = getattr(model.config, "image_size", 224)
    size = int(size if isinstance(size, int) else size[0])
    message = (
        f"{spec.name}: no preprocessor_config.json; using resize+crop {size}, bicubic, ImageNet "
        "mean/std. Pass preprocessing=Preprocessing(...) to set it explicitly."
    )
    warnings.warn(message, stacklevel=3)
    notes.append(message)
    return Preprocessing(size, 1.0, IMAGENET_MEAN, IMAGENET_STD, "bicubic")


def load(spec: EncoderSpec, *, device, dtype) -> HFVisionEncoder:
    model, revision, notes = load_pretrained(spec, dtype=dtype)
    spec = spec.replace(preprocessing=_preprocessing(spec, model, notes))
    return HFVisionEncoder(spec, model, device=device, dtype=dtype, revision=revision, notes=notes)
