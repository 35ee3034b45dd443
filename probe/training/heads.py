"""Alignment heads: the small trainable networks that map frozen encoder features
into a shared image-text space (SAIL, Zhang et al., CVPR 2025, Sec. 3 and 4).

Each head is ``LayerNorm(in_dim)`` followed by a mapping network:

* ``linear``   -- ``Linear(d, out)``; the alignment *probe* of the paper.
* ``mlp``      -- ``Linear(d, 4d) - GELU - Linear(4d, out)``.
* ``star``     -- the GLU-style "star" block of the SAIL training recipe:
  ``x1 = W1 x + b1``, ``x2 = W2 x + b2`` (both ``Linear(d, w*d)``),
  ``Linear(w*d, out)(ReLU6(x1) * x2)``, width factor ``w`` (default 8).
* ``identity`` -- no parameters, no LayerNorm: the features pass through
  unchanged (ShareLock-style: the vision side stays in its own space and only
  the text side learns). LayerNorm is left out on purpose: with its learnable
  affine it would no longer be the identity, and a fixed (non-affine) one would
  re-centre the features and so change the cosine geometry the baseline is
  meant to keep. ``out_dim`` must equal ``in_dim``.

Weights are Xavier-uniform, biases zero, LayerNorm gain one and bias zero, as in
the SAIL reference code.

`AlignmentModel` holds one head per modality plus the learnable logit scale
``t`` (log space) and bias ``b`` of the sigmoid loss:
``logits = exp(t) * normalize(text) @ normalize(image).T + b``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alignprobe.errors import ValidationError

HEAD_KINDS = ("linear", "mlp", "star", "identity")
MLP_EXPANSION = 4
# exp(t) is clamped to [1, 100] as in CLIP/SigLIP: beyond 100 the logits of a
# cosine similarity saturate and training becomes unstable.
LOGIT_SCALE_MAX = math.log(100.0)


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValidationError(f"{name} must be a positive int, got {value!r}")
    return value


class StarBlock(nn.Module):
    """``Linear(w*d, out)(ReLU6(W1 x + b1) * (W2 x + b2))``.

    Both branches live in one fused ``Linear(d, 2*w*d)`` (``fc_in``) because a
    single wide GEMM runs faster than two narrow ones; rows ``[0, w*d)`` of its
    weight are branch 1 (the gated ReLU6 branch), rows ``[w*d, 2*w*d)`` branch 2.
    Mathematically it is the two-branch block of the paper.
    """

    def __init__(self, in_dim: int, out_dim: int, width: int = 8):
        super().__init__()
        self.hidden = width * in_dim
        self.fc_in = nn.Linear(in_dim, 2 * self.hidden)
        self.act = nn.ReLU6()
        self.fc_out = nn.Linear(self.hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.fc_in(x).split(self.hidden, dim=-1)
        return self.fc_out(self.act(x1) * x2)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # Xavier bounds depend on fan-out, so each branch is initialised as the
        # separate Linear(d, w*d) of the paper, not as one Linear(d, 2*w*d).
        w1, w2 = self.fc_in.weight.split(self.hidden, dim=0)
        nn.init.xavier_uniform_(w1)
        nn.init.xavier_uniform_(w2)
        nn.init.zeros_(self.fc_in.bias)
        nn.init.xavier_uniform_(self.fc_out.weight)
        nn.init.zeros_(self.fc_out.bias)


class AlignmentHead(nn.Module):
    """LayerNorm + mapping network from one encoder's features into the shared space.

    Args:
        in_dim: feature size of the frozen encoder.
        out_dim: size of the shared space (must equal ``in_dim`` for ``identity``).
        kind: ``"linear"``, ``"mlp"``, ``"star"`` or ``"identity"``.
        width: width factor ``w`` of the ``star`` head (ignored otherwise).

    ``forward(x)``: ``(..., in_dim)`` -> ``(..., out_dim)``, *not* normalised.
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear", width: int = 8):
        super().__init__()
        self.in_dim = _check_positive_int("in_dim", in_dim)
        self.out_dim = _check_positive_int("out_dim", out_dim)
        self.width = _check_positive_int("width", width)
        if kind not in HEAD_KINDS:
            raise ValidationError(f"kind must be one of {HEAD_KINDS}, got {kind!r}")
        self.kind = kind
        if kind == "identity":
            if in_dim != out_dim:
                raise ValidationError(
                    f"an identity head keeps the encoder's space, so out_dim must equal "
                    f"in_dim ({in_dim}), got {out_dim}; use kind='linear' to project"
                )
            self.norm: nn.Module = nn.Identity()
            self.net: nn.Module = nn.Identity()
        else:
            self.norm = nn.LayerNorm(in_dim)
            if kind == "linear":
                self.net = nn.Linear(in_dim, out_dim)
            elif kind == "mlp":
                self.net = nn.Sequential(
                    nn.Linear(in_dim, MLP_EXPANSION * in_dim),
                    nn.GELU(),
                    nn.Linear(MLP_EXPANSION * in_dim, out_dim),
                )
            else:
                self.net = StarBlock(in_dim, out_dim, width)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if isinstance(self.norm, nn.LayerNorm):
            nn.init.ones_(self.norm.weight)
            nn.init.zeros_(self.norm.bias)
        if isinstance(self.net, StarBlock):
            self.net.reset_parameters()
            return
        for module in self.net.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def check_features(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` itself, once its last dimension is known to be ``in_dim``."""
        if x.shape[-1] != self.in_dim:
            raise ValidationError(
                f"{self.kind} head expects features of size {self.in_dim}, got shape "
                f"{tuple(x.shape)}; check that the embeddings come from the encoder "
                f"the head was built for"
            )
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(self.check_features(x)))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}, kind={self.kind!r}, width={self.width}"


class AlignmentModel(nn.Module):
    """An image head, a text head and the logit scale/bias of the sigmoid loss.

    Args:
        image_dim, text_dim: feature sizes of the frozen vision/text encoders.
        out_dim: size of the shared space (2048 for the probe, 1024 for SAIL).
        image_head, text_head: head kinds, see `AlignmentHead`.
        width: star width factor.
        logit_scale_init: initial ``t``; the multiplier is ``exp(t)`` (default log 20).
        logit_bias_init: initial ``b`` (default -10).

    ``forward(image, text)`` returns the raw (unnormalised) head outputs
    ``(N, out_dim)``, ``(M, out_dim)`` -- what `sigmoid_loss` takes;
    ``encode_image`` / ``encode_text`` return L2-normalised outputs.
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        out_dim: int = 2048,
        image_head: str = "linear",
        text_head: str = "linear",
        width: int = 8,
        logit_scale_init: float = math.log(20.0),
        logit_bias_init: float = -10.0,
    ):
        super().__init__()
        for name, value in (("logit_scale_init", logit_scale_init), ("logit_bias_init", logit_bias_init)):
            if not math.isfinite(float(value)):
                raise ValidationError(f"{name} must be a finite float, got {value!r}")
        self.image_head = AlignmentHead(image_dim, out_dim, image_head, width)
        self.text_head = AlignmentHead(text_dim, out_dim, text_head, width)
        self.logit_scale_init = float(logit_scale_init)
        self.logit_bias_init = float(logit_bias_init)
        self.logit_scale = nn.Parameter(torch.tensor(self.logit_scale_init))
        self.logit_bias = nn.Parameter(torch.tensor(self.logit_bias_init))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image_head(image), self.text_head(text)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, image_dim)`` -> L2-normalised ``(N, out_dim)``."""
        return F.normalize(self.image_head(x), dim=-1)

    def encode_text(self, x: torch.Tensor) -> torch.Tensor:
        """``(M, text_dim)`` -> L2-normalised ``(M, out_dim)``."""
        return F.normalize(self.text_head(x), dim=-1)

    def logits(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """``(M, N)`` logits of normalised text rows against normalised image columns."""
        return self.logit_scale.exp() * text_emb @ image_emb.T + self.logit_bias

    @torch.no_grad()
    def clamp_(self) -> "AlignmentModel":
        """Keep ``exp(t)`` within [1, 100]; call after every optimizer step."""
        self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)
        return self

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-serialisable; ``AlignmentModel(**config())`` rebuilds it."""
        return {
            "image_dim": self.image_head.in_dim,
            "text_dim": self.text_head.in_dim,
            "out_dim": self.image_head.out_dim,
            "image_head": self.image_head.kind,
            "text_head": self.text_head.kind,
            "width": self.image_head.width,
            "logit_scale_init": self.logit_scale_init,
            "logit_bias_init": self.logit_bias_init,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AlignmentModel":
        return cls(**config)
