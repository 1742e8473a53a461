"""torch.distributed helpers that degrade to a single process.

Every helper works whether or not a process group is initialized: with none,
``rank()`` is 0, ``world_size()`` is 1, ``concat_all_gather(x)`` returns ``x``
and ``broadcast`` is a no-op. Model and loss code can therefore call them
unconditionally and be unit-tested on CPU without a cluster (the pattern of
lightly/utils/dist.py). Process-group setup itself happens at the edges (Ray
Train), never here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.distributed as tdist

T = TypeVar("T")


def is_initialized() -> bool:
    """True when a default torch.distributed process group exists."""
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    """Global rank of this process; 0 without a process group."""
    return tdist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the default group; 1 without a process group."""
    return tdist.get_world_size() if is_initialized() else 1


def is_rank_zero() -> bool:
    """True on the process that logs and writes checkpoints."""
    return rank() == 0


def rank_zero_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Decorator: run ``fn`` on rank 0 only; other ranks get ``None``."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        return fn(*args, **kwargs) if is_rank_zero() else None

    return wrapped


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, in rank order.

    x: (N, ...) with the same shape on every rank -> (world_size * N, ...).
    No gradient flows through the gather (as in facebookresearch/moco
    builder.py); a single process returns ``x`` itself.
    """
    if world_size() == 1:
        return x
    x = x.contiguous()
    gathered = [torch.empty_like(x) for _ in range(world_size())]
    tdist.all_gather(gathered, x)
    return torch.cat(gathered, dim=0)


@torch.no_grad()
def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``x`` in place with rank ``src``'s copy and return it."""
    if world_size() > 1:
        tdist.broadcast(x, src=src)
    return x


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a new tensor); ``x`` itself in one process."""
    if world_size() == 1:
        return x
    out = x.detach().clone()
    tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
    return out / world_size()
