"""The metadata of one encoder: what to load, how to pool it, how to prepare its input.

A spec is a small frozen dataclass (timm's `PretrainedCfg`, lm-eval's registry
entries): every setting that changes an embedding lives here, so the
manifest of an encoder is derived from its spec, never from loose flags.
Pure Python; importing this module imports no ML library.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from alignprobe.errors import ValidationError

MODALITIES = ("vision", "text")
SOURCES = ("transformers", "timm", "torch.hub", "sentence-transformers", "local", "builtin")
# Libraries that can read a local directory (the `local_format` of a `source="local"` spec).
LOCAL_FORMATS = ("transformers", "timm", "sentence-transformers")

VISION_POOLINGS = ("cls", "mean", "concat", "pooler")
TEXT_POOLINGS = ("mean", "cls", "last", "encode")
POOLINGS = {"vision": VISION_POOLINGS, "text": TEXT_POOLINGS}
# Controls (source="builtin") that compute their features directly have nothing to pool.
CONTROL_POOLING = "none"

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
CROP_MODES = ("center", "squash")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except TypeError:
        raise ValidationError(
            f"Preprocessing.{what} must be 3 numbers (one per RGB channel), got {value!r}"
        ) from None
    if len(out) != 3:
        raise ValidationError(
            f"Preprocessing.{what} must be 3 numbers (one per RGB channel), got {value!r}"
        )
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor (timm's data config).

    `crop_mode="center"`: resize the shorter side to `floor(size / crop_pct)`,
    then center-crop `size x size`. `crop_mode="squash"`: resize straight to
    `size x size`, ignoring the aspect ratio (SigLIP's and ViTImageProcessor's
    way). Then scale to [0, 1] and normalise with `mean` / `std`.
    """

    size: int
    crop_pct: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise ValidationError(f"Preprocessing.size must be a positive int, got {self.size!r}")
        crop = float(self.crop_pct)
        if not 0.0 < crop <= 1.0:
            raise ValidationError(
                f"Preprocessing.crop_pct must be in (0, 1], got {self.crop_pct!r}"
            )
        object.__setattr__(self, "crop_pct", crop)
        object.__setattr__(self, "mean", _triple(self.mean, "mean"))
        std = _triple(self.std, "std")
        if any(s <= 0 for s in std):
            raise ValidationError(f"Preprocessing.std must be positive, got {self.std!r}")
        object.__setattr__(self, "std", std)
        if self.interpolation not in INTERPOLATIONS:
            raise ValidationError(
                f"Preprocessing.interpolation must be one of {INTERPOLATIONS}, got "
                f"{self.interpolation!r}"
            )
        if self.crop_mode not in CROP_MODES:
            raise ValidationError(
                f"Preprocessing.crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}"
            )

    @property
    def resize_size(self) -> int:
        """Shorter-side length before the center crop (timm: `floor(size / crop_pct)`)."""
        return int(math.floor(self.size / self.crop_pct))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(**d)


