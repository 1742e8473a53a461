"""`Representation`, the one module that turns stage outputs into the hypercolumn / conv4 / projected maps:
the same numbers as the code it replaced (projector training's block projector, fine-tuning's network),
the stage rule, its `to`, and the one list of kinds."""

from typing import get_args

import pytest
import torch

from landmarks.config import RepresentationKind
from landmarks.models import LandmarkRegressor, Projector, build_backbone
from landmarks.models.representation import (
    Representation,
    assemble,
    landmarks_from_blocks,
    linear_over_blocks,
    num_stages,
    stage_indices,
)
from landmarks.registry import BACKBONE_REPRESENTATIONS, REPRESENTATIONS
from landmarks.train.finetune_loop import LandmarkNet
from landmarks.train.projector_loop import frozen_stages


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return build_backbone("resnet18").eval().requires_grad_(False)


def test_projected_representation_equals_projector_on_the_hypercolumn(backbone):
    torch.manual_seed(0)
    projector = Projector(960, 16)
    rep = Representation("projected", backbone, {}, projector, 4, [0.5] * 3, [0.25] * 3)
    with torch.no_grad():
        stages = backbone.stages(torch.randn(2, 3, 32, 32))
        expected = projector(assemble(stages, "hypercolumn", 4, (16, 16)))
        got = rep(stages, (16, 16))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("layers", [4, 2])
def test_projector_training_computes_what_the_block_projector_did(backbone, layers):
    """The old path: frozen blocks layer4, layer3, ... (float32), the projector's conv block by block
    (`linear_over_blocks`), its spatial softmax; the same numbers, and the same gradients."""
    torch.manual_seed(1)
    projector = Projector(sum([512, 256, 128, 64][:layers]), 8)
    rep = Representation("projected", backbone, {}, projector, layers, [0.5] * 3, [0.25] * 3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        old_blocks = [s.float() for s in backbone.stages(x, num_stages=4)[::-1][:layers]]
    conv = projector.proj
    old = projector.activate(linear_over_blocks(old_blocks, conv.weight, conv.bias, (8, 8)))
    new = rep(frozen_stages(rep, x), (8, 8))
    assert torch.equal(new, old)
    old_grad = torch.autograd.grad(old.square().sum(), conv.weight)[0]
    new_grad = torch.autograd.grad(new.square().sum(), conv.weight)[0]
    assert torch.equal(new_grad, old_grad)


@pytest.mark.parametrize("kind", ["conv4", "hypercolumn"])
def test_landmark_net_computes_what_it_did_and_keeps_its_state_dict(kind):
    torch.manual_seed(0)
    net = LandmarkNet(build_backbone("resnet18"), 5, kind, 4, (16, 16)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        stages = net.backbone.stages(x, num_stages=3 if kind == "conv4" else 4)
        blocks = [stages[2]] if kind == "conv4" else stages[::-1]
        size = tuple(blocks[0].shape[-2:]) if kind == "conv4" else (16, 16)
        old = landmarks_from_blocks(net.regressor, [b.float() for b in blocks], size)
        assert torch.equal(net(x), old)
    # Checkpoints hold the backbone's and the regressor's weights under the same names as before.
    assert {k.split(".")[0] for k in net.state_dict()} == {"backbone", "regressor"}
    assert net.regressor.heatmaps.in_channels == (256 if kind == "conv4" else 960)
    with pytest.raises(ValueError, match="conv4 or hypercolumn"):
        LandmarkNet(build_backbone("resnet18"), 5, "projected")


def test_landmark_net_takes_regressor_weights_like_a_plain_regressor(backbone):
    torch.manual_seed(0)
    net = LandmarkNet(build_backbone("resnet18"), 5, "hypercolumn", 4, (16, 16)).eval()
    regressor = LandmarkRegressor(960, 5)
    regressor.load_state_dict(net.regressor.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = Representation("hypercolumn", net.backbone, {}, None, 4, None, None).landmarks(
            regressor, net.backbone.stages(x), (16, 16))
        assert torch.equal(net(x), expected)


def test_stage_rule():
    assert stage_indices("conv4") == [2]  # conv4_x is torchvision's layer3, alone
    assert stage_indices("hypercolumn") == [3, 2, 1, 0] == stage_indices("projected")
    assert stage_indices("hypercolumn", layers=2) == [3, 2]
    assert (num_stages("conv4"), num_stages("hypercolumn"), num_stages("projected")) == (3, 4, 4)
    with pytest.raises(ValueError, match="valid choices"):
        stage_indices("conv5")
    with pytest.raises(ValueError, match="layers"):
        stage_indices("hypercolumn", layers=0)


def test_conv4_representation_computes_no_layer4(backbone):
    rep = Representation("conv4", backbone, {}, None, 4, [0.5] * 3, [0.25] * 3)
    stages = rep.stages(torch.zeros(2, 32, 32, 3, dtype=torch.uint8))
    assert len(stages) == 3 and rep.dense(stages, (16, 16)).shape == (2, 256, 2, 2)


def test_to_sets_the_input_device_and_eval_mode(backbone):
    rep = Representation("hypercolumn", build_backbone("resnet18"), {}, None, 4, [0.5] * 3, [0.25] * 3)
    assert rep.training and rep.backbone.training
    assert rep.to("cpu") is rep and rep.device == torch.device("cpu") and not rep.backbone.training
    rep.train()
    rep.to(memory_format=torch.channels_last)  # no device: the mode stays
    assert rep.backbone.training
    with pytest.raises(ValueError, match="projector goes with"):
        Representation("projected", backbone, {}, None, 4, [0.5] * 3, [0.25] * 3)
    with pytest.raises(ValueError, match="valid choices"):
        Representation("conv5", backbone, {}, None, 4, [0.5] * 3, [0.25] * 3)


def test_one_list_of_kinds():
    assert get_args(RepresentationKind) == REPRESENTATIONS == ("hypercolumn", "conv4", "projected")
    assert set(BACKBONE_REPRESENTATIONS) == set(REPRESENTATIONS) - {"projected"}
