"""One optimizer step of the engine: the (distributed) loss, the optimizer, memory-bounded passes.

* `global_loss`: this rank's part of the loss of the global batch, so that the
  ranks' parts -- and their gradients -- add up to the single-process loss;
* `make_optimizer`: Lion (the reference's default, lezhang7/SAIL
  ``train/params.py``) or AdamW, weight decay on weight matrices only unless asked;
* `train_step`: one step, in one pass or in two (GradCache, Gao et al. 2021)
  when the batch's activations do not fit (`resolve_micro_batch`).
"""
from __future__ import annotations

import torch
from torch.profiler import record_function

from alignprobe.probe.training import distributed as D
from alignprobe.probe.training.config import TrainConfig
from alignprobe.probe.training.distributed import gather_varlen_with_grad, gather_with_grad, row_counts
from alignprobe.probe.training.evaluation import autocast, half_dtype
from alignprobe.probe.training.heads import AlignmentHead, AlignmentModel
from alignprobe.probe.training.losses import pairwise_infonce_loss, pairwise_sigmoid_loss


def global_loss(image_features: torch.Tensor, text_features: torch.Tensor, positive_index: torch.Tensor,
                logit_scale: torch.Tensor, logit_bias: torch.Tensor, *, n_global: int, loss: str = "sigmoid",
                normalization: str = "n2", chunk_size: int | None = None, positives: int | str = "all",
                ctx: D.DistContext = D.SINGLE, matmul_dtype: torch.dtype | None = None) -> torch.Tensor:
    """This rank's part of the loss of the global batch; the ranks' parts add up to it.

    Args:
        image_features: ``(n, d)`` this rank's raw image-head outputs.
        text_features: ``(m, d)`` this rank's caption-head outputs.
        positive_index: ``(m,)`` the row in ``image_features`` of each caption's image.
        logit_scale: ``exp(t)``; logit_bias: ``b``.
        n_global: images in the global batch (``n * world_size``).
        loss, normalization, chunk_size: as in `TrainConfig`.
        positives: ``"all"`` (ragged captions) or k (``k`` blocks of ``n``
            captions, the layout InfoNCE's per-block softmax needs).
        ctx: the process's `DistContext`; single-process by default.
        matmul_dtype: the sigmoid loss's matrix products in half precision
            (`pairwise_sigmoid_loss`); None: fp32. InfoNCE ignores it.

    Sigmoid: this rank's images are scored against the texts of *every* rank
    (gathered with gradient; ranks may hold different caption counts),
    positives only on its own texts, and the sum is divided by the global
    count (``n2``: all images x all texts, the reference's mean over its
    ``N x N`` blocks), so summing the ranks' losses gives the single-process
    loss. InfoNCE needs softmaxes over all images and all texts, so every rank
    gathers both, computes the whole loss and divides it by the world size.
    """
    if loss == "sigmoid":
        if not ctx.enabled:
            return pairwise_sigmoid_loss(image_features, text_features, positive_index, logit_scale, logit_bias,
                                         normalization, chunk_size, matmul_dtype=matmul_dtype)
        counts = row_counts(text_features.shape[0], ctx)
        texts = gather_varlen_with_grad(text_features, counts, ctx)
        offset = sum(counts[: ctx.rank])
        index = torch.full((texts.shape[0],), -1, dtype=torch.long, device=image_features.device)
        index[offset : offset + counts[ctx.rank]] = positive_index
        divisor = texts.shape[0] * n_global if normalization == "n2" else n_global
        return pairwise_sigmoid_loss(image_features, texts, index, logit_scale, logit_bias,
                                     chunk_size=chunk_size, divisor=float(divisor), matmul_dtype=matmul_dtype)
    world, n_local = ctx.world_size, image_features.shape[0]
    if positives == "all":
        # One softmax over all captions: the caption -> image direction has one
        # target each; each image's positives are all its captions.
        counts = row_counts(text_features.shape[0], ctx)
        images = gather_with_grad(image_features, ctx)
        texts = gather_varlen_with_grad(text_features, counts, ctx)
        owners = gather_varlen_with_grad(positive_index[:, None].float(), counts, ctx)[:, 0].long()
        shift = torch.repeat_interleave(torch.arange(world, device=owners.device) * n_local,
                                        torch.tensor(counts, device=owners.device))
        return pairwise_infonce_loss(images, texts, owners + shift, logit_scale, chunk_size) / world
    images = gather_with_grad(image_features, ctx)
    texts = gather_with_grad(text_features, ctx).reshape(world, positives, n_local, -1)
    texts = texts.transpose(0, 1).reshape(positives, world * n_local, -1)
    target = torch.arange(world * n_local, device=image_features.device)
    losses = [pairwise_infonce_loss(images, block, target, logit_scale, chunk_size) for block in texts]
    return torch.stack(losses).mean() / world


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or Lion over the model's parameters; weight decay only on weight
    matrices unless ``config.decay_norm_bias_logit``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if config.decay_norm_bias_logit:
        groups = [{"params": [p for _, p in named], "weight_decay": config.weight_decay}]
    else:
        # pulling LayerNorm gains, biases or the logit scale/bias towards 0 is
        # not a prior anyone wants for them
        groups = [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": config.weight_decay},
                  {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]
    if config.optimizer == "lion":
        # lion-pytorch's foreach Lion: the same update as its per-tensor Lion and the reference's
        # (train/optimizer.py: sign(beta1 m + (1 - beta1) g), then m <- beta2 m + (1 - beta2) g),
        # in fewer passes over the weights (its step 1.3-1.4x faster on this CPU, benchmarks/README.md "probe_step.py").
        from lion_pytorch.foreach import Lion

        return Lion(groups, lr=config.lr, betas=config.betas)
    # torch's fused AdamW kernel (CPU and CUDA): the same update as its default implementation, up to
    # float rounding, in one pass over each weight instead of several (benchmarks/README.md "probe_step.py").
    fused = all(p.device.type in ("cpu", "cuda") for _, p in named) or None
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused)


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device``: CUDA's free memory, or the
    kernel's MemAvailable on a Linux CPU; None where it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return None


