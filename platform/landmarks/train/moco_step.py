"""One MoCo pretraining step, in plain PyTorch (no Ray): what every rank of pretraining runs,
and what benchmarks/train.py times on its own. Pretraining makes the views one batch ahead
(`augment.prefetch.ViewsAhead`) and runs `step_on_views`; `train_step` is both in one call.

The step runs in `train.precision` (fp32, or bf16 autocast); on CUDA with channels_last inputs and weights.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import torch

from ..augment import MoCoViews
from ..losses import info_nce
from ..models import MoCo, build_backbone, positive_logit, positive_probability
from ..precision import autocast

if TYPE_CHECKING:
    from ..config import PretrainConfig


def build_moco(cfg: PretrainConfig) -> MoCo:
    encoder = build_backbone(cfg.model.backbone, low_dim=cfg.model.low_dim)
    return MoCo(encoder, dim=cfg.model.low_dim, K=cfg.moco.queue_size, m=cfg.moco.momentum, T=cfg.moco.temperature)


def prepare_moco(cfg: PretrainConfig, device: torch.device) -> MoCo:
    """build_moco on `device`, channels_last on CUDA, both encoders compiled if cfg.train.compile."""
    model = build_moco(cfg).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.compile:
        compile_encoders(model)
    return model


def compile_encoders(model: MoCo, mode: str | None = None) -> MoCo:
    """`torch.compile` the query and key encoders in place (`nn.Module.compile`: state_dict keys,
    checkpoints and DDP are unchanged); the queue, shuffle BN and momentum update stay eager.

    At 96 px a ResNet step is bound by kernel launches more than by FLOPs (benchmarks/README.md),
    which fusing the BN/ReLU chains attacks: on an H100, resnet50 at 96 px, batch 1024, the
    network's step went from 13.8k to 20.4k images/s. Compilation is lazy: the first step pays
    for it (~70 s there). `mode` is torch.compile's (None = its default).
    """
    model.encoder_q.compile(mode=mode)
    model.encoder_k.compile(mode=mode)
    return model


def train_step(model, views: MoCoViews, optimizer, images_u8: torch.Tensor, device: torch.device,
               generator: torch.Generator | None = None, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One MoCo step on uint8 images (B, H, W, 3) on `device` -> (loss, positive prob, official prob),
    0-d tensors: the two views (drawn from `generator`), then `step_on_views`."""
    im_q, im_k = views(images_u8, generator)  # (B, 3, S, S) each
    return step_on_views(model, optimizer, im_q, im_k, device, precision)


def step_on_views(model, optimizer, im_q: torch.Tensor, im_k: torch.Tensor,
                  device: torch.device, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """The network part of a MoCo step on views (B, 3, S, S) -> 0-d tensors (loss, the positive key's mean
    softmax probability, the official ``prob``: its mean logit <q, k+> / T).

    The results stay on the device: reading them (`.item()`) waits for the GPU, so callers do
    that only when they log, and the CPU can queue the next step meanwhile.
    """
    if device.type == "cuda":
        im_q = im_q.contiguous(memory_format=torch.channels_last)
        im_k = im_k.contiguous(memory_format=torch.channels_last)
    with autocast(device, precision):
        logits, labels = model(im_q, im_k)  # (B, 1+K), (B,)
        loss = info_nce(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), positive_probability(logits), positive_logit(logits)


def queue_sha256(model: MoCo) -> str:
    """Fingerprint of the MoCo queue + pointer, to show a resume restored them bit-exactly."""
    h = hashlib.sha256()
    h.update(model.queue.detach().cpu().numpy().tobytes())
    h.update(model.queue_ptr.detach().cpu().numpy().tobytes())
    return h.hexdigest()
