"""Backbone registry: Table 2 parameter counts, the shared interface, weight loading."""

import pytest
import torch
import torchvision

from landmarks.models import MoCo, build_backbone, load_backbone_weights
from landmarks.registry import ARCHITECTURES

TABLE2_PARAMS_M = {"resnet18": 11.24, "resnet50": 23.77, "resnet50_half": 6.03}
PARAMS_M = {**TABLE2_PARAMS_M, "resnet18_quarter": 0.72}  # the CPU demo's backbone, not in the paper
STAGE_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet50_half": (128, 256, 512, 1024),
    "resnet18_quarter": (16, 32, 64, 128),
}


def test_registry_is_the_papers_three_backbones_and_the_demos():
    assert set(ARCHITECTURES) == set(PARAMS_M)
    assert {n: s.params_m_table2 for n, s in ARCHITECTURES.items() if s.params_m_table2 is not None} == TABLE2_PARAMS_M


@pytest.mark.parametrize("name", sorted(PARAMS_M))
def test_parameter_count_matches_table2(name):
    with torch.device("meta"):  # counts only; no memory, no init cost
        model = build_backbone(name, low_dim=128)
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6, 2) == PARAMS_M[name]
    assert model.stage_channels == STAGE_CHANNELS[name]
    assert model.fc.out_features == 128


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_contract_forward_backward(name):
    """Every registered backbone: same interface, finite gradients everywhere."""
    torch.manual_seed(0)
    model = build_backbone(name, low_dim=16)
    assert model.name == name
    x = torch.randn(2, 3, 32, 32)
    stages = model.stages(x)
    assert [tuple(s.shape) for s in stages] == [
        (2, c, 32 // stride, 32 // stride) for c, stride in zip(model.stage_channels, (4, 8, 16, 32))
    ]
    assert model.pooled(x).shape == (2, model.stage_channels[-1])
    emb = model(x)
    assert emb.shape == (2, 16)
    emb.square().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert model.conv1.weight.grad.abs().sum() > 0


def test_stages_stops_early():
    model = build_backbone("resnet18").eval()
    calls = []
    model.layer4.register_forward_hook(lambda *a: calls.append(1))
    outs = model.stages(torch.randn(1, 3, 32, 32), num_stages=3)
    assert len(outs) == 3 and calls == []
    with pytest.raises(ValueError, match="num_stages"):
        model.stages(torch.randn(1, 3, 32, 32), num_stages=5)


def test_unknown_backbone_names_choices():
    with pytest.raises(ValueError, match="resnet50_half"):
        build_backbone("resnet34")
    with pytest.raises(ValueError, match="low_dim"):
        build_backbone("resnet18", low_dim=0)


def _body_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith("fc."))


def test_load_torchvision_imagenet_checkpoint(tmp_path):
    torch.manual_seed(1)
    tv = torchvision.models.resnet18(weights=None)  # 1000-class fc, torchvision key names
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(tv.state_dict(), path)
    model = build_backbone("resnet18")
    fc_before = model.fc.weight.clone()
    report = load_backbone_weights(model, path)
    assert torch.equal(model.conv1.weight, tv.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)
    assert set(report.skipped) == {"fc.weight", "fc.bias"} and "1000" in report.skipped["fc.weight"]
    assert torch.equal(model.fc.weight, fc_before)  # head keeps its init
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(tv.state_dict()) - 2
    assert str(path) in str(report)


def test_load_moco_checkpoint_takes_query_encoder(tmp_path):
    torch.manual_seed(2)
    moco = MoCo("resnet18", dim=128, K=16)
    with torch.no_grad():
        for p in moco.encoder_k.parameters():
            p.add_(1.0)  # make the key encoder differ from the query encoder
    ckpt = {
        "epoch": 7,
        "arch": "resnet18",
        "state_dict": {f"module.{k}": v for k, v in moco.state_dict().items()},
    }
    path = tmp_path / "checkpoint_0007.pth.tar"
    torch.save(ckpt, path)
    model = build_backbone("resnet18")
    report = load_backbone_weights(model, path)
    assert _body_equal(model, moco.encoder_q) and torch.equal(model.fc.weight, moco.encoder_q.fc.weight)
    assert not torch.equal(model.conv1.weight, moco.encoder_k.conv1.weight)
    assert report.missing == [] and report.unexpected == [] and report.skipped == {}

    # nested under "model" without the DDP prefix, in memory
    model2 = build_backbone("resnet18")
    load_backbone_weights(model2, {"model": moco.state_dict(), "step": 3})
    assert _body_equal(model2, moco.encoder_q)


def test_load_plain_state_dict_and_partial_report():
    src = build_backbone("resnet50_half")
    model = build_backbone("resnet50_half")
    report = load_backbone_weights(model, src.state_dict())
    assert _body_equal(model, src) and report.missing == []

    partial = {k: v for k, v in src.state_dict().items() if k != "layer1.0.conv1.weight"}
    with pytest.raises(ValueError, match="1 missing"):
        load_backbone_weights(build_backbone("resnet50_half"), partial)
    report = load_backbone_weights(build_backbone("resnet50_half"), partial, strict=False)
    assert report.missing == ["layer1.0.conv1.weight"]


@pytest.mark.parametrize("src_name,dst_name", [("resnet50_half", "resnet50"), ("resnet18", "resnet50_half")])
def test_refuses_other_architecture(tmp_path, src_name, dst_name):
    path = tmp_path / f"{src_name}.pt"
    torch.save({"state_dict": build_backbone(src_name).state_dict()}, path)
    model = build_backbone(dst_name)
    before = model.conv1.weight.clone()
    with pytest.raises(ValueError) as err:
        load_backbone_weights(model, path)
    assert f"'{src_name}'" in str(err.value) and f"'{dst_name}'" in str(err.value)
    assert torch.equal(model.conv1.weight, before)


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_backbone_weights(build_backbone("resnet18"), tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="no state dict found"):
        load_backbone_weights(build_backbone("resnet18"), {"epoch": 1, "optimizer": {"lr": 0.1}})
