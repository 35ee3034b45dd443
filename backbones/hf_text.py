"""Text encoders loaded with transformers (GTE, gte-Qwen2, BGE, E5, NV-Embed-v2, any `hf:` id).

Poolings `mean` / `cls` / `last` tokenize in the preprocessor (workers) and
pool `last_hidden_state` here in float32. Pooling `encode` calls the model's
own `encode(texts, instruction=prefix, max_length=...)` (NV-Embed-v2's remote
code): the instruction goes to the model, which keeps it out of its pooling,
so the preprocessor leaves the strings untouched.

Layer features (`NAME@N`, `layer=N`) pool `hidden_states[N]` with the entry's
pooling, counted as the vision encoders count: N = 0 the embeddings output,
N = L (the number of blocks) the last block.
"""

from __future__ import annotations

import torch

from alignprobe.errors import ValidationError

from .encoder import Encoder
from .hf_common import load_pretrained, load_tokenizer, versions
from .pooling import pool_text
from .spec import EncoderSpec
from .transforms import TextPassthrough, TokenizerPreprocessor

# Tokenizers report this when they do not know their limit.
_NO_LIMIT = 100_000


def model_max_length(tokenizer, config) -> int | None:
    limits = []
    tl = getattr(tokenizer, "model_max_length", None)
    if isinstance(tl, int) and 0 < tl < _NO_LIMIT:
        limits.append(tl)
    pl = getattr(config, "max_position_embeddings", None)
    if isinstance(pl, int) and 0 < pl < _NO_LIMIT:
        limits.append(pl)
    return min(limits) if limits else None


class HFTextEncoder(Encoder):
    def __init__(
        self, spec: EncoderSpec, model, tokenizer, *, device, dtype, revision=None, notes=()
    ):
        if spec.pooling == "encode":
            if not callable(getattr(model, "encode", None)):
                raise ValidationError(
                    "pooling 'encode' needs a model with its own encode() method (remote code "
                    f"such as NV-Embed-v2); {spec.name!r} has none: use 'mean', 'cls' or 'last'"
                )
            preprocessor = TextPassthrough(prefix="")
        else:
            limit = model_max_length(tokenizer, model.config)
            max_length = spec.max_length if spec.max_length is not None else limit
            if limit is not None and max_length is not None and max_length > limit:
                max_length = limit
            spec = spec.replace(max_length=max_length)
            preprocessor = TokenizerPreprocessor(
                tokenizer, prefix=spec.prefix, max_length=max_length
            )
        super().__init__(spec, preprocessor, device=device, dtype=dtype)
        self.model = model.to(device)
        self.resolved_revision = revision
        self.load_notes.extend(notes)
        self.library_versions.update(versions("transformers", "tokenizers"))
        self._finish()

    def _forward(self, batch) -> torch.Tensor:
        if self.spec.pooling == "encode":
            kwargs = {"instruction": self.spec.prefix}
            if self.spec.max_length is not None:
                kwargs["max_length"] = self.spec.max_length
            out = self.model.encode(list(batch), **kwargs)
            return torch.as_tensor(out).float()
        inputs = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model(**inputs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return pool_text(hidden, inputs["attention_mask"], self.spec.pooling)

    # -- layer-wise features ------------------------------------------------------------------
    @property
    def num_layers(self) -> int | None:
        """The number of blocks (layers 1..num_layers; 0 is the embeddings), from the config."""
        return getattr(self.model.config, "num_hidden_layers", None)

    def _forward_layers(self, batch, layers: list[int]) -> dict[int, torch.Tensor]:
        """Pool `hidden_states[n]` of one forward pass with the entry's pooling for each requested n
        (n = 0: the embeddings output; n = L: the last block, as the vision encoders count)."""
        if self.spec.pooling == "encode":
            raise ValidationError(
                f"{self.spec.name}: pooling 'encode' is the model's own encode() on its last layer; "
                "for layer features use pooling 'mean', 'cls' or 'last'")
        inputs = {k: v.to(self.device) for k, v in batch.items()}
        hidden = self.model(**inputs, output_hidden_states=True).hidden_states
        return pool_hidden_states(hidden, inputs["attention_mask"], layers, self.spec)


def pool_hidden_states(hidden, attention_mask, layers: list[int], spec: EncoderSpec) -> dict[int, torch.Tensor]:
    """`{n: pool_text(hidden[n])}`; a clear error for a missing `hidden_states` or a layer too deep."""
    if hidden is None:
        raise ValidationError(f"{spec.name}: the model returns no hidden_states, so it has no layer features")
    too_deep = [n for n in layers if n >= len(hidden)]
    if too_deep:
        raise ValidationError(
            f"{spec.base_name} has {len(hidden) - 1} blocks; layer {too_deep[0]} does not exist "
            f"(choose 0..{len(hidden) - 1}; 0 is the token embeddings)")
    return {n: pool_text(hidden[n], attention_mask, spec.pooling) for n in layers}


def load(spec: EncoderSpec, *, device, dtype) -> HFTextEncoder:
    model, revision, notes = load_pretrained(spec, dtype=dtype)
    tokenizer = load_tokenizer(spec) if spec.pooling != "encode" else None
    return HFTextEncoder(
        spec, model, tokenizer, device=device, dtype=dtype, revision=revision, notes=notes
    )
