"""MoCo: logits, queue, momentum, state round-trip, and DDP gather + shuffle-BN under gloo."""

import copy
import io
import math
import socket

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from landmarks import dist
from landmarks.losses import info_nce
from landmarks.models import MoCo, positive_logit, positive_probability


class TinyEncoder(nn.Module):
    """conv + BN + pool + linear: small, but its BN makes shuffle-BN observable."""

    def __init__(self, dim=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, dim)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def _keys(encoder, im):
    return F.normalize(encoder(im), dim=1)


def test_logits_labels_and_positive_by_hand():
    torch.manual_seed(0)
    model = MoCo(TinyEncoder(4), dim=4, K=8, m=0.9, T=0.07).train()
    with torch.no_grad():  # make the encoders differ so the momentum step matters
        for p in model.encoder_q.parameters():
            p.add_(0.3 * torch.randn_like(p))
    im_q, im_k = torch.randn(4, 3, 6, 6), torch.randn(4, 3, 6, 6)
    ref = copy.deepcopy(model)
    queue_before = model.queue.clone()

    logits, labels = model(im_q, im_k)

    assert logits.shape == (4, 1 + 8) and labels.dtype == torch.long and labels.tolist() == [0, 0, 0, 0]
    q = _keys(ref.encoder_q, im_q)
    ref.momentum_update()
    k = _keys(ref.encoder_k, im_k)  # BN over the whole batch: shuffling within it changes nothing
    torch.testing.assert_close(logits[:, 0], (q * k).sum(1) / 0.07, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[:, 1:], q @ queue_before / 0.07, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.queue[:, :4], k.T, atol=1e-6, rtol=1e-5)

    loss = info_nce(logits, labels)
    loss.backward()
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.encoder_k.parameters())


def test_queue_pointer_wraps_around():
    torch.manual_seed(1)
    model = MoCo(TinyEncoder(4), dim=4, K=8, m=1.0).eval()  # m=1, eval BN: keys are a fixed function
    batches = [torch.randn(4, 3, 6, 6) for _ in range(3)]
    expected_ptr = [4, 0, 4]
    for step, im in enumerate(batches):
        model(im, im)
        assert int(model.queue_ptr) == expected_ptr[step]
    with torch.no_grad():
        k1, k2 = _keys(model.encoder_k, batches[1]), _keys(model.encoder_k, batches[2])
    torch.testing.assert_close(model.queue[:, 4:8], k1.T)  # 2nd batch filled the end
    torch.testing.assert_close(model.queue[:, 0:4], k2.T)  # 3rd batch wrapped to the start
    torch.testing.assert_close(model.queue.norm(dim=0), torch.ones(8))


def test_batches_straddle_the_end_of_the_queue_as_memorymoco():
    """K=10, batches of 4 (the last of an epoch may be any size): columns 0-3, 4-7, then 8, 9, 0, 1."""
    torch.manual_seed(2)
    model = MoCo(TinyEncoder(4), dim=4, K=10, m=1.0).eval()
    batches = [torch.randn(4, 3, 6, 6) for _ in range(3)] + [torch.randn(3, 3, 6, 6)]
    for im, ptr in zip(batches, [4, 8, 2, 5]):
        model(im, im)
        assert int(model.queue_ptr) == ptr
    with torch.no_grad():
        k3, k4 = _keys(model.encoder_k, batches[2]), _keys(model.encoder_k, batches[3])
    torch.testing.assert_close(model.queue[:, [8, 9, 0, 1]], k3.T)
    torch.testing.assert_close(model.queue[:, 2:5], k4.T)