@dataclass(frozen=True)
class EncoderSpec:
    """One named encoder. The first fields are the public contract; the rest say how to load it.

    `dim` is the embedding width with the default `pooling` (None when it can
    only be known after loading; the encoder measures it then). `model_kwargs`
    are passed to the model constructor / `from_pretrained` (config overrides,
    or a control's parameters). `model_class` is a lazily imported
    `"module:attr"` (transformers) or a timm architecture name. `path` is a
    local directory with the weights, which wins over `hub_id`; `packaged`
    names weights shipped inside an installed Python package
    (`"package:folder"`, or `"package:file"` for a weights file); `package` is
    the pip requirement that provides it (named in the error when it is
    missing). `checkpoint` is a local weights file (timm); `checkpoint_filter`
    (`"module:attr"`) renames its keys for the architecture (timm's
    `pretrained_filter_fn`); `converter` (`"module:attr"`) turns a packaged
    file into a model directory once, before loading. `layer` takes the
    features from block N instead of the last one (transformers
    `hidden_states[N]`, N = 0 being the embeddings; timm's N-th
    `forward_intermediates` output), pooled with `pooling`.
    """

    name: str
    modality: str
    source: str
    hub_id: str | None = None
    revision: str | None = None
    pooling: str = "mean"
    dim: int | None = None
    preprocessing: Preprocessing | None = None
    max_length: int | None = None
    prefix: str = ""
    family: str = ""
    params_m: float | None = None
    license: str = "unknown"
    notes: str = ""
    aliases: tuple[str, ...] = ()
    is_control: bool = False
    # -- loading details (beyond the contract; all optional) --
    model_class: str | None = None
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    trust_remote_code: bool = False
    path: str | None = None
    local_format: str | None = None
    packaged: str | None = None
    checkpoint: str | None = None
    # -- layer-wise features and packaged weights --
    layer: int | None = None
    package: str | None = None
    checkpoint_filter: str | None = None
    converter: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValidationError(f"EncoderSpec.name must be a non-empty string, got {self.name!r}")
        if self.modality not in MODALITIES:
            raise ValidationError(
                f"EncoderSpec.modality must be one of {MODALITIES}, got {self.modality!r}"
            )
        if self.source not in SOURCES:
            raise ValidationError(
                f"EncoderSpec.source must be one of {SOURCES}, got {self.source!r}"
            )
        allowed = POOLINGS[self.modality] + ((CONTROL_POOLING,) if self.source == "builtin" else ())
        if self.pooling not in allowed:
            raise ValidationError(
                f"pooling {self.pooling!r} is not valid for a {self.modality} encoder "
                f"({self.name}); choose one of {allowed}"
            )
        if self.dim is not None and (
            isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim <= 0
        ):
            raise ValidationError(
                f"EncoderSpec.dim must be a positive int or None, got {self.dim!r}"
            )
        if self.preprocessing is not None and not isinstance(self.preprocessing, Preprocessing):
            raise ValidationError(
                f"EncoderSpec.preprocessing must be a Preprocessing, got {type(self.preprocessing)}"
            )
        if self.max_length is not None and (
            isinstance(self.max_length, bool)
            or not isinstance(self.max_length, int)
            or self.max_length <= 0
        ):
            raise ValidationError(
                f"max_length must be a positive int or None, got {self.max_length!r}"
            )
        if not isinstance(self.prefix, str):
            raise ValidationError(f"prefix must be a string, got {self.prefix!r}")
        if self.layer is not None and (
            isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0
        ):
            raise ValidationError(
                f"layer must be a block index >= 0 (or None for the last block), got {self.layer!r}"
            )
        if self.source == "local" and self.local_format not in LOCAL_FORMATS:
            raise ValidationError(
                f"a local spec needs local_format in {LOCAL_FORMATS}, got {self.local_format!r}"
            )
        object.__setattr__(self, "aliases", tuple(self.aliases))
        if isinstance(self.model_kwargs, dict):
            object.__setattr__(self, "model_kwargs", tuple(sorted(self.model_kwargs.items())))
        else:
            object.__setattr__(
                self, "model_kwargs", tuple((str(k), v) for k, v in self.model_kwargs)
            )

    @property
    def backend(self) -> str:
        """The library that loads the weights ("builtin" for controls)."""
        if self.source == "local":
            return self.local_format  # type: ignore[return-value]
        return self.source

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_kwargs)

    def replace(self, **changes: Any) -> EncoderSpec:
        return dataclasses.replace(self, **changes)

    @property
    def base_name(self) -> str:
        """The name without the `@N` layer suffix that `with_layer` adds."""
        suffix = f"@{self.layer}"
        if self.layer is not None and self.name.endswith(suffix):
            return self.name[: -len(suffix)]
        return self.name

    def with_layer(self, layer: int) -> EncoderSpec:
        """This encoder's features from block `layer`, named `NAME@layer` (its own encoder in a
        sweep, its own cache entry). The width is measured again: CNN stages differ in width."""
        if isinstance(layer, str) and layer.strip().isdigit():
            layer = int(layer)
        if layer == self.layer:
            return self
        if self.is_control:
            raise ValidationError(f"control {self.name!r} has no layers to choose from")
        return self.replace(layer=layer, name=f"{self.base_name}@{layer}", dim=None)
