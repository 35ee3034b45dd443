"""`EncoderRequest`: the one identity of an encoder, as the user asked for it.

An encoder is named by what was asked -- modality, name (registry name,
alias, ``NAME@N``, ``hf:``/``timm:`` id, hub id or local directory) and every
factory override that changes its features (pooling, layer, revision, prefix,
preprocessing, model kwargs, ...). The encoder pool, the embedding-cache
memo, result records, a trained model's ``aligned.json`` and `load_aligned`
all use this one object, so a model trained on block 8 reloads block 8.

``key()`` hashes the *resolved* spec, so a name and its alias (``dinov2`` and
``dinov2-b``), or ``NAME@8`` and ``NAME`` with ``layer=8``, share one key;
``to_dict()`` keeps what the user typed, so a record reads as it was asked.
Pure Python: resolving a name loads no model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from alignprobe.errors import UnknownEncoderError, ValidationError
from alignprobe.hashing import stable_hash

from .factory import apply_overrides, create_text_encoder, create_vision_encoder
from .resolve import resolve_spec
from .spec import MODALITIES, EncoderSpec

#: Bumped when what `key()` hashes changes (old memos then simply miss).
REQUEST_FORMAT = 1
_FIELDS = ("modality", "name", "pooling", "layer", "revision", "options")
# Spec fields that describe an entry without changing its features (documentation, the
# names it answers to): left out of `key()`, so editing a note does not orphan a cache.
_DESCRIPTIVE = frozenset({"family", "params_m", "license", "notes", "aliases", "dim"})


def _layer(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"layer must be a block index >= 0 (or None for the last block), got {value!r}")
    return value


def _frozen(value: Any) -> Any:
    """JSON-like values as hashable, order-independent tuples (a frozen dataclass must hash)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "to_dict"):  # e.g. a `Preprocessing`
        return _frozen(value.to_dict())
    raise ValidationError(f"encoder option value {value!r} ({type(value).__name__}) is not JSON-like; "
                          f"give strings, numbers, booleans, lists or mappings")


def _thawed(value: Any) -> Any:
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str)
                                                  for v in value):
        return {k: _thawed(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    return value


@dataclass(frozen=True)
class EncoderRequest:
    """One encoder as asked for: ``modality``, ``name`` and the overrides that change its features.

    Build one with `EncoderRequest.create(modality, name, pooling=..., layer=..., **options)`
    (None values are unset, a local directory becomes absolute). ``options`` holds
    every other factory override (``prefix``, ``max_length``, ``preprocessing``,
    ``checkpoint``, model kwargs) as sorted pairs.
    """

    modality: str
    name: str
    pooling: str | None = None
    layer: int | None = None
    revision: str | None = None
    options: tuple = field(default=())

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValidationError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValidationError(f"encoder name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "layer", _layer(self.layer))
        for what in ("pooling", "revision"):
            value = getattr(self, what)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValidationError(f"{what} must be a non-empty string or None, got {value!r}")
        options = self.options
        if isinstance(options, Mapping):
            options = {k: v for k, v in options.items() if v is not None}
        object.__setattr__(self, "options", _frozen(dict(options)) if options else ())

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, modality: str, name: str | os.PathLike, *, pooling: str | None = None,
               layer: int | None = None, revision: str | None = None, **options: Any) -> "EncoderRequest":
        """A request from factory-style arguments; a local directory is recorded as an absolute path."""
        if isinstance(name, os.PathLike):
            name = os.fspath(name)
        if isinstance(name, str):
            path = Path(name.strip()).expanduser()
            if name.strip() and path.is_dir() and not name.strip().startswith(("hf:", "timm:", "st:")):
                name = str(path.resolve())
        return cls(modality, name, pooling, layer, revision, options)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EncoderRequest":
        """The inverse of `to_dict` (unknown keys are an error: a record of another version, say)."""
        if not isinstance(data, Mapping):
            raise ValidationError(f"an encoder request must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS) - {"key", "format"})
        if unknown:
            raise ValidationError(f"unknown encoder-request field(s) {unknown}; known: {list(_FIELDS)}")
        if "modality" not in data or "name" not in data:
            raise ValidationError(f"an encoder request needs 'modality' and 'name', got {dict(data)!r}")
        return cls(data["modality"], data["name"], data.get("pooling"), data.get("layer"), data.get("revision"),
                   data.get("options") or {})

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; ``key`` is included for readers, `from_dict` ignores it."""
        return {"modality": self.modality, "name": self.name, "pooling": self.pooling, "layer": self.layer,
                "revision": self.revision, "options": _thawed(self.options) if self.options else {},
                "key": self.key()}

    def replace(self, **changes: Any) -> "EncoderRequest":
        values = {"modality": self.modality, "name": self.name, "pooling": self.pooling, "layer": self.layer,
                  "revision": self.revision, "options": self.option_dict()}
        values.update(changes)
        return EncoderRequest(**values)

    # ------------------------------------------------------------------ facts
    def option_dict(self) -> dict[str, Any]:
        return _thawed(self.options) if self.options else {}

    def overrides(self) -> dict[str, Any]:
        """The factory keyword arguments this request stands for (unset ones left out)."""
        out = {"pooling": self.pooling, "layer": self.layer, "revision": self.revision, **self.option_dict()}
        return {k: v for k, v in out.items() if v is not None}

    def spec(self) -> EncoderSpec:
        """The resolved registry spec with the overrides applied (no model is loaded).

        Raises `UnknownEncoderError` naming this request when its name no longer
        resolves (an unregistered name, a directory that was moved)."""
        try:
            return apply_overrides(resolve_spec(self.name, self.modality), self.overrides())
        except UnknownEncoderError as err:
            raise type(err)(f"cannot resolve the {self.modality} encoder {self.label!r}: {err}") from None

    def key(self) -> str:
        """A stable hash of the encoder's features' identity: equal for a name and its alias.

        Computed once per request (the pool asks for it on every lookup, and resolving a local
        directory reads its config files); kept outside the fields, so equality is unchanged."""
        cached = self.__dict__.get("_key")
        if cached is None:
            spec = self.spec()
            features = {f.name: repr(getattr(spec, f.name)) for f in fields(spec) if f.name not in _DESCRIPTIVE}
            cached = stable_hash({"format": REQUEST_FORMAT, "spec": features}, length=16)
            object.__setattr__(self, "_key", cached)
        return cached

    @property
    def label(self) -> str:
        """A short display name: ``NAME``, ``NAME@N``, with a non-default pooling in brackets."""
        name = self.name if self.layer is None else f"{self.name}@{self.layer}"
        return name if self.pooling is None else f"{name}[{self.pooling}]"

    # ------------------------------------------------------------------ building
    def build(self, *, device: Any = "auto", dtype: Any = None, trust_remote_code: bool = False):
        """The frozen `Encoder` this request names (loads the weights). ``trust_remote_code``: the caller's
        opt-in to model code the registry does not pin (`check_remote_code`); not part of the identity."""
        factory = create_vision_encoder if self.modality == "vision" else create_text_encoder
        opt_in = {"trust_remote_code": True} if trust_remote_code else {}
        return factory(self.name, device=device, dtype=dtype, **{**self.overrides(), **opt_in})

    def __str__(self) -> str:
        return self.label
