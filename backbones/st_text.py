"""Text encoders loaded with sentence-transformers (all-mpnet, all-MiniLM, sentence-T5, `st:` ids).

Pooling `encode` is the model's whole pipeline (`SentenceTransformer.encode`:
its own pooling, dense layers, normalisation). Poolings `mean` / `cls` /
`last` take the token embeddings of the same forward pass (after the model's
own tokenization and truncation) and pool them here in float32, unnormalised.
The instruction prefix is prepended to each string in `preprocess`.
Layer features (`NAME@N`) pool `hidden_states[N]` of the pipeline's transformers
model (its first module) the same way: N = 0 the embeddings, N = L the last block.
"""

from __future__ import annotations

import inspect

import torch

from alignprobe.console import quiet_loading
from alignprobe.errors import ValidationError

from .encoder import Encoder
from .hf_common import resolved_commit, versions
from .hf_text import pool_hidden_states
from .hub import describe_load_failure, hf_location, load_errors
from .pooling import pool_text
from .spec import EncoderSpec
from .transforms import TextPassthrough


class STTextEncoder(Encoder):
    def __init__(self, spec: EncoderSpec, model, *, device, dtype, revision=None):
        if spec.max_length is not None:
            model.max_seq_length = spec.max_length
        else:
            spec = spec.replace(max_length=model.max_seq_length)
        super().__init__(spec, TextPassthrough(prefix=spec.prefix), device=device, dtype=dtype)
        self.model = model.to(device=device, dtype=dtype)
        self.model.eval()
        self.resolved_revision = revision
        self.library_versions.update(versions("sentence_transformers", "transformers"))
        self._finish()

    def _forward(self, batch) -> torch.Tensor:
        texts = list(batch)
        if self.spec.pooling == "encode":
            out = self.model.encode(
                texts,
                batch_size=len(texts),
                convert_to_tensor=True,
                show_progress_bar=False,
                normalize_embeddings=False,
                device=str(self.device),
            )
            return out.float()
        features = self.model.preprocess(texts)
        features = {
            k: (v.to(self.device) if isinstance(v, torch.Tensor) else v)
            for k, v in features.items()
        }
        out = self.model.forward(features)
        return pool_text(out["token_embeddings"], out["attention_mask"], self.spec.pooling)

    # -- layer-wise features ------------------------------------------------------------------
    def _transformer(self):
        """The transformers model inside the pipeline's first module, or a clear error."""
        first = self.model[0] if len(self.model) else None
        auto = getattr(first, "auto_model", None)
        if auto is None or not callable(auto):
            raise ValidationError(
                f"{self.spec.name}: the sentence-transformers pipeline does not start with a transformers "
                f"model ({type(first).__name__}), so it has no layer features; load a transformers model "
                "(hf:<id>) to choose a layer")
        return auto

    @property
    def num_layers(self) -> int | None:
        """The number of blocks (layers 1..num_layers; 0 is the embeddings), from the config."""
        return getattr(self._transformer().config, "num_hidden_layers", None)

    def _forward_layers(self, batch, layers: list[int]) -> dict[int, torch.Tensor]:
        """Pool `hidden_states[n]` of the pipeline's transformers model (after the pipeline's own
        tokenization), with the entry's pooling: the last layer is the `token_embeddings` that
        `_forward` pools, n = 0 the embeddings output (the vision encoders' count)."""
        if self.spec.pooling == "encode":
            raise ValidationError(
                f"{self.spec.name}: pooling 'encode' is the whole sentence-transformers pipeline; for "
                "layer features use pooling 'mean', 'cls' or 'last'")
        auto = self._transformer()
        features = self.model.preprocess(list(batch))
        accepted = inspect.signature(auto.forward).parameters
        inputs = {k: v.to(self.device) for k, v in features.items()
                  if isinstance(v, torch.Tensor) and k in accepted}
        hidden = auto(**inputs, output_hidden_states=True, return_dict=True).hidden_states
        return pool_hidden_states(hidden, inputs["attention_mask"], layers, self.spec)


def load(spec: EncoderSpec, *, device, dtype) -> STTextEncoder:
    from sentence_transformers import SentenceTransformer

    src, kwargs = hf_location(spec)
    st_kwargs = {"local_files_only": kwargs.get("local_files_only", False)}
    if not spec.path:
        st_kwargs.update(cache_folder=kwargs["cache_dir"], revision=spec.revision)
    if spec.kwargs:
        st_kwargs["model_kwargs"] = spec.kwargs
    try:
        with quiet_loading():  # no "Loading weights" bars in the output
            model = SentenceTransformer(
                src, device="cpu", trust_remote_code=spec.trust_remote_code, **st_kwargs
            )
    except load_errors() as exc:
        raise describe_load_failure(spec, exc) from None
    return STTextEncoder(spec, model, device=device, dtype=dtype, revision=resolved_commit(spec))