def activation_bytes_per_row(head: torch.nn.Module, precision: str = "fp32") -> int:
    """Estimated training-time memory of one input row through ``head``.

    Autograd keeps each Linear's output and, for the star head's ReLU6(x1) * x2,
    as much again for the elementwise intermediates and their gradients; the
    input side adds a LayerNorm output. So: 2 x (sum of Linear widths + input
    width) values per row. Checked against a measured 7.13 GiB for the
    one-pass step at batch 16,384 with SAIL's star heads (estimate: 6.6 GiB).
    """
    linear = sum(m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear))
    inputs = next((m.normalized_shape[0] for m in head.modules() if isinstance(m, torch.nn.LayerNorm)), 0)
    itemsize = 4 if precision == "fp32" else 2
    return 2 * (linear + inputs) * itemsize


def resolve_micro_batch(model: AlignmentModel, n_images: int, n_texts: int, device: torch.device,
                        precision: str = "fp32", *, free_bytes: int | None = None, floor: int = 512) -> int | None:
    """``micro_batch='auto'``: None (one pass) when the step's activations fit in
    half of the free memory, else the largest power of two >= ``floor`` that fits.
    ``free_bytes`` overrides the measured free memory (tests)."""
    free = free_memory_bytes(device) if free_bytes is None else free_bytes
    per_image = activation_bytes_per_row(model.image_head, precision)
    per_text = activation_bytes_per_row(model.text_head, precision)
    if free is None:
        return 4096 if max(n_images, n_texts) > 4096 else None  # cannot tell: the bounded choice
    budget = free // 2
    if n_images * per_image + n_texts * per_text <= budget:
        return None
    # The second pass backpropagates one micro-batch of one side at a time.
    mb = floor
    while mb * 2 < max(n_images, n_texts) and mb * 2 * max(per_image, per_text) <= budget:
        mb *= 2
    return mb


