"""MoCo views one batch ahead: the next batch's views are made while the network trains on this one.

    ahead = ViewsAhead(views, generator, device)          # views: a MoCoViews
    for images, im_q, im_k in ahead(batches):             # batches: uint8 (B, H, W, 3) on `device`
        loss, pos, prob = step_on_views(model, optimizer, im_q, im_k, device)

On CUDA the views of batch i+1 are queued on a side stream before the step of batch i is, so the
GPU runs the two together instead of one after the other (benchmarks/README.md: at 96 px the views
of a batch cost about as much as its network step). On CPU the same order is kept (views i+1, then
step i) with nothing to overlap: the bookkeeping is the same, and tests check it there.

Results are identical to making each batch's views just before its step: the views draw every random
number from their own generator (`generator`, one per rank and epoch), never from torch's global one
that shuffle BN's permutation also draws from, so making them earlier changes no number.

Stream discipline (CUDA): the side stream waits for the current stream before it reads a batch (its
host-to-device copy was queued there); the consumer's stream waits for the views' event before the
step reads them; and every tensor used on a stream other than the one that allocated it is marked
with `record_stream`, so the caching allocator does not hand its memory out while the other stream
may still read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class _Pending:
    images: torch.Tensor  # uint8 (B, H, W, 3)
    im_q: torch.Tensor  # (B, 3, S, S)
    im_k: torch.Tensor
    ready: torch.cuda.Event | None  # recorded on the side stream after the views; None off CUDA


class ViewsAhead:
    """Iterate (images, im_q, im_k) over batches with each batch's MoCo views made one batch early.

    views: a module ``views(images_u8, generator) -> (im_q, im_k)`` (`MoCoViews`); generator: the
    views' own torch.Generator; ahead=False makes each batch's views when it is handed out (the
    serial order, for comparison and benchmarks).
    """

    def __init__(self, views: nn.Module, generator: torch.Generator, device: torch.device,
                 ahead: bool = True) -> None:
        self.views, self.generator, self.device, self.ahead = views, generator, torch.device(device), ahead
        self.stream = torch.cuda.Stream(self.device) if ahead and self.device.type == "cuda" else None

    def __call__(self, batches: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        it = iter(batches)
        if not self.ahead:
            for images in it:
                yield (images, *self.views(images, self.generator))
            return
        first = next(it, None)
        if first is None:
            return
        pending = self._launch(first)
        for images in it:
            current, pending = pending, self._launch(images)  # views i+1 queued before step i is
            yield self._handover(current)
        yield self._handover(pending)

    def _launch(self, images: torch.Tensor) -> _Pending:
        if self.stream is None:
            return _Pending(images, *self.views(images, self.generator), None)
        main = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(main)  # the batch's copy (and what came before it) is done
        with torch.cuda.stream(self.stream):
            im_q, im_k = self.views(images, self.generator)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        images.record_stream(self.stream)
        return _Pending(images, im_q, im_k, ready)

    def _handover(self, pending: _Pending) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if pending.ready is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_event(pending.ready)
            pending.im_q.record_stream(main)
            pending.im_k.record_stream(main)
        return pending.images, pending.im_q, pending.im_k


def views_generator(seed: int, rank: int, epoch: int) -> torch.Generator:
    """The views' generator of one rank and epoch (a resumed epoch draws the same views again)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + rank) * 1_000_003 + epoch) % 2**63)
