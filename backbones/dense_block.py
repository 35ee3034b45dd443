"""The segmentation variant of a ViT's last block, for dense (per-patch) features.

SAIL ``model/dinoforseg.py`` (``Dinov2EncoderForSegmentation``) replaces the last block of a
transformers DINOv2 when it segments: the block's self-attention may use query-query
similarities instead of query-key (``attetion_type='qq'``, the ClearCLIP / SCLIP idea: a
token attends to tokens that look like itself, so patch tokens stay local), and the MLP
branch with its residual may be skipped (``ignore_residual=True``; despite the name, the
first residual stays and the block's output is ``norm2(x + ls1 * attn(norm1(x)))``). The
model's final LayerNorm follows as usual. The reference's ``seg_eval.py`` calls it with
``'qk'`` and ``ignore_residual=False``, i.e. the unchanged block; the ClearCLIP baseline
config (``seg_configs/base_config.py``) sets ``ignore_residual=True``.

transformers has no switch for either change, so this module recomputes the block from its
own submodules (written by hand for that reason); it covers the DINOv2 layer layout
(``norm1``, ``attention``, ``layer_scale1``, ``norm2``, ``mlp``, ``layer_scale2``), in the
current (``q_proj``/``k_proj``/``v_proj``/``o_proj``) and the older
(``attention.attention.query`` ... ``attention.output.dense``) transformers spellings.
"""
from __future__ import annotations

import math

import torch

from alignprobe.errors import ValidationError

ATTENTION_KINDS = ("qk", "qq")


def check_last_block(attention: str, skip_mlp: bool) -> None:
    if attention not in ATTENTION_KINDS:
        raise ValidationError(f"last-block attention {attention!r} is not one of "
                              f"{', '.join(ATTENTION_KINDS)} (qk: the model's own; qq: "
                              "query-query, SAIL model/dinoforseg.py)")
    if not isinstance(skip_mlp, bool):
        raise ValidationError(f"skip_mlp must be True or False, got {skip_mlp!r}")


def is_standard(attention: str, skip_mlp: bool) -> bool:
    return attention == "qk" and not skip_mlp


def _projections(attn_module):
    """(query, key, value, output) linear layers and the head count of a DINOv2 attention."""
    if hasattr(attn_module, "q_proj"):
        return (attn_module.q_proj, attn_module.k_proj, attn_module.v_proj, attn_module.o_proj,
                attn_module.num_attention_heads)
    inner, out = getattr(attn_module, "attention", None), getattr(attn_module, "output", None)
    if inner is not None and out is not None and hasattr(inner, "query"):
        return (inner.query, inner.key, inner.value, out.dense, inner.num_attention_heads)
    raise ValidationError(f"{type(attn_module).__name__}: not a DINOv2-style attention (no "
                          "q_proj/k_proj/v_proj or attention.query/key/value)")


def _attention(attn_module, x: torch.Tensor, kind: str) -> torch.Tensor:
    q_lin, k_lin, v_lin, o_lin, heads = _projections(attn_module)
    n, t, _ = x.shape

    def split(y):
        return y.view(n, t, heads, -1).transpose(1, 2)  # (n, heads, t, head_dim)

    q, v = split(q_lin(x)), split(v_lin(x))
    k = q if kind == "qq" else split(k_lin(x))
    weights = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    return o_lin((weights @ v).transpose(1, 2).reshape(n, t, -1))


def _needs(layer, names, model_name: str) -> None:
    missing = [a for a in names if not hasattr(layer, a)]
    if missing:
        raise ValidationError(
            f"{model_name}: its blocks ({type(layer).__name__}) lack {', '.join(missing)}; the "
            "last-block change (qq attention / skipped MLP) is written for DINOv2-style blocks; "
            "use last_attention='qk' without skip_mlp for this encoder")


def modified_block(layer, x: torch.Tensor, *, attention: str, skip_mlp: bool,
                   model_name: str = "encoder") -> torch.Tensor:
    """One DINOv2 block on ``x`` (n, tokens, dim) with the reference's segmentation changes."""
    _needs(layer, ("norm1", "attention", "layer_scale1", "norm2", "mlp", "layer_scale2"),
           model_name)
    drop = getattr(layer, "drop_path", None) or getattr(layer, "drop_path1", None)
    drop = drop if drop is not None else (lambda y: y)
    h = drop(layer.layer_scale1(_attention(layer.attention, layer.norm1(x), attention))) + x
    if skip_mlp:
        return layer.norm2(h)
    return drop(layer.layer_scale2(layer.mlp(layer.norm2(h)))) + h


def dense_tokens(model, pixel_values: torch.Tensor, *, block: int | None, attention: str,
                 skip_mlp: bool, model_name: str = "encoder", **forward_kwargs) -> torch.Tensor:
    """The tokens of a transformers DINOv2 with block ``block`` (1-based; None = the last block,
    then the final LayerNorm, as ``last_hidden_state``) replaced by `modified_block`; with a
    block number the result is that block's output without the final norm, as
    ``hidden_states[block]``."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if layers is None:
        raise ValidationError(f"{model_name}: no encoder.layer list; the last-block change needs "
                              "a transformers ViT such as DINOv2")
    n_blocks = len(layers)
    k = n_blocks if block is None else int(block)
    if not 1 <= k <= n_blocks:
        raise ValidationError(f"{model_name}: block {k} does not exist (1..{n_blocks})")
    hidden = model(pixel_values=pixel_values, output_hidden_states=True,
                   **forward_kwargs).hidden_states
    out = modified_block(layers[k - 1], hidden[k - 1], attention=attention, skip_mlp=skip_mlp,
                         model_name=model_name)
    if block is None:
        norm = getattr(model, "layernorm", None)
        out = norm(out) if norm is not None else out
    return out
