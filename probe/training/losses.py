"""Contrastive losses for alignment heads: the sigmoid (SigLIP) loss and InfoNCE.

Both take the heads' *raw* outputs and L2-normalise them here, and both exist in
two exact forms:

* ``chunk_size=None`` -- the naive full ``M x N`` logit matrix through plain
  autograd (the reference; memory grows as ``M * N``);
* ``chunk_size=c`` -- the logits are computed in ``c x c`` tiles by a custom
  `torch.autograd.Function`, so only a few tiles are alive at once. Plain
  autograd cannot do this: it would keep every tile for the backward pass.

The sigmoid loss's tiles compute their gradient contributions in the forward
pass (they are fully known there: a tile's gradient depends only on its own
logits), so forward + backward costs the same three GEMMs per tile as the
naive loss; only O((N + M) * d) gradient buffers are kept between the passes.
It also normalises the raw features slice by slice as the tiles need them and
turns its buffers into the raw features' gradients in place, so besides its
inputs it holds those two buffers and a few tiles, nothing else of size
``(N + M) * d`` (at the probe's batch of 32,768 x 2,048: 0.5 GiB instead of 2).
InfoNCE needs the row/column log-sum-exps of the whole matrix before any tile's
gradient is known, so its backward recomputes each tile instead.

Orientation: logits are ``scale * normalize(text) @ normalize(image).T + bias``,
text rows against image columns, as in the SAIL reference.

Generality, for multi-caption data and for the distributed (all-gather) loss:
the ``pairwise_*`` functions take any text set ``(M, d)`` and a
``positive_index`` of shape ``(M,)`` naming each text's positive image column
(``-1``: the text is a negative for every image). Extra captions, texts
gathered from other ranks (``negative_text_features``), and captions that
share an image all reduce to this form.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

from alignprobe.errors import ValidationError

TextSet = Union[torch.Tensor, Sequence[torch.Tensor], None]
NORMALIZATIONS = ("n2", "n")
#: The dtypes the sigmoid loss's matrix products may run in (None: the compute dtype).
MATMUL_DTYPES = (None, torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------- validation


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # The loss runs in at least fp32 even for fp16/bf16 heads: a sum over N^2
    # sigmoid terms is not accurate in half precision. fp64 stays fp64.
    return torch.promote_types(x.dtype, torch.float32)


def _as_scalar(name: str, value, like: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(value):
        value = torch.tensor(float(value))
    if value.numel() != 1:
        raise ValidationError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
    return value.reshape(()).to(device=like.device, dtype=_compute_dtype(like))


def _check_matrix(name: str, x, d: int | None = None) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise ValidationError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValidationError(f"{name} must have shape (rows > 0, dim), got {tuple(x.shape)}")
    if d is not None and x.shape[1] != d:
        raise ValidationError(
            f"{name} has feature size {x.shape[1]} but the image features have {d}; "
            f"both sides must be projected into the same space"
        )
    return x


def _check_chunk(chunk_size) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValidationError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
    return chunk_size


def _check_positive_index(positive_index, m: int, n: int, device) -> torch.Tensor:
    if not torch.is_tensor(positive_index):
        positive_index = torch.as_tensor(positive_index)
    if positive_index.shape != (m,) or positive_index.dtype not in (torch.int32, torch.int64):
        raise ValidationError(
            f"positive_index must be an integer tensor of shape ({m},), got "
            f"{positive_index.dtype} {tuple(positive_index.shape)}"
        )
    positive_index = positive_index.to(device=device, dtype=torch.long)
    if m and (int(positive_index.min()) < -1 or int(positive_index.max()) >= n):
        raise ValidationError(f"positive_index values must lie in [-1, {n - 1}] (-1: no positive)")
    return positive_index


def _extra_blocks(extra_text_features: TextSet, n: int, d: int) -> list[torch.Tensor]:
    """Normalise the accepted forms -- None, (N, d), (K, N, d), a list of (N, d) -- to a list."""
    if extra_text_features is None:
        return []
    if torch.is_tensor(extra_text_features):
        if extra_text_features.ndim == 2:
            blocks = [extra_text_features]
        elif extra_text_features.ndim == 3:
            blocks = list(extra_text_features.unbind(0))
        else:
            raise ValidationError(
                f"extra_text_features must be (N, d), (K, N, d) or a list of (N, d) tensors, "
                f"got shape {tuple(extra_text_features.shape)}"
            )
    else:
        blocks = list(extra_text_features)
    for k, block in enumerate(blocks):
        _check_matrix(f"extra_text_features[{k}]", block, d)
        if block.shape[0] != n:
            raise ValidationError(
                f"extra_text_features[{k}] has {block.shape[0]} rows but there are {n} images; "
                f"extra captions are paired row by row with the images"
            )
    return blocks


def _normalized(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return F.normalize(x.to(dtype), dim=-1)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _tile_positives(pos: torch.Tensor, c0: int, c1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a tile whose positive image lies in columns [c0, c1), and those columns."""
    rows = torch.nonzero((pos >= c0) & (pos < c1), as_tuple=True)[0]
    return rows, pos[rows] - c0


