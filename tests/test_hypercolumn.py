"""Hypercolumn / conv4 representations: channel counts, stage order, resizing."""

import pytest
import torch
import torch.nn.functional as F

from landmarks.models import assemble, block_channels, build_backbone
from landmarks.models.representation import conv4, dense_size, hypercolumn
from landmarks.registry import ARCHITECTURES

HYPERCOLUMN_CHANNELS = {"resnet18": 960, "resnet50": 3840, "resnet50_half": 1920, "resnet18_quarter": 240}
CONV4_CHANNELS = {"resnet18": 256, "resnet50": 1024, "resnet50_half": 512, "resnet18_quarter": 64}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build_backbone(name).eval() for name in ARCHITECTURES}


@pytest.mark.parametrize("name", sorted(HYPERCOLUMN_CHANNELS))
def test_shapes_at_paper_resolution(models, name):
    model = models[name]
    images = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        hc = hypercolumn(model, images)
        c4 = conv4(model, images)
    assert hc.shape == (1, HYPERCOLUMN_CHANNELS[name], 48, 48)
    assert c4.shape == (1, CONV4_CHANNELS[name], 6, 6)  # layer3's own map, as the official conv4
    assert sum(block_channels(model.stage_channels, "hypercolumn")) == HYPERCOLUMN_CHANNELS[name]
    assert sum(block_channels(model.stage_channels, "conv4")) == CONV4_CHANNELS[name]


def test_stage_order_and_bilinear_resize(models):
    model = models["resnet18"]
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        l1, l2, l3, l4 = model.stages(images)
        hc = hypercolumn(model, images, size=(20, 24))
        two = hypercolumn(model, images, layers=2, size=(20, 24))

    def up(x):
        return F.interpolate(x, size=(20, 24), mode="bilinear", align_corners=False)

    expected = torch.cat([up(l4), up(l3), up(l2), up(l1)], dim=1)
    assert hc.shape == (2, 960, 20, 24)
    torch.testing.assert_close(hc, expected)
    torch.testing.assert_close(two, expected[:, : 512 + 256])
    assert block_channels(model.stage_channels, "hypercolumn", layers=2) == [512, 256]


def test_conv4_skips_layer4_and_is_layer3_at_its_own_resolution(models):
    model = models["resnet50_half"]
    calls = []
    handle = model.layer4.register_forward_hook(lambda *a: calls.append(1))
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        c4 = assemble(model.stages(images, num_stages=3), "conv4", 4, (16, 16))
        layer3 = model.stages(images, num_stages=3)[2]
    handle.remove()
    assert calls == []
    assert layer3.shape[-2:] == (4, 4)
    torch.testing.assert_close(c4, layer3)  # its own 4x4 map: `size` is not used for conv4
    assert dense_size("conv4", 64) == (4, 4) and dense_size("conv4", 96) == (6, 6)
    assert dense_size("hypercolumn", 96) == (48, 48) and dense_size("hypercolumn", 128) == (48, 48)
    assert dense_size("hypercolumn", 64) == (32, 32)  # under 96 px: half the input


def test_gradients_flow_for_finetuning(models):
    model = build_backbone("resnet18")
    hc = hypercolumn(model, torch.randn(2, 3, 32, 32), size=(16, 16))
    hc.mean().backward()
    assert model.layer1[0].conv1.weight.grad.abs().sum() > 0


def test_bad_arguments(models):
    model = models["resnet18"]
    images = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="valid choices"):
        assemble(model.stages(images), "conv5", 4, (8, 8))
    with pytest.raises(ValueError, match="layers"):
        hypercolumn(model, images, layers=5)
    with pytest.raises(ValueError, match="valid choices"):
        block_channels(model.stage_channels, "conv5")
