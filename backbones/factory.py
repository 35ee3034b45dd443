"""One entry point per modality: `create_vision_encoder`, `create_text_encoder`.

Modelled on timm's `create_model`.

Overrides that are None are dropped, so unset flags keep the spec's defaults.
Keyword overrides named like a spec field (`revision`, `checkpoint`,
`preprocessing`, `trust_remote_code`, `model_class`) change the spec; any
other keyword goes to the model constructor / `from_pretrained` (config
overrides such as `mask_ratio`, timm kwargs such as `img_size`, or a
control's parameters) and is recorded in the manifest.
Heavy libraries are imported only here, when an encoder is built.
"""

from __future__ import annotations

import os
from typing import Any

from alignprobe.errors import ValidationError

from .hub import check_available
from .registry import lookup
from .resolve import WrongModalityError, resolve_spec
from .spec import POOLINGS, EncoderSpec, Preprocessing
from .devices import resolve_device, resolve_dtype
from .hf_common import import_string

# (modality, backend) -> "module:function" building the encoder (lm-eval style lazy loading).
LOADERS = {
    ("vision", "transformers"): "alignprobe.backbones.hf_vision:load",
    ("vision", "timm"): "alignprobe.backbones.timm_vision:load",
    ("text", "transformers"): "alignprobe.backbones.hf_text:load",
    ("text", "sentence-transformers"): "alignprobe.backbones.st_text:load",
}
SPEC_OVERRIDES = ("revision", "checkpoint", "preprocessing", "trust_remote_code", "model_class")


def apply_overrides(spec: EncoderSpec, overrides: dict[str, Any]) -> EncoderSpec:
    """``spec`` with the factory overrides applied (`pooling`, `layer`, spec fields, model kwargs).

    Pops what it applies from ``overrides`` (pass a copy to keep yours)."""
    changes: dict[str, Any] = {}
    pooling = overrides.pop("pooling", None)
    if pooling is not None and pooling != spec.pooling:
        if spec.is_control and spec.pooling == "none":
            raise ValidationError(f"control {spec.name!r} takes no pooling (got {pooling!r})")
        if pooling not in POOLINGS[spec.modality]:
            raise ValidationError(
                f"pooling {pooling!r} is not valid for a {spec.modality} encoder; choose one of "
                f"{POOLINGS[spec.modality]}"
            )
        # the registered width belongs to the registered pooling; measure the new one
        changes.update(pooling=pooling, dim=None)
    layer = overrides.pop("layer", None)
    for key in ("prefix", "max_length"):
        if key in overrides:
            changes[key] = overrides.pop(key)
    for key in SPEC_OVERRIDES:
        if key in overrides:
            changes[key] = overrides.pop(key)
    if "preprocessing" in changes and isinstance(changes["preprocessing"], dict):
        changes["preprocessing"] = Preprocessing(**changes["preprocessing"])
    if "checkpoint" in changes:
        changes["checkpoint"] = os.path.abspath(
            os.path.expanduser(os.fspath(changes["checkpoint"]))
        )
        if spec.backend != "timm":
            raise ValidationError(
                f"checkpoint= is for timm encoders; {spec.name!r} loads with {spec.backend}"
            )
    if overrides:
        changes["model_kwargs"] = {**spec.kwargs, **overrides}
        if spec.dim is not None and "dim" not in changes:
            # architecture kwargs may change the width; measure it after loading
            changes["dim"] = None
    spec = spec.replace(**changes) if changes else spec
    # last, so that the `@N` name is built on the final spec
    return spec.with_layer(layer) if layer is not None else spec


def check_remote_code(spec: EncoderSpec, opted_in: bool = False) -> None:
    """Code from a model hub runs only at a registered, pinned commit, or when the user opts in.

    A registered remote-code entry (GTE v1.5, gte-Qwen2, NV-Embed-v2) pins its commit; any other
    revision of it, and any unregistered model that needs remote code, is refused unless
    ``trust_remote_code=True`` was given explicitly for this call.
    """
    if not spec.trust_remote_code or opted_in:
        return
    registered = lookup(spec.base_name)
    if (registered is not None and registered.trust_remote_code and registered.hub_id == spec.hub_id
            and registered.revision is not None and spec.revision == registered.revision):
        return
    where = (f"revision {spec.revision!r} instead of the pinned {registered.revision!r}"
             if registered is not None and registered.trust_remote_code and registered.hub_id == spec.hub_id
             else "no registered, pinned commit")
    raise ValidationError(
        f"{spec.name!r} runs model code from the hub ({where}); alignprobe runs remote code only at the "
        f"commits its registry pins. If you trust this code, pass trust_remote_code=True explicitly "
        f"(create_text_encoder / EncoderRequest.create)")


def _create(modality: str, name_or_path, device, dtype, overrides: dict[str, Any]):

    overrides = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(name_or_path, EncoderSpec):
        # an already resolved spec is used as is (no lossy round trip through its name)
        if name_or_path.modality != modality:
            raise WrongModalityError(
                f"{name_or_path.name!r} is a {name_or_path.modality} encoder, not a {modality} one"
            )
        spec = name_or_path
    else:
        spec = resolve_spec(name_or_path, modality)
    opted_in = overrides.get("trust_remote_code") is True
    spec = apply_overrides(spec, overrides)
    check_remote_code(spec, opted_in)
    check_available(spec)
    if spec.converter is not None and not spec.path:
        # packaged weights in a foreign format: converted once into a model directory
        spec = import_string(spec.converter)(spec)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    return import_string(builder_target(spec, modality))(spec, device=dev, dtype=dt)


def builder_target(spec: EncoderSpec, modality: str) -> str:
    """The "module:function" that builds `spec`'s encoder (named, not imported: the identity of
    an encoder that is not loaded reads it, `execution.planned_execution`)."""
    if spec.backend == "builtin":
        return spec.model_class
    target = LOADERS.get((modality, spec.backend))
    if target is None:
        raise ValidationError(f"no {modality} loader for source {spec.backend!r} ({spec.name!r})")
    return target


def create_vision_encoder(
    name_or_path,
    *,
    device: Any = "auto",
    dtype: Any = None,
    pooling: str | None = None,
    layer: int | None = None,
    **overrides: Any,
):
    """A frozen vision `Encoder` from a name, alias, `timm:`/`hf:` id, hub id, directory or spec.

    `layer=N` (or the name `NAME@N`) takes the features from block N instead of the last one
    (transformers `hidden_states[N]`, timm's N-th `forward_intermediates` output), pooled with
    the entry's pooling; the encoder is then named `NAME@N` and cached apart.

    `device="auto"` picks cuda, then mps, then cpu; `dtype` defaults to float16
    on cuda and float32 elsewhere ("fp32"/"fp16"/"bf16" or a torch dtype).
    Raises `UnknownEncoderError` for unknown names and `EncoderNotAvailableError`
    when the weights are neither local nor downloadable.
    """
    return _create(
        "vision", name_or_path, device, dtype, {"pooling": pooling, "layer": layer, **overrides}
    )


def create_text_encoder(
    name_or_path,
    *,
    device: Any = "auto",
    dtype: Any = None,
    pooling: str | None = None,
    prefix: str | None = None,
    max_length: int | None = None,
    **overrides: Any,
):
    """Build a frozen text `Encoder` (see `create_vision_encoder`); `prefix` is the instruction
    prepended to every string, `max_length` the truncation length in tokens."""
    return _create(
        "text",
        name_or_path,
        device,
        dtype,
        {"pooling": pooling, "prefix": prefix, "max_length": max_length, **overrides},
    )
