"""Turn what a user typed (a name, alias, prefixed id, hub id or directory) into one `EncoderSpec`.

Order, first match wins:
1. a registered name or alias (case-insensitive);
2. an explicit source prefix: `hf:<id>[@rev]`, `timm:<model>`, `st:<id>[@rev]`, `local:<dir>`;
3. an existing local directory (its files say which library reads it);
4. a hub id that a registered spec of this modality points at (its curated pooling etc. apply);
5. any other `<org>/<name>` hub id, loaded with transformers.
Nothing is decided from substrings of model names.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from alignprobe.errors import UnknownEncoderError, ValidationError

from . import packaged
from .registry import list_encoders, lookup, unknown_encoder_error
from .spec import IMAGENET_MEAN, IMAGENET_STD, MODALITIES, EncoderSpec, Preprocessing

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_LAYER_SUFFIX = re.compile(r"^(.+)@(\d+)$")
_PREFIXES = {
    "hf": "transformers",
    "hf-hub": "transformers",
    "timm": "timm",
    "st": "sentence-transformers",
    "local": "local",
    "local-dir": "local",
}
# Defaults for encoders the registry knows nothing about: patch-mean is defined for every
# vision backbone (with or without a CLS token), mask-weighted mean for every text model.
GENERIC_POOLING = {"vision": "mean", "text": "mean"}


class WrongModalityError(UnknownEncoderError, ValidationError):
    """The name is a known encoder of the other modality (an unknown encoder of this one)."""


_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def resolve_spec(name_or_path: str | os.PathLike, modality: str) -> EncoderSpec:
    """The spec for a name, alias, `timm:`/`hf:`/`st:` id, hub id or local directory.

    Raises `UnknownEncoderError` (with close names) when nothing matches, and
    `ValidationError` when the name belongs to the other modality.
    """
    if modality not in MODALITIES:
        raise ValidationError(f"modality must be one of {MODALITIES}, got {modality!r}")
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValidationError(
            f"encoder name must be a non-empty string or path, got {name_or_path!r}"
        )
    name = name_or_path.strip()

    spec = lookup(name)
    if spec is not None:
        return _with_modality(_with_packaged(spec), modality)
    layered = _LAYER_SUFFIX.match(name)
    if layered and lookup(layered.group(1)) is not None:
        # NAME@N: a registered encoder's block N (hub ids keep `@revision`; they are not registered)
        spec = _with_modality(_with_packaged(lookup(layered.group(1))), modality)
        return spec.with_layer(int(layered.group(2)))

    prefix, sep, rest = name.partition(":")
    if sep and prefix.lower() in _PREFIXES and rest:
        return _from_prefix(prefix.lower(), rest.strip(), modality)

    path = Path(name).expanduser()
    if path.is_dir():
        return local_spec(path, modality)

    hub_id, revision = _split_revision(name)
    if _HUB_ID.match(hub_id):
        return _hub_spec(hub_id, revision, modality, name)

    if os.sep in name or name.startswith((".", "~")):
        raise UnknownEncoderError(
            f"{name!r} looks like a path, but no directory exists at {path.resolve()}"
        )
    raise unknown_encoder_error(name, modality)


def _as(modality: str) -> str:
    """How to pass an encoder as `modality`, for CLI users and API users alike."""
    return (f"(--{modality} NAME or --modality {modality} on the command line; "
            f"create_{modality}_encoder in Python)")


def _with_modality(spec: EncoderSpec, modality: str) -> EncoderSpec:
    if spec.modality != modality:
        raise WrongModalityError(
            f"{spec.name!r} is a {spec.modality} encoder, not a {modality} one; use it as a "
            f"{spec.modality} encoder " + _as(spec.modality)
        )
    return spec


def _with_packaged(spec: EncoderSpec) -> EncoderSpec:
    """Point a spec at weights shipped in an installed Python package, when there are some:
    a folder becomes its `path`, a weights file its `checkpoint` (a converter, if any, turns
    that file into a model directory when the encoder is built)."""
    if not spec.packaged or spec.path or spec.checkpoint:
        return spec
    if spec.checkpoint_filter is None and spec.converter is None:
        folder = packaged.packaged_dir(spec.packaged)  # a packaged model directory
        return spec.replace(path=str(folder)) if folder is not None else spec
    found = packaged.packaged_path(spec.packaged)  # a packaged weights file
    return spec.replace(checkpoint=str(found)) if found is not None and found.is_file() else spec


def _split_revision(ident: str) -> tuple[str, str | None]:
    repo, at, rev = ident.partition("@")
    return (repo, rev or None) if at else (ident, None)


def _registered_by_hub_id(hub_id: str, modality: str, source: str) -> EncoderSpec | None:
    for spec in list_encoders(modality):
        if spec.hub_id == hub_id and spec.backend == source:
            return _with_packaged(spec)
    return None


def _hub_spec(hub_id: str, revision: str | None, modality: str, typed: str) -> EncoderSpec:
    for source in ("transformers", "sentence-transformers", "timm"):
        known = _registered_by_hub_id(hub_id, modality, source)
        if known is not None:
            return known.replace(revision=revision) if revision else known
    other = "text" if modality == "vision" else "vision"
    for spec in list_encoders(other):
        if spec.hub_id == hub_id:
            _with_modality(
                spec, modality
            )  # raises: the hub id is a registered encoder of the other kind
    return EncoderSpec(
        name=f"hf:{hub_id}",
        modality=modality,
        source="transformers",
        hub_id=hub_id,
        revision=revision,
        pooling=GENERIC_POOLING[modality],
        notes=f"unregistered hub id (typed as {typed!r}); dim and preprocessing come from the "
        "model files",
    )


def _from_prefix(prefix: str, ident: str, modality: str) -> EncoderSpec:
    source = _PREFIXES[prefix]
    if source == "local":
        path = Path(ident).expanduser()
        if not path.is_dir():
            raise UnknownEncoderError(
                f"no directory exists at {path.resolve()} (from {prefix}:{ident})"
            )
        return local_spec(path, modality)
    if source == "timm":
        return timm_spec(ident, modality)
    hub_id, revision = _split_revision(ident)
    if not _HUB_ID.match(hub_id):
        raise UnknownEncoderError(
            f"{prefix}:{ident} is not a hub id of the form <org>/<name>[@revision]"
        )
    known = _registered_by_hub_id(hub_id, modality, source)
    if known is not None:
        return known.replace(revision=revision) if revision else known
    if source == "sentence-transformers":
        if modality != "text":
            raise WrongModalityError(
                f"st:{ident} is a sentence-transformers (text) model; use it as a text encoder " + _as("text")
            )
        return EncoderSpec(
            name=f"st:{hub_id}",
            modality="text",
            source=source,
            hub_id=hub_id,
            revision=revision,
            pooling="encode",
            notes="unregistered sentence-transformers model; pooled by its own pipeline",
        )
    return _hub_spec(hub_id, revision, modality, f"{prefix}:{ident}")


def timm_spec(model_name: str, modality: str) -> EncoderSpec:
    """A spec for any timm model name (`arch` or `arch.tag`), preprocessing from timm's metadata."""
    if modality != "vision":
        raise WrongModalityError(f"timm:{model_name} is a vision model; use it as a vision encoder " + _as("vision"))
    for spec in list_encoders("vision"):
        if spec.backend == "timm" and spec.hub_id == model_name:
            return spec
    import timm

    arch = model_name.split(".", 1)[0]
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        hint = f" Close timm names: {', '.join(close)}." if close else ""
        raise UnknownEncoderError(f"timm has no model named {arch!r}.{hint}")
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        tags = [n for n in timm.list_pretrained(f"{arch}.*")][:8]
        raise UnknownEncoderError(
            f"timm has no pretrained tag {model_name!r}."
            + (f" Available: {', '.join(tags)}." if tags else "")
        )
    return EncoderSpec(
        name=f"timm:{model_name}",
        modality="vision",
        source="timm",
        hub_id=model_name,
        pooling=GENERIC_POOLING["vision"],
        preprocessing=preprocessing_from_timm_cfg(cfg.to_dict()),
        license=cfg.license or "unknown",
        family=arch,
        notes="unregistered timm model",
    )


