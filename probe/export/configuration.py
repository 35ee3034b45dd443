"""`AlignedVisionTowerConfig`: the config of the exported vision tower (`alignprobe.probe.export.tower`).

Its own module, importing only transformers' configuration code (no torch, no modeling code), so
that ``AutoConfig`` -- and ``LlavaConfig(vision_config=...)`` -- can learn it as soon as transformers'
auto-config module loads.
"""
from __future__ import annotations

from typing import Any

from transformers.configuration_utils import PreTrainedConfig

MODEL_TYPE = "alignprobe_vision_tower"
TOKEN_POOLINGS = ("concat", "cls", "mean")


class AlignedVisionTowerConfig(PreTrainedConfig):
    """Config of `AlignedVisionTowerModel`.

    ``backbone_config``: the backbone's own transformers config (any vision model with patch
    tokens; DINOv2 by default); ``layer``: block whose tokens are used (None: the last, after the
    final norm); ``pooling``: ``concat`` / ``cls`` / ``mean`` (the run's); ``head``: the
    `AlignmentHead` arguments (``in_dim``, ``out_dim``, ``kind``, ``width``); ``hidden_size``:
    the head's ``out_dim`` (the width of every output token, what LLaVA's projector takes);
    ``image_size`` / ``patch_size``: the backbone's input and patch size; ``alignprobe``: where the
    weights come from (run directory, encoder identity, alignprobe version) -- informational.
    """

    model_type = MODEL_TYPE

    backbone_config: dict | PreTrainedConfig | None = None
    layer: int | None = None
    pooling: str = "concat"
    head: dict | None = None
    hidden_size: int = 0
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    alignprobe: dict | None = None

    def __post_init__(self, **kwargs):
        self.backbone_config = _as_config(self.backbone_config)
        if self.pooling not in TOKEN_POOLINGS:
            raise ValueError(f"pooling must be one of {TOKEN_POOLINGS} (per-patch features need a token "
                             f"pooling), got {self.pooling!r}")
        head = dict(self.head or {})
        if head and not self.hidden_size:
            self.hidden_size = int(head["out_dim"])
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if isinstance(self.backbone_config, PreTrainedConfig):
            out["backbone_config"] = self.backbone_config.to_dict()
        return out


def _as_config(value):
    """A backbone config from a dict (``model_type`` names its class), kept as is otherwise."""
    from transformers.models.auto.configuration_auto import AutoConfig

    if value is None:
        value = {"model_type": "dinov2"}
    if isinstance(value, dict):
        value = dict(value)
        model_type = value.pop("model_type", "dinov2")
        return AutoConfig.for_model(model_type, **value)
    return value



def register_config(exist_ok: bool = True) -> None:
    """Make ``AutoConfig`` know ``model_type="alignprobe_vision_tower"``."""
    from transformers.models.auto.configuration_auto import AutoConfig

    AutoConfig.register(MODEL_TYPE, AlignedVisionTowerConfig, exist_ok=exist_ok)