def head_input(head: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype of ``head``'s parameters (fp32 for a parameterless head).

    Batches arrive in their storage dtype (fp16 from an fp16 cache: half the
    memory of an fp32 copy of the batch and of the prefetched one); each
    micro-batch is cast only as it runs, so at most one micro-batch exists in
    fp32 at a time. fp16 -> fp32 is exact: the numbers are those of casting
    the whole batch up front.
    """
    param = next(head.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    return x if x.dtype == dtype else x.to(dtype)


def _signature(t: torch.Tensor) -> tuple:
    return t.data_ptr(), t.shape, t.stride(), t.dtype


def run_head(head: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``head(head_input(head, x))``, without autograd keeping what the fp16 batch rebuilds.

    When ``x`` is a stored fp16 batch, its fp32 cast and (for an `AlignmentHead`)
    the LayerNorm's output are what autograd would keep of the head's first
    layers for the backward: two fp32 copies of the batch. Autograd is handed
    the batch's own rows instead and rebuilds them when the backward needs them
    -- the cast (exact: fp16 -> fp32 is) and the LayerNorm forward with the same
    weights (bit-identical: the optimizer steps only after the backward) -- so
    those copies live only during the forward: at batch 32,768 x (2,048 + 1,024)
    that is 0.75 GiB less alive through the loss, for one LayerNorm forward more.
    """
    xc = head_input(head, x)
    if xc is x or not torch.is_grad_enabled():
        return head(xc)
    norm = getattr(head, "norm", None) if isinstance(head, AlignmentHead) else None
    norm = norm if isinstance(norm, torch.nn.LayerNorm) else None
    # Tensors are recognised by plain values (a hook holding them would keep them
    # alive); both stay alive while the hooks are active, so no other tensor shares them.
    rebuilt_from_x = {_signature(xc): "cast"}

    def pack(saved: torch.Tensor):
        kind = rebuilt_from_x.get(_signature(saved))
        return (kind, saved.dtype) if kind else saved  # a tuple marks it: autograd saves tensors only

    def unpack(packed):
        if not isinstance(packed, tuple):
            return packed
        kind, dtype = packed
        with torch.no_grad():
            return norm(x.to(dtype)) if kind == "norm" else x.to(dtype)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        if norm is None:
            return head(xc)
        h = norm(head.check_features(xc))
        rebuilt_from_x[_signature(h)] = "norm"
        return head.net(h)


def embed(head: torch.nn.Module, x: torch.Tensor, micro_batch: int | None, device: torch.device,
          precision: str = "fp32") -> torch.Tensor:
    """Head outputs computed micro-batch by micro-batch (the same split in both
    passes of a two-pass step, so both passes see identical outputs); each
    micro-batch is cast to the head's dtype as it runs (`head_input`)."""
    mb = micro_batch or len(x)
    with autocast(device, precision):
        if mb >= len(x):
            return head(head_input(head, x))
        # Filled in place: a list of pieces and their concatenation would hold the outputs twice.
        out = None
        for s in range(0, len(x), mb):
            piece = head(head_input(head, x[s : s + mb]))
            if out is None:
                out = piece.new_empty((len(x), *piece.shape[1:]))
            out[s : s + len(piece)] = piece
        return out


def train_step(model: AlignmentModel, optimizer: torch.optim.Optimizer, images: torch.Tensor, texts: torch.Tensor,
              positive_index: torch.Tensor, n_global: int, config: TrainConfig, *, positives: int | str = "all",
              ctx: D.DistContext = D.SINGLE, scaler: torch.amp.GradScaler | None = None) -> tuple[float, float]:
    """One optimizer step on this rank's share of a global batch; returns (global loss, grad norm).

    With ``config.micro_batch`` smaller than the share, the step runs in two
    passes (GradCache, Gao et al. 2021): the heads embed the batch without a
    graph, the exact (chunked) loss gives the gradient w.r.t. the embeddings,
    then each micro-batch is embedded again with a graph and backpropagated
    with its slice of that gradient. The parameter gradient is that of the
    full-batch loss; the activations alive at once are those of one micro-batch.
    ``images`` / ``texts`` may be in their storage dtype (fp16): they are cast
    to the heads' dtype micro-batch by micro-batch (`head_input`).
    """
    device = images.device
    optimizer.zero_grad(set_to_none=True)

    def loss_of(zi, zt):
        return global_loss(zi, zt, positive_index, model.logit_scale.exp(), model.logit_bias, n_global=n_global,
                           loss=config.loss, normalization=config.normalization, chunk_size=config.chunk_size,
                           positives=positives, ctx=ctx, matmul_dtype=half_dtype(config.precision))

    def backward(loss):
        (scaler.scale(loss) if scaler is not None else loss).backward()

    # The phases are labelled for torch.profiler (`benchmarks/probe_step.py --profile`); a label
    # costs a few microseconds when no profiler runs (3-6 us measured; six a step of >= 10 ms).
    mb = config.micro_batch
    if mb == "auto":
        mb = resolve_micro_batch(model, len(images), len(texts), device, config.precision)
    if mb is not None and max(len(images), len(texts)) > mb:
        with torch.no_grad(), record_function("step: heads forward"):
            zi = embed(model.image_head, images, mb, device, config.precision)
            zt = embed(model.text_head, texts, mb, device, config.precision)
        zi.requires_grad_(True)
        zt.requires_grad_(True)
        with record_function("step: loss"):
            loss = loss_of(zi, zt)
        with record_function("step: backward"):
            backward(loss)
        # Only the features' gradients are needed from here on: the features go
        # (2 x batch x out_dim floats less alive during the second pass).
        grads = zi.grad, zt.grad
        del zi, zt
        with record_function("step: heads again, forward and backward"):
            for head, x, grad in ((model.image_head, images, grads[0]), (model.text_head, texts, grads[1])):
                if not any(p.requires_grad for p in head.parameters()):
                    continue
                for s in range(0, len(x), mb):
                    with autocast(device, config.precision):
                        out = run_head(head, x[s : s + mb])
                    out.backward(grad[s : s + mb])
    else:
        with record_function("step: heads forward"), autocast(device, config.precision):
            zi = run_head(model.image_head, images)
            zt = run_head(model.text_head, texts)
        with record_function("step: loss"):
            loss = loss_of(zi, zt)
        del zi, zt  # the loss keeps what its backward needs; nothing else does
        with record_function("step: backward"):
            backward(loss)
    params = [p for p in model.parameters() if p.requires_grad]
    D.all_reduce_sum_([p.grad for p in params], ctx)
    if scaler is not None:
        scaler.unscale_(optimizer)
    with record_function("step: gradient norm"):
        if config.grad_clip is None and hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
            # only logged: clip_grad_norm_ with an infinite bound would also multiply every gradient by 1
            grad_norm = float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
        else:
            max_norm = config.grad_clip if config.grad_clip is not None else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    with record_function("step: optimizer"):
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        model.clamp_()
    return D.sum_scalar(loss.item(), ctx), grad_norm