def preprocessing_from_timm_cfg(cfg: dict) -> Preprocessing:
    size = cfg.get("input_size") or (3, 224, 224)
    return Preprocessing(
        size=int(size[-1]),
        crop_pct=float(cfg.get("crop_pct") or 1.0),
        mean=tuple(cfg.get("mean") or IMAGENET_MEAN),
        std=tuple(cfg.get("std") or IMAGENET_STD),
        interpolation=cfg.get("interpolation") or "bicubic",
        crop_mode="squash" if cfg.get("crop_mode") == "squash" else "center",
    )


def hf_preprocessing_from_dir(folder: str | os.PathLike | None) -> Preprocessing | None:
    """Read `preprocessor_config.json` (a transformers image processor) into a `Preprocessing`."""
    if folder is None:
        return None
    f = Path(folder) / "preprocessor_config.json"
    if not f.is_file():
        return None
    return hf_preprocessing(json.loads(f.read_text()))


def _edge(value, *keys) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for k in keys:
            if value.get(k):
                return int(value[k])
    return None


def hf_preprocessing(cfg: dict) -> Preprocessing:
    """Map a transformers image-processor config onto resize / crop / normalise."""
    size = cfg.get("size", 224)
    crop = cfg.get("crop_size")
    interpolation = _PIL_RESAMPLE.get(cfg.get("resample", 3), "bicubic")
    if cfg.get("do_normalize", True):
        mean, std = (
            tuple(cfg.get("image_mean") or IMAGENET_MEAN),
            tuple(cfg.get("image_std") or IMAGENET_STD),
        )
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    shortest = _edge(size, "shortest_edge")
    if cfg.get("do_center_crop") and crop is not None:
        out = _edge(crop, "height", "width") or 224
        short = shortest or _edge(size, "height", "width") or out
        return Preprocessing(out, min(1.0, out / short), mean, std, interpolation, "center")
    if shortest is not None:
        return Preprocessing(shortest, 1.0, mean, std, interpolation, "center")
    return Preprocessing(
        _edge(size, "height", "width") or 224, 1.0, mean, std, interpolation, "squash"
    )


