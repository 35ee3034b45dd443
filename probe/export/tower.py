"""The aligned vision encoder as a transformers model: a frozen ViT backbone and a trained SAIL
vision head, one ``PreTrainedModel`` that LLaVA-style multimodal LLMs use as their vision tower.

Token layout of ``last_hidden_state`` ``(batch, 1 + patches, out_dim)``:

* position 0: the aligned global token, ``head(pool(tokens))`` with the run's pooling -- the
  image embedding the run was trained on, before normalisation (also ``pooler_output``);
* positions 1..: every patch token through the head, in the layout of the pooled feature the
  head was trained on: ``concat`` -> ``CLS ++ patch`` (the SAIL reference's ``patch_mode``,
  ``llava_train/llava_model/multimodal_encoder/builder.py`` with ``model/vision_model.py``);
  ``cls`` / ``mean`` -> the patch token itself. Register tokens are left out.

``hidden_states`` (when asked for) is ``(last_hidden_state,)``: LLaVA reads
``hidden_states[vision_feature_layer]``, so ``vision_feature_layer=-1`` selects the aligned tokens
and ``vision_feature_select_strategy="default"`` drops the global token (the reference's patch
tokens only), ``"full"`` keeps it. The backbone's own per-block states are not exposed: they live
in another space (``hidden_size`` here is the head's output width, which LLaVA's projector reads).

The backbone is rebuilt with ``AutoModel.from_config(config.backbone_config)``; ``layer`` takes
its tokens from ``hidden_states[layer]`` (0 = embeddings) instead of ``last_hidden_state``, as
`alignprobe.backbones.hf_vision` does for a layer-trained run.
"""
from __future__ import annotations

import inspect

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import PreTrainedModel
from transformers.models.auto.modeling_auto import AutoModel

from alignprobe.probe.export.configuration import (MODEL_TYPE, TOKEN_POOLINGS, AlignedVisionTowerConfig,
                                                   register_config)
from alignprobe.probe.training.heads import AlignmentHead

__all__ = ["AlignedVisionTowerConfig", "AlignedVisionTowerModel", "MODEL_TYPE", "TOKEN_POOLINGS", "register"]


class AlignedVisionTowerModel(PreTrainedModel):
    """A frozen vision backbone and an alignment head (see the module docstring).

    ``forward(pixel_values)`` -> `BaseModelOutputWithPooling`:
    ``last_hidden_state`` ``(batch, 1 + patches, hidden_size)``, ``pooler_output``
    ``(batch, hidden_size)`` (= ``last_hidden_state[:, 0]``), ``hidden_states``
    ``(last_hidden_state,)`` when ``output_hidden_states``.
    """

    config_class = AlignedVisionTowerConfig
    base_model_prefix = "aligned_vision_tower"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: AlignedVisionTowerConfig):
        super().__init__(config)
        self.backbone = AutoModel.from_config(config.backbone_config)
        self._takes_noise = "noise" in inspect.signature(self.backbone.forward).parameters
        head = dict(config.head or {})
        self.head = AlignmentHead(int(head["in_dim"]), int(head["out_dim"]), head.get("kind", "linear"),
                                  int(head.get("width", 8)))
        self.post_init()

    @property
    def patch_size(self) -> int:
        return int(self.config.patch_size)

    def _init_weights(self, module):
        # the exported weights replace everything; a fresh tower (LLaVA's from_config) gets the
        # backbone's own initialisation and the head's (Xavier, zero bias) from their constructors
        return

    def _patch_hw(self) -> tuple[int, int]:
        p = self.config.backbone_config.patch_size
        return (int(p), int(p)) if isinstance(p, int) else (int(p[0]), int(p[1]))

    def _tokens(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The backbone tokens the run pooled, and the number of patches."""
        ph, pw = self._patch_hw()
        n_patches = (pixel_values.shape[-2] // ph) * (pixel_values.shape[-1] // pw)
        kwargs = {}
        if self._takes_noise:
            # MAE-style models shuffle patches unless given a noise; ascending keeps them in order,
            # as alignprobe's encoder does (`alignprobe.backbones.hf_vision`)
            kwargs["noise"] = torch.arange(n_patches, device=pixel_values.device,
                                           dtype=torch.float32).expand(pixel_values.shape[0], -1)
        layer = self.config.layer
        out = self.backbone(pixel_values=pixel_values, output_hidden_states=layer is not None,
                            return_dict=True, **kwargs)
        tokens = out.hidden_states[layer] if layer is not None else out.last_hidden_state
        if tokens.ndim != 3 or tokens.shape[1] < n_patches:
            raise ValueError(f"the backbone returned {tuple(tokens.shape)} for {n_patches} patches; "
                             "the tower needs (batch, prefix + patches, hidden) tokens")
        return tokens, n_patches

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs) -> BaseModelOutputWithPooling | tuple:
        # LLaVA passes its vision_feature_layer (an int, or a list) as output_hidden_states
        want_hidden = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        want_hidden = want_hidden is not None and want_hidden is not False
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        pixel_values = pixel_values.to(self.dtype)
        tokens, n_patches = self._tokens(pixel_values)
        num_prefix = tokens.shape[1] - n_patches
        patches = tokens[:, num_prefix:]
        pooling = self.config.pooling
        if pooling in ("cls", "concat") and num_prefix < 1:
            raise ValueError(f"pooling {pooling!r} needs a CLS token and this backbone has none")
        cls = tokens[:, 0]
        if pooling == "cls":
            pooled, per_patch = cls, patches
        elif pooling == "mean":
            pooled, per_patch = patches.mean(dim=1), patches
        else:
            pooled = torch.cat([cls, patches.mean(dim=1)], dim=-1)
            per_patch = torch.cat([cls[:, None].expand(-1, patches.shape[1], -1), patches], dim=-1)
        glob = self.head(pooled)
        last = torch.cat([glob[:, None], self.head(per_patch)], dim=1)
        hidden = (last,) if want_hidden else None
        if not return_dict:
            return tuple(v for v in (last, glob, hidden) if v is not None)
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=glob, hidden_states=hidden)


def register(exist_ok: bool = True) -> None:
    """Make ``AutoConfig`` / ``AutoModel`` know ``model_type="alignprobe_vision_tower"``."""
    register_config(exist_ok=exist_ok)
    AutoModel.register(AlignedVisionTowerConfig, AlignedVisionTowerModel, exist_ok=exist_ok)


# Importing this module loads transformers' auto-model module; when that happens here first, the
# import hook of `alignprobe.probe.export` finds this module unfinished and leaves the
# registration to it (`import alignprobe.probe.export.tower` or `alignprobe export` first).
register()
