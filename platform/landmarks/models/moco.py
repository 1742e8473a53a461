"""MoCo v1: query encoder, momentum key encoder and a queue of negative keys.

Follows facebookresearch/moco ``moco/builder.py`` (He et al., CVPR 2020) with
the paper's settings (Cheng et al. Sec. 4, SPEC "Paper settings"): queue
K=4096, momentum m=0.999, temperature T=0.07, 128-d linear head (no MLP).
Differences from builder.py, each as the paper's own code (contrast-landmark
``NCE/NCEAverage.py`` ``MemoryMoCo``): the queue starts as its uniform rows, U(-s, s)
with s = 1 / sqrt(dim / 3), and the enqueue pointer wraps around the queue, so any
batch up to K fits (the last, smaller batch of an epoch included). No ``.cuda()``
(tensors stay on the input's device); the distributed helpers of ``landmarks.dist``
degrade to one process (so shuffle-BN shuffles within the batch and the gather is the
identity).

Everything stateful is a parameter or a buffer (both encoders, ``queue``,
``queue_ptr``), so ``state_dict`` / ``torch.save`` round-trip it exactly.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from landmarks import dist
from landmarks.models.backbones import build_backbone


class MoCo(nn.Module):
    """Query/key encoders + queue; ``forward`` returns InfoNCE logits and labels.

    Args:
        encoder: a registered backbone name (built with ``low_dim=dim``) or a
            module mapping (B, 3, H, W) -> (B, dim); the key encoder is a deep copy.
        dim: embedding size (128, MoCo v1 default).
        K: queue size, number of negatives (4096, paper Sec. 4).
        m: key-encoder momentum (0.999, builder.py default).
        T: softmax temperature (0.07, builder.py default).
    """

    def __init__(
        self,
        encoder: str | nn.Module = "resnet50",
        dim: int = 128,
        K: int = 4096,
        m: float = 0.999,
        T: float = 0.07,
    ) -> None:
        super().__init__()
        if K < 1 or dim < 1:
            raise ValueError(f"MoCo needs K >= 1 and dim >= 1, got K={K}, dim={dim}")
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"MoCo momentum m must be in [0, 1], got {m}")
        if T <= 0:
            raise ValueError(f"MoCo temperature T must be > 0, got {T}")
        self.K, self.m, self.T = int(K), float(m), float(T)
        self.encoder_q = build_backbone(encoder, low_dim=dim) if isinstance(encoder, str) else encoder
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for param_k in self.encoder_k.parameters():
            param_k.requires_grad = False  # updated by momentum only

        stdv = 1.0 / math.sqrt(dim / 3)  # MemoryMoCo: rand(K, dim) * 2 s - s, rows not normalised
        self.register_buffer("queue", torch.rand(K, dim).mul_(2 * stdv).add_(-stdv).T.contiguous())  # (C, K)
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @property
    def dim(self) -> int:
        return self.queue.shape[0]

    @torch.no_grad()
    def momentum_update(self, m: float | None = None) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q over parameters (not BN buffers)."""
        m = self.m if m is None else float(m)
        params_k = list(self.encoder_k.parameters())
        params_q = [p.detach() for p in self.encoder_q.parameters()]
        if len(params_k) != len(params_q):
            raise RuntimeError(f"key encoder has {len(params_k)} parameters, query encoder {len(params_q)}")
        torch._foreach_mul_(params_k, m)  # one fused kernel per op on GPU, not one per parameter
        torch._foreach_add_(params_k, params_q, alpha=1.0 - m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys_nc: torch.Tensor) -> None:
        keys_nc = dist.concat_all_gather(keys_nc)  # (N_global, C)
        n = keys_nc.shape[0]
        assert n <= self.K, "checked in forward"
        # Columns ptr .. ptr+n-1 modulo K (MemoryMoCo's fmod): a batch may straddle the end. By index, so
        # the pointer never has to be read back from the GPU.
        columns = (self.queue_ptr + torch.arange(n, device=self.queue_ptr.device)).remainder_(self.K)
        self.queue.index_copy_(1, columns, keys_nc.T.to(self.queue.dtype))
        self.queue_ptr.add_(n).remainder_(self.K)

    @torch.no_grad()
    def _batch_shuffle(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shuffle the global batch across ranks so BN statistics leak no pairing (shuffle BN)."""
        n_local = x.shape[0]
        x_all = dist.concat_all_gather(x)
        n_all = x_all.shape[0]
        idx_shuffle = torch.randperm(n_all, device=x.device)
        dist.broadcast(idx_shuffle, src=0)  # every rank uses rank 0's permutation
        idx_unshuffle = torch.argsort(idx_shuffle)
        idx_this = idx_shuffle.view(n_all // n_local, n_local)[dist.rank()]
        return x_all[idx_this], idx_unshuffle

    @torch.no_grad()
    def _batch_unshuffle(self, x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
        n_local = x.shape[0]
        x_all = dist.concat_all_gather(x)
        idx_this = idx_unshuffle.view(-1, n_local)[dist.rank()]
        return x_all[idx_this]

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views (N, 3, H, W) each -> logits (N, 1+K) (positive at index 0), labels (N,) zeros.

        Side effects (as in builder.py): momentum update of the key encoder and
        enqueue of this step's keys (gathered over ranks).

        Raises:
            ValueError: the views' batch sizes differ, or the global batch (per-rank batch x
                world size) is larger than the queue.
        """
        if im_q.shape[0] != im_k.shape[0]:
            raise ValueError(f"query and key batches differ: {im_q.shape[0]} vs {im_k.shape[0]}")
        global_batch = im_q.shape[0] * dist.world_size()
        if global_batch > self.K:
            raise ValueError(
                f"MoCo queue size K={self.K} is smaller than the global batch {global_batch} "
                f"({im_q.shape[0]} per worker x {dist.world_size()} workers); raise moco.queue_size or lower "
                f"train.batch_size"
            )

        q = F.normalize(self.encoder_q(im_q), dim=1)  # (N, C)
        if q.shape[1] != self.dim:
            raise ValueError(
                f"encoder outputs {q.shape[1]}-d embeddings but the queue holds {self.dim}-d keys"
            )

        with torch.no_grad():  # no gradient to keys
            self.momentum_update()
            im_k, idx_unshuffle = self._batch_shuffle(im_k)
            k = F.normalize(self.encoder_k(im_k), dim=1)  # (N, C)
            k = self._batch_unshuffle(k, idx_unshuffle)

        l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)  # (N, 1)
        l_neg = torch.einsum("nc,ck->nk", q, self.queue.clone().detach())  # (N, K)
        logits = torch.cat([l_pos, l_neg], dim=1) / self.T  # (N, 1+K)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)

        self._dequeue_and_enqueue(k)
        return logits, labels

    @torch.no_grad()
    def key_similarity(self) -> torch.Tensor:
        """Mean cosine similarity between two different keys in the queue, a 0-d tensor.

        A collapse detector: near 0 for spread-out keys, towards 1 when every image maps to
        about the same embedding (seen with a learning rate too high for the batch, e.g. 0.06 at
        batch 64). For unit columns k_i, sum_{i != j} <k_i, k_j> = |sum_i k_i|^2 - K, so it is one
        reduction over the (C, K) queue. Includes the random initial keys until they are replaced
        (normalised here: the initial rows are not unit vectors).
        """
        total = F.normalize(self.queue.float(), dim=0).sum(dim=1)  # (C,)
        k = self.K
        return (total.dot(total) - k) / max(k * (k - 1), 1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, K={self.K}, m={self.m}, T={self.T}"


@torch.no_grad()
def positive_probability(logits_nk: torch.Tensor) -> torch.Tensor:
    """Mean softmax probability of the positive key (index 0), a scalar for logging."""
    return torch.softmax(logits_nk.detach().float(), dim=1)[:, 0].mean()


@torch.no_grad()
def positive_logit(logits_nk: torch.Tensor) -> torch.Tensor:
    """The official ``prob`` (train_moco.py, logged as ``ins_prob``): the mean positive logit, <q, k+> / T."""
    return logits_nk.detach().float()[:, 0].mean()