def detect_local_format(path: Path) -> str:
    """Which library reads a model directory: modules.json -> sentence-transformers;
    config.json naming an "architecture" (timm's export) -> timm; config.json -> transformers."""
    if (path / "modules.json").is_file():
        return "sentence-transformers"
    cfg_file = path / "config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text())
        except ValueError as exc:
            raise ValidationError(f"{cfg_file} is not valid JSON: {exc}") from None
        if isinstance(cfg, dict) and ("architecture" in cfg or "pretrained_cfg" in cfg):
            return "timm"
        return "transformers"
    raise UnknownEncoderError(
        f"{path} is a directory but not a model directory: expected modules.json "
        "(sentence-transformers), "
        f"or config.json (transformers, or timm's export with an 'architecture' key)"
    )


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model")
_VISION_CONFIG_KEYS = ("image_size", "patch_size", "vision_config", "num_channels")


def _check_transformers_modality(path: Path, modality: str) -> None:
    """Refuse a directory whose files clearly say it is a model of the other modality.

    A tokenizer without an image processor or image-size settings means text; an image processor
    or image settings without a tokenizer means vision; both (CLIP-like) allow either.
    """
    has_text = any((path / f).is_file() for f in _TOKENIZER_FILES)
    cfg = json.loads((path / "config.json").read_text())
    has_vision = (path / "preprocessor_config.json").is_file() or (
        isinstance(cfg, dict) and any(k in cfg for k in _VISION_CONFIG_KEYS)
    )
    if modality == "vision" and has_text and not has_vision:
        raise WrongModalityError(
            f"{path} holds a text model (tokenizer files, no image settings); "
            f"use it as a text encoder " + _as("text")
        )
    if modality == "text" and has_vision and not has_text:
        raise WrongModalityError(
            f"{path} holds a vision model (image settings, no tokenizer); use it as a vision encoder " + _as("vision")
        )


def local_spec(path: Path, modality: str) -> EncoderSpec:
    """A spec for a local model directory."""
    path = path.resolve()
    fmt = detect_local_format(path)
    preprocessing = None
    pooling = GENERIC_POOLING[modality]
    if fmt == "sentence-transformers":
        if modality != "text":
            raise WrongModalityError(
                f"{path} holds a sentence-transformers (text) model; use it as a text encoder " + _as("text")
            )
        pooling = "encode"
    elif fmt == "timm":
        if modality != "text":
            cfg = json.loads((path / "config.json").read_text())
            preprocessing = preprocessing_from_timm_cfg(cfg.get("pretrained_cfg", cfg))
        else:
            raise WrongModalityError(
                f"{path} holds a timm (vision) model; use it as a vision encoder " + _as("vision")
            )
    else:
        _check_transformers_modality(path, modality)
        if modality == "vision":
            preprocessing = hf_preprocessing_from_dir(path)
    return EncoderSpec(
        name=str(path),
        modality=modality,
        source="local",
        local_format=fmt,
        path=str(path),
        pooling=pooling,
        preprocessing=preprocessing,
        notes=f"local {fmt} directory",
    )