def test_batch_larger_than_the_queue_is_refused_without_side_effects():
    model = MoCo(TinyEncoder(4), dim=4, K=3)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"K=3 is smaller than the global batch 4"):
        model(torch.randn(4, 3, 6, 6), torch.randn(4, 3, 6, 6))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_initial_queue_is_memorymocos_uniform_rows():
    """NCEAverage.MemoryMoCo: rand(K, dim) * 2 s - s with s = 1 / sqrt(dim / 3): uniform, not normalised,
    with an expected squared norm of 1 per key."""
    torch.manual_seed(0)
    model = MoCo(TinyEncoder(128), dim=128, K=4096)
    s = 1 / math.sqrt(128 / 3)
    assert model.queue.shape == (128, 4096)
    assert model.queue.min() >= -s and model.queue.max() <= s and model.queue.min() < -0.99 * s
    norms = model.queue.norm(dim=0)
    assert norms.std() > 0.01 and abs(float((norms ** 2).mean()) - 1.0) < 0.01
    counts = torch.histc(model.queue.flatten(), bins=4, min=-s, max=s)  # uniform: equal quarters
    assert (counts / counts.sum() - 0.25).abs().max() < 0.01
    assert abs(float(model.key_similarity())) < 0.01  # cosines of the (normalised) random keys


def test_momentum_update_math():
    model = MoCo(TinyEncoder(4), dim=4, K=8)
    with torch.no_grad():
        for i, (pq, pk) in enumerate(zip(model.encoder_q.parameters(), model.encoder_k.parameters())):
            pq.fill_(2.0 + i)
            pk.fill_(-1.0)
    model.momentum_update(m=0.75)
    for i, pk in enumerate(model.encoder_k.parameters()):
        torch.testing.assert_close(pk, torch.full_like(pk, 0.75 * -1.0 + 0.25 * (2.0 + i)))
    model.m = 0.5
    model.momentum_update()
    first = next(model.encoder_k.parameters())
    torch.testing.assert_close(first, torch.full_like(first, 0.5 * (0.75 * -1.0 + 0.25 * 2.0) + 0.5 * 2.0))


