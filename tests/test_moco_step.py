"""One MoCo pretraining step (landmarks.train.moco_step) in fp32 and bf16 (train.precision), on CPU and CUDA."""

from __future__ import annotations

import pytest
import torch

from landmarks.augment import MoCoViews
from landmarks.config import PretrainConfig
from landmarks.models import MoCo
from landmarks.precision import autocast
from landmarks.train.moco_step import build_moco, compile_encoders, prepare_moco, queue_sha256, train_step


def _setup(device: torch.device, batch: int = 8, size: int = 32):
    torch.manual_seed(0)
    cfg = PretrainConfig.model_validate({"model": {"backbone": "resnet18"}, "data": {"image_size": size},
                                         "moco": {"queue_size": 64}, "train": {"batch_size": batch}})
    model = build_moco(cfg).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    views = MoCoViews(size, mean=[0.5] * 3, std=[0.25] * 3, border=4).to(device)
    images = torch.randint(0, 256, (batch, size + 8, size + 8, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1)).to(device)
    return model, views, optimizer, images


def _run(device: torch.device, steps: int = 3, precision: str = "fp32"):
    model, views, optimizer, images = _setup(device)
    queue0, weight0 = queue_sha256(model), model.encoder_q.conv1.weight.detach().clone()
    out = [train_step(model, views, optimizer, images, device, precision=precision) for _ in range(steps)]
    return model, queue0, weight0, out


def test_step_updates_encoder_and_queue_and_keeps_results_on_device():
    device = torch.device("cpu")
    model, queue0, weight0, out = _run(device)
    loss, pos, prob = out[-1]
    assert loss.shape == () and pos.shape == () and prob.shape == () and not loss.requires_grad
    # InfoNCE over 1 + 64 candidates starts near log(65) and stays finite.
    assert all(torch.isfinite(lo) and 0 < lo.item() < 10 for lo, _, _ in out)
    assert 0.0 <= pos.item() <= 1.0 and -1 / 0.07 <= prob.item() <= 1 / 0.07  # <q, k+> / T
    assert int(model.queue_ptr) == (3 * 8) % 64 and queue_sha256(model) != queue0
    assert not torch.equal(model.encoder_q.conv1.weight, weight0)
    # Only the query encoder gets gradients; the key encoder follows by momentum.
    assert all(p.grad is None for p in model.encoder_k.parameters())


def test_prepare_moco_compiles_encoders_only_when_asked():
    cfg = {"model": {"backbone": "resnet18"}, "moco": {"queue_size": 64}, "train": {"batch_size": 8}}
    eager = prepare_moco(PretrainConfig.model_validate(cfg), torch.device("cpu"))
    cfg["train"]["compile"] = True
    compiled = prepare_moco(PretrainConfig.model_validate(cfg), torch.device("cpu"))
    assert eager.encoder_q._compiled_call_impl is None
    assert compiled.encoder_q._compiled_call_impl is not None and compiled.encoder_k._compiled_call_impl is not None
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints load either way


def test_compiled_step_matches_eager(tmp_path, monkeypatch):
    """A real torch.compile of a small encoder: same losses and weights as the eager step."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # not the user's /tmp cache
    def small_moco() -> MoCo:
        torch.manual_seed(0)
        encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                      torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 16))
        return MoCo(encoder, dim=16, K=32, m=0.9)

    torch._dynamo.reset()
    views = MoCoViews(16, mean=[0.5] * 3, std=[0.25] * 3, jpeg=False)
    images = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    runs = []
    for compiled in (False, True):
        model = small_moco()
        if compiled:
            compile_encoders(model)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        torch.manual_seed(2)  # shuffle BN's permutation
        losses = [train_step(model, views, optimizer, images, torch.device("cpu"))[0].item()
                  for _ in range(3)]
        runs.append((losses, model.encoder_k[0].weight.detach().clone(), model.queue.clone()))
    assert any((tmp_path / "inductor").rglob("*.py"))  # inductor generated code: it was compiled, not skipped
    (eager_losses, eager_wk, eager_queue), (comp_losses, comp_wk, comp_queue) = runs
    assert eager_losses == pytest.approx(comp_losses, abs=1e-4)
    torch.testing.assert_close(comp_wk, eager_wk, atol=1e-5, rtol=0)
    torch.testing.assert_close(comp_queue, eager_queue, atol=1e-5, rtol=0)


def test_precision_is_fp32_by_default_and_bf16_when_asked():
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        with autocast(torch.device("cpu"), precision):
            y = torch.ones(2, 2) @ torch.ones(2, 2)
        assert y.dtype == dtype
    with autocast(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="fp32, bf16"):
        autocast(torch.device("cpu"), "fp16")


def test_cpu_step_in_bf16_trains_and_stays_near_fp32():
    """train.precision=bf16 on the CPU (autocast; the loss in fp32): finite, updating, and its first loss on
    identical weights and views within bf16's rounding of fp32's."""
    first = {}
    for precision in ("fp32", "bf16"):
        model, views, optimizer, images = _setup(torch.device("cpu"))
        torch.manual_seed(3)
        out = [train_step(model, views, optimizer, images, torch.device("cpu"), torch.Generator().manual_seed(4),
                          precision) for _ in range(2)]
        assert all(torch.isfinite(lo) for lo, _, _ in out)
        first[precision] = out[0][0].item()
    assert first["bf16"] == pytest.approx(first["fp32"], rel=0.05)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_runs_in_bf16_channels_last_and_agrees_with_fp32():
    device = torch.device("cuda")
    model, _, _, out = _run(device, precision="bf16")
    assert model.encoder_q.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(lo).item() for lo, _, _ in out)
    with autocast(device, "bf16"):
        y = torch.ones(4, 4, device=device) @ torch.ones(4, 4, device=device)
    assert y.dtype == torch.bfloat16
    # The first step's loss, before any update, in bf16 vs fp32 on identical weights and views.
    model, views, _, images = _setup(device)
    model.train()
    torch.manual_seed(5)
    im_q, im_k = views(images)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad(), autocast(device, "bf16"):
        bf16_logits, _ = model(im_q.contiguous(memory_format=torch.channels_last),
                               im_k.contiguous(memory_format=torch.channels_last))
    model.load_state_dict(state)
    with torch.no_grad():
        fp32_logits, _ = model(im_q, im_k)
    torch.testing.assert_close(bf16_logits.float(), fp32_logits, atol=0.35, rtol=0.05)
