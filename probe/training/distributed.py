"""Multi-process training: the torchrun environment, all-gather with gradient, gradient sums.

A SAIL run on several GPUs or machines is started with ``torchrun``; every
process (rank) trains on its own share of each global batch. For the sigmoid
loss to see the negatives of every rank -- so that the effective batch is the
global one -- each rank gathers the text embeddings of all ranks with
`gather_with_grad` and scores its own images against all of them. The
gradient that flows back through the gather reaches the rank that produced
each text, so after `all_reduce_sum_` of the parameter gradients every rank
holds the gradient of the global loss.

Works on ``gloo`` (CPU) as well as ``nccl`` (CUDA), so it is tested on CPU.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.distributed as dist

from alignprobe.backbones.devices import resolve_device
from alignprobe.errors import ValidationError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main rank writes files and prints."""
        return self.rank == 0


SINGLE = DistContext()


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` outside it."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValidationError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {err}") from None
    return rank, world, local


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group torchrun set up; a single-process context outside torchrun.

    ``backend``: ``nccl`` when CUDA is available, else ``gloo`` (None picks).
    Idempotent: a group that is already initialised is reused.
    """
    rank, world, local = env_world()
    if world <= 1:
        return SINGLE
    if not dist.is_available():
        raise ValidationError("this torch build has no torch.distributed; run a single process")
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(dist.get_rank(), dist.get_world_size(), local, dist.get_backend())


def shutdown(ctx: DistContext) -> None:
    """Leave the process group once every rank has reached the end.

    The barrier first: a rank that tears its gloo group down while a peer is still
    working with it can abort the peer ("terminate called without an active
    exception", SIGABRT), which CI saw once in the two-process test.
    """
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_device(ctx: DistContext, device: str) -> torch.device:
    """The device of this rank (`resolve_device`: ``auto`` is ``cuda:<local_rank>`` under torchrun)."""
    return resolve_device(device, local_rank=ctx.local_rank if ctx.enabled else None)


class _GatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's equally-sized tensor; backward sums the incoming
    gradients over ranks and hands each rank the rows it contributed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        # all_reduce rather than reduce_scatter: gloo has no reduce_scatter, and
        # the gathered tensors here are embeddings, small next to the heads.
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """``(n, d)`` on each rank -> ``(world * n, d)``, rank-major; differentiable.

    Every rank must pass the same number of rows.
    """
    if not ctx.enabled:
        return x
    return _GatherWithGrad.apply(x)


def row_counts(n: int, ctx: DistContext) -> list[int]:
    """Every rank's ``n`` (e.g. its number of captions in a step), in rank order."""
    if not ctx.enabled:
        return [int(n)]
    t = torch.zeros(ctx.world_size, dtype=torch.long, device=_collective_device(ctx))
    t[ctx.rank] = int(n)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [int(v) for v in t.tolist()]


def gather_varlen_with_grad(x: torch.Tensor, counts: Sequence[int], ctx: DistContext) -> torch.Tensor:
    """Like `gather_with_grad` for ranks with different row counts (``counts``, from `row_counts`).

    Collectives need equal shapes, so each rank pads to the largest count, the
    padded tensors are gathered, and the padding is sliced away again (slicing
    routes each rank's gradient back to its real rows only).
    """
    if not ctx.enabled:
        return x
    longest = max(counts)
    if x.shape[0] < longest:
        x = torch.cat([x, x.new_zeros(longest - x.shape[0], *x.shape[1:])])
    gathered = _GatherWithGrad.apply(x)
    return torch.cat([gathered[r * longest : r * longest + c] for r, c in enumerate(counts)])


def all_reduce_sum_(tensors: Sequence[torch.Tensor], ctx: DistContext) -> None:
    """Sum each tensor over ranks, in place (one flat buffer, one collective)."""
    tensors = [t for t in tensors if t is not None]
    if not ctx.enabled or not tensors:
        return
    if len({t.dtype for t in tensors}) > 1:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def _collective_device(ctx: DistContext) -> torch.device:
    # NCCL reduces only CUDA tensors; gloo takes CPU ones.
    if ctx.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_scalar(value: float, ctx: DistContext) -> float:
    """The sum over ranks of a Python float (fp64)."""
    if not ctx.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device(ctx))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """The main rank's ``obj`` on every rank (pickled; for small decisions and metrics)."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