def test_state_round_trip_is_bit_exact():
    torch.manual_seed(3)
    model = MoCo("resnet18", dim=128, K=16).train()
    im = torch.randn(8, 3, 32, 32)
    model(im, im.flip(-1))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(99)
    restored = MoCo("resnet18", dim=128, K=16).train()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for (ka, va), (kb, vb) in zip(model.state_dict().items(), restored.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    assert int(restored.queue_ptr) == 8
    torch.manual_seed(5)
    logits_a, _ = model(im, im)
    torch.manual_seed(5)
    logits_b, _ = restored(im, im)
    assert torch.equal(logits_a, logits_b)


def test_positive_probability_and_the_official_prob():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    e2 = torch.exp(torch.tensor(2.0))
    expected = (e2 / (e2 + 2) + 1 / 3) / 2
    torch.testing.assert_close(positive_probability(logits), expected)
    # train_moco.py's `prob = out[:, 0].mean()`: the logits are already <q, k> / T
    assert float(positive_logit(logits)) == pytest.approx(1.0)


def test_dist_helpers_single_process():
    x = torch.arange(6.0).reshape(3, 2)
    assert dist.rank() == 0 and dist.world_size() == 1 and dist.is_rank_zero()
    assert dist.concat_all_gather(x) is x and dist.broadcast(x) is x and dist.all_reduce_mean(x) is x
    assert dist.rank_zero_only(lambda: 7)() == 7


# ----------------------------------------------------------------------------- 2 processes, gloo

WORLD, LOCAL_BATCH, K, DIM = 2, 2, 8, 4


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data():
    g = torch.Generator().manual_seed(1)
    n = WORLD * LOCAL_BATCH
    return torch.randn(n, 3, 6, 6, generator=g), torch.randn(n, 3, 6, 6, generator=g)


def _fresh_model():
    torch.manual_seed(0)
    return MoCo(TinyEncoder(DIM), dim=DIM, K=K, m=0.9).train()


def _dist_worker(rank, port, out_dir, perm_seed):
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        gathered = dist.concat_all_gather(torch.tensor([[rank, 10 * rank]]))
        token = dist.broadcast(torch.tensor([rank + 5]), src=0)
        mean = dist.all_reduce_mean(torch.tensor([float(rank)]))
        model = _fresh_model()
        im_q, im_k = _data()
        local = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        torch.manual_seed(perm_seed + rank)  # only rank 0's permutation may be used
        logits, _ = model(im_q[local], im_k[local])
        torch.save(
            {
                "rank": dist.rank(),
                "world": dist.world_size(),
                "gathered": gathered,
                "token": token,
                "mean": mean,
                "logits": logits.detach(),
                "queue": model.queue,
                "ptr": model.queue_ptr,
            },
            f"{out_dir}/rank{rank}.pt",
        )
        with pytest.raises(ValueError, match="global batch 10"):  # 5 per worker x 2 workers > K = 8
            model(torch.randn(5, 3, 6, 6), torch.randn(5, 3, 6, 6))
    finally:
        tdist.destroy_process_group()


def _splits_pairs(perm):
    """True when the permutation moves samples to another rank's BN batch."""
    groups = perm.view(WORLD, LOCAL_BATCH)
    return any(
        set(g.tolist()) != set(range(r * LOCAL_BATCH, (r + 1) * LOCAL_BATCH)) for r, g in enumerate(groups)
    )


def test_ddp_gather_and_shuffle_bn_match_single_process(tmp_path):
    perm_seed = next(
        s for s in range(100) if _splits_pairs(torch.randperm(4, generator=torch.Generator().manual_seed(s)))
    )
    mp.spawn(_dist_worker, args=(_free_port(), str(tmp_path), perm_seed), nprocs=WORLD, join=True)
    outs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    # single-process reference of the same step
    ref = _fresh_model()
    im_q, im_k = _data()
    queue0 = ref.queue.clone()
    torch.manual_seed(perm_seed)
    perm = torch.randperm(WORLD * LOCAL_BATCH)
    with torch.no_grad():
        qs = [_keys(ref.encoder_q, im_q[r * LOCAL_BATCH : (r + 1) * LOCAL_BATCH]) for r in range(WORLD)]
        ref.momentum_update()
        shuffled = im_k[perm]
        k_shuf = torch.cat([_keys(ref.encoder_k, c) for c in shuffled.split(LOCAL_BATCH)])  # per-rank BN
        k_all = k_shuf[torch.argsort(perm)]
        k_no_shuffle = torch.cat([_keys(ref.encoder_k, c) for c in im_k.split(LOCAL_BATCH)])
    assert not torch.allclose(k_all, k_no_shuffle, atol=1e-4)  # shuffle-BN is observable here

    for r, out in enumerate(outs):
        assert out["rank"] == r and out["world"] == WORLD
        assert out["gathered"].tolist() == [[0, 0], [1, 10]]
        assert out["token"].tolist() == [5] and out["mean"].tolist() == [0.5]
        k_r = k_all[r * LOCAL_BATCH : (r + 1) * LOCAL_BATCH]
        expected = torch.cat([(qs[r] * k_r).sum(1, keepdim=True), qs[r] @ queue0], dim=1) / ref.T
        torch.testing.assert_close(out["logits"], expected, atol=1e-5, rtol=1e-5)
        expected_queue = queue0.clone()
        expected_queue[:, : WORLD * LOCAL_BATCH] = k_all.T  # keys of *all* ranks, in rank order
        torch.testing.assert_close(out["queue"], expected_queue, atol=1e-6, rtol=1e-5)
        assert int(out["ptr"]) == WORLD * LOCAL_BATCH


def test_key_similarity_known_values():
    model = MoCo("resnet18", dim=4, K=4)
    model.queue.copy_(torch.eye(4))  # orthogonal keys
    assert float(model.key_similarity()) == pytest.approx(0.0, abs=1e-6)
    model.queue.copy_(F.normalize(torch.ones(4, 4), dim=0))  # one direction: collapsed
    assert float(model.key_similarity()) == pytest.approx(1.0, abs=1e-6)
    model.queue.copy_(torch.tensor([[1.0, 1.0, -1.0, -1.0], [0.0] * 4, [0.0] * 4, [0.0] * 4]))
    # pairs: 2 of +1 (0-1, 2-3) and 4 of -1 among the 6 -> mean -1/3
    assert float(model.key_similarity()) == pytest.approx(-1 / 3, abs=1e-6)


def test_key_similarity_matches_pairwise_mean():
    torch.manual_seed(0)
    model = MoCo("resnet18", dim=8, K=32)
    keys = F.normalize(torch.randn(8, 32) + 0.5, dim=0)
    model.queue.copy_(keys)
    gram = keys.T @ keys
    expected = (gram.sum() - gram.diagonal().sum()) / (32 * 31)
    torch.testing.assert_close(model.key_similarity(), expected)