# --------------------------------------------------------------------------- sigmoid


_NORM_EPS = 1e-12  # F.normalize's default: a zero row stays zero


def _row_norms(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(||x_i||, max(||x_i||, eps))`` per row, as ``(n, 1)`` columns in ``dtype`` (no copy of ``x``)."""
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=dtype)
    return norms, norms.clamp_min(_NORM_EPS)


def _normalized_rows(x: torch.Tensor, denom: torch.Tensor, r0: int, r1: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``[r0, r1)`` of ``F.normalize(x.to(dtype))``, the same operations on a slice only.

    One division with ``denom`` (``dtype``) broadcast: type promotion computes it in ``dtype``
    from the exact upcast of a half-precision ``x``, so the values are those of the cast and the
    division done apart, without the intermediate copy of ``x``.
    """
    out = torch.div(x[r0:r1], denom[r0:r1])
    return out if out.dtype == dtype else out.to(dtype)


def _softplus_sum(z: torch.Tensor) -> torch.Tensor:
    """``F.softplus(z).sum()``, in the dtype of ``z``.

    On a CPU torch's ``log1p`` is ~8x slower than its ``log`` (scalar code: 0.87 against 0.10 ms
    for a 720 x 240 tile, benchmarks/README.md "probe_step.py"), so the sum there uses
    ``softplus(z) = max(z, 0) + log1p(e)``, ``e = exp(-|z|)``, with ``log1p(e)`` computed as
    ``log(u) * e / (u - 1)``, ``u = fl(1 + e)`` (exact to a few ulps: Goldberg, "What every computer
    scientist should know about floating-point arithmetic", 1991, Theorem 4; ``e`` itself where
    ``u`` rounds to 1), in row blocks of at most 2^20 values: its three temporaries stay a few MiB
    whatever the tile (a 4,096^2 tile would otherwise hold three more tiles). Other devices use
    ``F.softplus``.
    """
    if z.device.type != "cpu":
        return F.softplus(z).sum()
    rows = max(1, (1 << 20) // max(1, z.shape[-1]))
    total = z.clamp_min(0).sum()
    for r0 in range(0, z.shape[0], rows):
        e = z[r0 : r0 + rows].abs().neg_().exp_()
        u = e + 1
        ratio = torch.log(u)
        # log(u) / (u - 1), with 1 where u rounded to 1 (0 / 0); u - 1 is exact (Sterbenz: u in [1, 2])
        ratio.div_(u.sub_(1)).nan_to_num_(nan=1.0)
        del u
        total += ratio.mul_(e).sum()  # torch.sum: cascade summation, closer than a BLAS dot
    return total


def _unnormalize_grad_(grad: torch.Tensor, x: torch.Tensor, norms: torch.Tensor, denom: torch.Tensor,
                       chunk: int, factor: torch.Tensor) -> torch.Tensor:
    """``factor * grad`` w.r.t. ``normalize(x)`` turned, in place, into the gradient w.r.t. ``x``.

    ``d normalize(x) / dx`` applied to ``g`` is ``(g - n (n . g)) / r`` (``n = x / r``), i.e. per
    row ``a g + b x`` with ``a = 1 / r`` and ``b = -(n . g) / r^2``: two passes over ``grad`` (a
    scale, a multiply-add with ``x``) instead of a normalised copy of ``x`` and four. Where the
    norm was clamped to eps, ``r`` is a constant and only ``g / eps`` is left -- autograd's
    result through ``F.normalize``. Row blocks bound the temporaries.
    """
    for r0 in range(0, len(x), chunk):
        r1 = min(r0 + chunk, len(x))
        g, xr, r = grad[r0:r1], x[r0:r1].to(grad.dtype), denom[r0:r1]
        dot = torch.linalg.vecdot(xr, g).unsqueeze(-1).div_(r).mul_(norms[r0:r1] >= _NORM_EPS)
        a = factor / r
        g.mul_(a).addcmul_(xr, dot.mul_(a).div_(r).neg_())
    return grad


class _TiledSigmoidSum(torch.autograd.Function):
    """Sum over all (text j, image i) of ``-logsigmoid(y_ji * (s * t_j . x_i + b))``, tile by tile.

    Takes the *raw* features and normalises them slice by slice as the tiles
    need them (the same operations as ``F.normalize`` on the whole matrix), so
    no normalised copy of either side is ever held: besides the inputs, the
    memory is the two gradient buffers and a few tiles.

    Uses ``-logsigmoid(y L) = softplus(z)`` with ``z = -y L``, and
    ``d/dL = -y * sigmoid(z)``. Gradients w.r.t. the normalised features are
    accumulated in the forward pass (when needed); the backward scales them and
    turns them, in place, into gradients w.r.t. the raw features
    (`_unnormalize_grad_`), and hands those buffers to autograd.
    """

    @staticmethod
    def forward(ctx, img, txt, scale, bias, positive_index, chunk, need_grad, matmul_dtype=None):
        m, n = txt.shape[0], img.shape[0]
        dtype = _compute_dtype(img)
        # The three GEMMs of a tile may run in half precision (the reference's
        # autocast); normalisation, softplus / sigmoid and every sum stay in `dtype`.
        low = matmul_dtype if matmul_dtype is not None and matmul_dtype != dtype else None
        (img_norms, img_denom), (txt_norms, txt_denom) = _row_norms(img, dtype), _row_norms(txt, dtype)
        total = torch.zeros((), dtype=torch.float64, device=img.device)
        if need_grad:
            # Written by the first tile that reaches each slice, added to by the others: no
            # zero-fill and no addition for the first (the only one when a side fits one tile).
            g_img = torch.empty(img.shape, dtype=dtype, device=img.device)
            g_txt = torch.empty(txt.shape, dtype=dtype, device=img.device)  # unscaled: sum over tiles of G @ img
            g_bias = torch.zeros((), dtype=torch.float64, device=img.device)
            g_scale = torch.zeros((), dtype=torch.float64, device=img.device)
        # In fp32 one GEMM writes s * t.x + b (alpha and the broadcast bias), saving two
        # passes over each tile; reading s once costs one device sync per call.
        s = float(scale)
        bias_ = bias.to(dtype)
        for r0 in range(0, m, chunk):
            r1 = min(r0 + chunk, m)
            t = _normalized_rows(txt, txt_denom, r0, r1, dtype)
            t_mm = t if low is None else t.to(low)
            if low is not None:
                del t  # only its half-precision copy is used from here on
            pos = positive_index[r0:r1]
            for c0 in range(0, n, chunk):
                c1 = min(c0 + chunk, n)
                x = _normalized_rows(img, img_denom, c0, c1, dtype)
                x_mm = x if low is None else x.to(low)
                rows, cols = _tile_positives(pos, c0, c1)
                if low is None:
                    z = torch.addmm(bias_, t, x.T, alpha=s)  # z = -y L = L for the negatives (y = -1)
                else:
                    products = torch.mm(t_mm, x_mm.T).to(dtype)  # t.x as the loss saw them (rounded)
                    z = torch.add(bias_, products, alpha=s)
                z[rows, cols] = z[rows, cols].neg()  # and -L for the positives
                total += _softplus_sum(z)
                if need_grad:
                    grad = z.sigmoid_()  # d/dL for negatives; positives need the sign flip
                    grad[rows, cols] = grad[rows, cols].neg()
                    g_bias += grad.sum()
                    if low is None:
                        _accumulate(g_txt[r0:r1], c0 == 0, grad, x)
                        _accumulate(g_img[c0:c1], r0 == 0, grad.T, t)
                    else:
                        # d/ds = sum_ji G_ji (t_j . x_i), from the tile's own products: no pass
                        # over the features, and the derivative of the loss exactly as computed.
                        # A dot reads the two tiles and writes nothing (its fp32 accumulation is
                        # ~1e-6 relative here, far below the products' bf16 rounding).
                        g_scale += torch.dot(grad.view(-1), products.view(-1))
                        grad = grad.to(low)  # half-precision products, accumulated in `dtype` across tiles
                        _accumulate(g_txt[r0:r1], c0 == 0, grad, x_mm)
                        _accumulate(g_img[c0:c1], r0 == 0, grad.T, t_mm)
                del z, x, x_mm
            if need_grad and low is None:
                # d/ds = sum_ji G_ji (t_j . x_i) = sum_j (G @ img)_j . t_j : no extra tile pass.
                g_scale += (g_txt[r0:r1] * t).sum()
        if need_grad:
            ctx.save_for_backward(img, txt)
            ctx.norms = (img_norms, img_denom, txt_norms, txt_denom)
            ctx.grads = (g_img, g_txt, g_scale.to(scale.dtype), g_bias.to(bias.dtype))
            ctx.scale, ctx.chunk = scale.detach(), chunk
        return total.to(dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        img, txt = ctx.saved_tensors
        img_norms, img_denom, txt_norms, txt_denom = ctx.norms
        g_img, g_txt, g_scale, g_bias = ctx.grads
        # The buffers leave ctx before they are returned, so that autograd can
        # take them as the features' .grad instead of copying them.
        del ctx.grads, ctx.norms
        factor = ctx.scale * grad_out
        g_img = _unnormalize_grad_(g_img, img, img_norms, img_denom, ctx.chunk, factor)
        g_txt = _unnormalize_grad_(g_txt, txt, txt_norms, txt_denom, ctx.chunk, factor)
        return (g_img.to(img.dtype), g_txt.to(txt.dtype), g_scale * grad_out, g_bias * grad_out,
                None, None, None, None)


def _accumulate(out: torch.Tensor, first: bool, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out = a @ b`` when ``first``, else ``out += a @ b``; ``out`` may be of a wider dtype."""
    if a.dtype == out.dtype:
        if first:
            torch.mm(a, b, out=out)
        else:
            out.addmm_(a, b)
    elif first:
        out.copy_(torch.mm(a, b))
    else:
        out += torch.mm(a, b)


def _naive_sigmoid_sum(img, txt, scale, bias, positive_index, matmul_dtype=None) -> torch.Tensor:
    products = txt @ img.T if matmul_dtype is None else (txt.to(matmul_dtype) @ img.to(matmul_dtype).T).to(img.dtype)
    logits = scale * products + bias
    labels = -torch.ones_like(logits)
    has_pos = positive_index >= 0
    labels[torch.nonzero(has_pos, as_tuple=True)[0], positive_index[has_pos]] = 1.0
    return -F.logsigmoid(labels * logits).sum()


def pairwise_sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    positive_index: torch.Tensor,
    logit_scale,
    logit_bias,
    normalization: str = "n2",
    chunk_size: int | None = None,
    *,
    divisor: float | None = None,
    matmul_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Sigmoid loss of every text against every image, one positive image per text at most.

    Args:
        image_features: ``(N, d)`` raw image-head outputs (normalised here).
        text_features: ``(M, d)`` raw text-head outputs (normalised here).
        positive_index: ``(M,)`` integer; text ``j`` is a positive of image
            ``positive_index[j]``, or a negative of every image when it is -1.
        logit_scale: the multiplier ``exp(t)`` (already exponentiated), scalar.
        logit_bias: ``b``, scalar.
        normalization: ``"n2"`` -- mean over the ``M x N`` logits (SAIL
            reference); ``"n"`` -- the sum divided by ``N`` (SigLIP paper).
        chunk_size: None for the naive full matrix; an int for exact tiled
            computation with ``chunk_size x chunk_size`` tiles.
        divisor: overrides ``normalization``: the sum is divided by this
            number. A rank of a distributed run scores its share of the global
            logit matrix and divides by the *global* count (``M_global *
            N_global`` for n2), so that the ranks' losses add up to the
            global loss.
        matmul_dtype: None (default): every product in the compute dtype (fp32,
            or fp64 for fp64 inputs). ``torch.bfloat16`` / ``torch.float16``:
            the logit and gradient matrix products run in that dtype, as under
            the reference's mixed-precision autocast (lezhang7/SAIL
            ``train/train.py`` computes the loss inside ``autocast()``, where
            ``image_features @ text_features.T`` is a half-precision GEMM);
            the normalisation, softplus / sigmoid and every sum stay fp32.

    Returns a 0-dim tensor, fp32 (fp64 for fp64 inputs); half-precision
    features are upcast, since a sum of ``M * N`` sigmoid terms is not
    accurate in half precision.
    """
    image_features = _check_matrix("image_features", image_features)
    text_features = _check_matrix("text_features", text_features, image_features.shape[1])
    if normalization not in NORMALIZATIONS:
        raise ValidationError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    chunk = _check_chunk(chunk_size)
    n, m = image_features.shape[0], text_features.shape[0]
    positive_index = _check_positive_index(positive_index, m, n, image_features.device)
    if matmul_dtype not in MATMUL_DTYPES:
        raise ValidationError(f"matmul_dtype must be None, torch.bfloat16 or torch.float16, got {matmul_dtype!r}")
    scale = _as_scalar("logit_scale", logit_scale, image_features)
    bias = _as_scalar("logit_bias", logit_bias, image_features)
    if chunk is None:
        dtype = _compute_dtype(image_features)
        img, txt = _normalized(image_features, dtype), _normalized(text_features, dtype)
        total = _naive_sigmoid_sum(img, txt, scale, bias, positive_index, matmul_dtype)
    else:
        # normalised inside, slice by slice: no normalised copy of either side is held
        total = _TiledSigmoidSum.apply(image_features, text_features, scale, bias, positive_index, chunk,
                                       _needs_grad(image_features, text_features, scale, bias), matmul_dtype)
    if divisor is not None:
        if isinstance(divisor, bool) or not isinstance(divisor, (int, float)) or not divisor > 0:
            raise ValidationError(f"divisor must be None or a number > 0, got {divisor!r}")
        return total / divisor
    return total / (m * n if normalization == "n2" else n)


def _stack_texts(text_features, extra_text_features, negative_text_features, n, d):
    """Concatenate caption blocks and pure negatives; build the matching positive_index."""
    blocks = [text_features, *_extra_blocks(extra_text_features, n, d)]
    device = text_features.device
    arange = torch.arange(n, device=device)
    index = [arange] * len(blocks)
    if negative_text_features is not None:
        negatives = _check_matrix("negative_text_features", negative_text_features, d)
        blocks.append(negatives)
        index.append(torch.full((negatives.shape[0],), -1, dtype=torch.long, device=device))
    if len(blocks) == 1:
        return text_features, arange
    return torch.cat(blocks), torch.cat(index)


def sigmoid_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale,
    logit_bias,
    extra_text_features: TextSet = None,
    normalization: str = "n2",
    chunk_size: int | None = None,
    *,
    negative_text_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """The SigLIP/SAIL sigmoid loss of a batch of ``N`` image-caption pairs.

    ``logits = logit_scale * normalize(text) @ normalize(image).T + logit_bias``;
    labels are +1 for a matching pair and -1 otherwise; the loss is
    ``-mean(logsigmoid(labels * logits))`` over the whole matrix (``"n2"``, the
    SAIL reference) or ``-sum(...) / N`` (``"n"``, the SigLIP paper).

    Args:
        image_features: ``(N, d)`` raw image-head outputs.
        text_features: ``(N, d)`` raw text-head outputs; row ``i`` captions image ``i``.
        logit_scale: the multiplier ``exp(t)``, scalar tensor or float.
        logit_bias: ``b``, scalar tensor or float.
        extra_text_features: multi-positive captions (SAIL): an ``(N, d)``
            tensor, a ``(K, N, d)`` tensor, or a list of ``(N, d)`` tensors; row
            ``i`` of each is another positive of image ``i``. Each adds an
            ``N x N`` block of logits (positives on its diagonal) and the
            mean runs over all ``(K + 1) N x N`` logits.
        normalization: ``"n2"`` or ``"n"``.
        chunk_size: None (naive full matrix) or a tile size for the exact
            memory-bounded computation (peak extra memory ~ ``3 * chunk_size**2``
            floats instead of several ``(K + 1) N x N`` matrices).
        negative_text_features: ``(M', d)`` texts that are negatives for every
            image (e.g. captions gathered from other ranks); they add ``M' x N``
            logits, all labelled -1.

    Returns a 0-dim tensor (fp32, or fp64 for fp64 inputs); differentiable in
    the features, scale and bias.
    """
    image_features = _check_matrix("image_features", image_features)
    n, d = image_features.shape
    text_features = _check_matrix("text_features", text_features, d)
    if text_features.shape[0] != n:
        raise ValidationError(
            f"text_features has {text_features.shape[0]} rows but image_features has {n}; "
            f"sigmoid_loss pairs them row by row (use pairwise_sigmoid_loss for other layouts)"
        )
    texts, positive_index = _stack_texts(text_features, extra_text_features, negative_text_features, n, d)
    return pairwise_sigmoid_loss(
        image_features, texts, positive_index, logit_scale, logit_bias, normalization, chunk_size
    )


# --------------------------------------------------------------------------- InfoNCE


def _combine_lse(running: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    return new if running is None else torch.logaddexp(running, new)


class _TiledLogSumExp(torch.autograd.Function):
    """Row and column log-sum-exps of ``L = scale * txt @ img.T`` without holding ``L``.

    Returns ``(lse_text (M,), lse_image (N,))``: ``lse_text[j] = logsumexp_i L[j, i]``
    and ``lse_image[i] = logsumexp_j L[j, i]``. The backward recomputes each
    tile; ``dlse_text[j]/dL[j, i] = softmax_i(L[j])``.
    """

    @staticmethod
    def forward(ctx, img, txt, scale, chunk):
        m, n = txt.shape[0], img.shape[0]
        lse_text = torch.empty(m, dtype=img.dtype, device=img.device)
        col_parts: list[torch.Tensor | None] = [None] * ((n + chunk - 1) // chunk)
        for r0 in range(0, m, chunk):
            t = txt[r0 : r0 + chunk]
            row = None
            for k, c0 in enumerate(range(0, n, chunk)):
                logits = (t @ img[c0 : c0 + chunk].T).mul_(scale)
                row = _combine_lse(row, torch.logsumexp(logits, dim=1))
                col_parts[k] = _combine_lse(col_parts[k], torch.logsumexp(logits, dim=0))
            lse_text[r0 : r0 + chunk] = row
        lse_image = torch.cat(col_parts)
        ctx.chunk = chunk
        ctx.save_for_backward(img, txt, scale, lse_text, lse_image)
        return lse_text, lse_image

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_text, g_image):
        img, txt, scale, lse_text, lse_image = ctx.saved_tensors
        chunk = ctx.chunk
        m, n = txt.shape[0], img.shape[0]
        g_text = torch.zeros(m, dtype=img.dtype, device=img.device) if g_text is None else g_text
        g_image = torch.zeros(n, dtype=img.dtype, device=img.device) if g_image is None else g_image
        grad_img = torch.zeros_like(img)
        grad_txt = torch.zeros_like(txt)  # unscaled, as in _TiledSigmoidSum
        for r0 in range(0, m, chunk):
            t = txt[r0 : r0 + chunk]
            r1 = r0 + t.shape[0]
            for c0 in range(0, n, chunk):
                x = img[c0 : c0 + chunk]
                c1 = c0 + x.shape[0]
                logits = (t @ x.T).mul_(scale)
                grad = (logits - lse_text[r0:r1, None]).exp_().mul_(g_text[r0:r1, None])
                grad.add_(logits.sub_(lse_image[None, c0:c1]).exp_().mul_(g_image[None, c0:c1]))
                grad_txt[r0:r1].addmm_(grad, x)
                grad_img[c0:c1].addmm_(grad.T, t)
        g_scale = (grad_txt * txt).sum()
        return grad_img.mul_(scale), grad_txt.mul_(scale), g_scale, None


def pairwise_infonce_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    positive_index: torch.Tensor,
    logit_scale,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over the positive pairs ``(j, positive_index[j])``.

    For each pair, text->image: cross-entropy of text ``j``'s logits over all
    ``N`` images; image->text: cross-entropy of image ``i``'s logits over all
    ``M`` texts (including texts with ``positive_index = -1``, which act only as
    negatives). The loss is the mean over pairs of the two, halved:
    ``(CE_t2i + CE_i2t) / 2``. With ``M = N`` and ``positive_index = arange(N)``
    it is the CLIP loss.
    """
    image_features = _check_matrix("image_features", image_features)
    text_features = _check_matrix("text_features", text_features, image_features.shape[1])
    chunk = _check_chunk(chunk_size)
    n, m = image_features.shape[0], text_features.shape[0]
    positive_index = _check_positive_index(positive_index, m, n, image_features.device)
    pairs = torch.nonzero(positive_index >= 0, as_tuple=True)[0]
    if pairs.numel() == 0:
        raise ValidationError("InfoNCE needs at least one positive pair (positive_index is all -1)")
    scale = _as_scalar("logit_scale", logit_scale, image_features)
    dtype = _compute_dtype(image_features)
    img, txt = _normalized(image_features, dtype), _normalized(text_features, dtype)
    targets = positive_index[pairs]
    if chunk is None:
        logits = scale * txt @ img.T
        t2i = F.cross_entropy(logits[pairs], targets)
        i2t = F.cross_entropy(logits.T[targets], pairs)
        return (t2i + i2t) / 2
    lse_text, lse_image = _TiledLogSumExp.apply(img, txt, scale, chunk)
    positive_logits = scale * (txt[pairs] * img[targets]).sum(-1)
    t2i = (lse_text[pairs] - positive_logits).mean()
    i2t = (lse_image[targets] - positive_logits).mean()
    return (t2i + i2t) / 2


def infonce_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale,
    logit_bias=None,
    extra_text_features: TextSet = None,
    chunk_size: int | None = None,
    *,
    negative_text_features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE (the CLIP loss) of a batch of ``N`` image-caption pairs.

    ``logits = logit_scale * normalize(text) @ normalize(image).T``;
    ``loss = (CE(logits, arange) + CE(logits.T, arange)) / 2``.

    Args mirror `sigmoid_loss`. ``logit_bias`` is accepted for a uniform call
    signature but has no effect: a constant added to every logit cancels in
    the softmax. With ``extra_text_features`` (K caption sets) the loss is the
    mean of the CLIP losses of each caption set against the images;
    ``negative_text_features`` join the image->text softmax of every set.
    """
    del logit_bias  # cancels in the softmax; see docstring
    image_features = _check_matrix("image_features", image_features)
    n, d = image_features.shape
    text_features = _check_matrix("text_features", text_features, d)
    if text_features.shape[0] != n:
        raise ValidationError(
            f"text_features has {text_features.shape[0]} rows but image_features has {n}; "
            f"infonce_loss pairs them row by row (use pairwise_infonce_loss for other layouts)"
        )
    losses = []
    for block in [text_features, *_extra_blocks(extra_text_features, n, d)]:
        texts, positive_index = _stack_texts(block, None, negative_text_features, n, d)
        losses.append(pairwise_infonce_loss(image_features, texts, positive_index, logit_scale, chunk_size))
    return torch.stack(losses).mean()
