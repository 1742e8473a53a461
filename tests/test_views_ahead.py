"""MoCo views one batch ahead (`augment.prefetch.ViewsAhead`): the same steps as the serial order, in the
order that lets a GPU overlap them (views of batch i+1 before the step of batch i)."""

from __future__ import annotations

import pytest
import torch

from landmarks.augment import MoCoViews
from landmarks.augment.prefetch import ViewsAhead, views_generator
from landmarks.models import MoCo, build_backbone
from landmarks.train.moco_step import step_on_views, train_step


class SpyViews(torch.nn.Module):
    """MoCoViews that log which batch they augment."""

    def __init__(self, log: list):
        super().__init__()
        self.inner, self.log = MoCoViews(32, mean=[0.5] * 3, std=[0.25] * 3, border=4, jpeg=False), log

    def forward(self, images, generator=None):
        self.log.append(("views", int(images[0, 0, 0, 0])))
        return self.inner(images, generator)


def _batches(n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (8, 40, 40, 3), dtype=torch.uint8, generator=g) for _ in range(n)]
    for i, b in enumerate(batches):
        b[0, 0, 0, 0] = i  # a tag the spy reads
    return batches


def _train(ahead: bool | None, batches, log: list) -> list[torch.Tensor]:
    """4 MoCo steps from the same initialisation; ahead=None: `train_step` as before (views inline)."""
    torch.manual_seed(0)
    model = MoCo(build_backbone("resnet18_quarter", low_dim=16), dim=16, K=32, m=0.99, T=0.2)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    views, device, gen = SpyViews(log), torch.device("cpu"), views_generator(0, 0, 0)
    losses = []
    if ahead is None:
        for i, images in enumerate(batches):
            losses.append(train_step(model, views, optimizer, images, device, gen)[0])
            log.append(("step", i))
        return losses
    for i, (images, im_q, im_k) in enumerate(ViewsAhead(views, gen, device, ahead=ahead)(batches)):
        assert int(images[0, 0, 0, 0]) == i  # each batch with its own views
        losses.append(step_on_views(model, optimizer, im_q, im_k, device)[0])
        log.append(("step", i))
    return losses


def test_views_ahead_give_the_serial_losses_bit_for_bit():
    batches = _batches()
    serial_log, ahead_log, inline_log = [], [], []
    serial = _train(False, batches, serial_log)
    ahead = _train(True, batches, ahead_log)
    inline = _train(None, batches, inline_log)
    assert torch.equal(torch.stack(serial), torch.stack(ahead)) and torch.equal(torch.stack(serial), torch.stack(inline))
    assert len(set(torch.stack(serial).tolist())) == 4  # real steps: the loss moves
    assert serial_log == [("views", 0), ("step", 0), ("views", 1), ("step", 1), ("views", 2), ("step", 2),
                          ("views", 3), ("step", 3)]
    assert ahead_log == [("views", 0), ("views", 1), ("step", 0), ("views", 2), ("step", 1), ("views", 3),
                         ("step", 2), ("step", 3)]


def test_views_draw_only_from_their_generator():
    """Shuffle BN and dropout-free MoCo draw from torch's global RNG; the views never do."""
    images = _batches(1)[0]
    views = MoCoViews(32, mean=[0.5] * 3, std=[0.25] * 3, border=4, jpeg=False)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    q1, k1 = views(images, views_generator(3, 1, 2))
    assert torch.equal(torch.get_rng_state(), before)
    q2, k2 = views(images, views_generator(3, 1, 2))
    assert torch.equal(q1, q2) and torch.equal(k1, k2)
    q3, _ = views(images, views_generator(3, 1, 3))  # the next epoch: other views
    assert not torch.equal(q1, q3)


def test_an_empty_epoch_yields_nothing():
    views = MoCoViews(32, mean=[0.5] * 3, std=[0.25] * 3, jpeg=False)
    assert list(ViewsAhead(views, views_generator(0, 0, 0), torch.device("cpu"))([])) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_views_ahead_on_a_side_stream_match_the_serial_views_on_cuda():
    device = torch.device("cuda")
    views = MoCoViews(32, mean=[0.5] * 3, std=[0.25] * 3, border=4).to(device)
    batches = [b.to(device) for b in _batches()]
    serial = [(q.clone(), k.clone()) for _, q, k in ViewsAhead(views, views_generator(0, 0, 0), device, False)(batches)]
    ahead = []
    for _, q, k in ViewsAhead(views, views_generator(0, 0, 0), device, True)(batches):
        ahead.append((q.clone(), k.clone()))
        torch.cuda._sleep(1_000_000)  # a long "step" on the current stream while the next views run
    for (q1, k1), (q2, k2) in zip(serial, ahead):
        assert torch.equal(q1, q2) and torch.equal(k1, k2)
