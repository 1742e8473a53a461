"""The authors' released MoCo checkpoints as `backbone.source` (docs/official_checkpoints.md).

The official train_moco.py saves `{"opt": argparse.Namespace, "model": InsResNet*.state_dict(),
"contrast": MemoryMoCo.state_dict(), "optimizer": SGD.state_dict(), "epoch": int, "model_ema": ...}`,
the ResNet's keys under `encoder.module.` (nn.DataParallel inside InsResNet). These tests build that
layout from our own randomly initialised backbones, save it in the zip format, in the legacy format of
PyTorch 1.4 (the authors' version), and as PyTorch 1.4 wrote it from GPU tensors (`torch.cuda.*Storage`,
location `cuda:0`), and check that `load_backbone` gives exactly the weights our own `backbone.pt` format
gives: same fingerprint, same hypercolumn. Pure CPU, weights-only loading, no Ray.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickletools
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from landmarks.errors import UserError
from landmarks.models import build_backbone, load_backbone_weights
from landmarks.models.representation import hypercolumn
from landmarks.sources import fingerprint, load_backbone

ARCHS = ("resnet18", "resnet50", "resnet50_half")
IMAGES = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _opt(model: str, **extra) -> argparse.Namespace:
    """The Namespace train_moco.py's parse_option() returns (README's CelebA command line)."""
    return argparse.Namespace(
        print_freq=10, tb_freq=500, save_freq=20, batch_size=256, num_workers=12, epochs=800,
        learning_rate=0.03, lr_decay_epochs=[120, 160, 200], lr_decay_rate=0.1, beta1=0.5, beta2=0.999,
        weight_decay=1e-4, momentum=0.9, cosine=True, crop=0.2, image_crop=20, image_size=136,
        dataset="CelebA", data_folder="datasets/celeba", imagelist=None, model_name="moco_CelebA",
        model_path="/path/to/save/model", resume="", model=model, nce_k=4096, nce_t=0.07, nce_m=0.5,
        alpha=0.999, gpu=None, tb_path="/path/to/save/model_tensorboard", method="softmax",
        model_folder="/path/to/save/model/moco_CelebA", tb_folder="/path/to/tb/moco_CelebA", start_epoch=1,
        **extra,
    )


def _trained_backbone(arch: str, seed: int) -> torch.nn.Module:
    """One of our backbones after one real SGD step (so the optimizer state holds momentum buffers)."""
    torch.manual_seed(seed)
    backbone = build_backbone(arch)
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    backbone.train()
    backbone(IMAGES).square().mean().backward()
    optimizer.step()
    backbone._official_optimizer_state = optimizer.state_dict()
    return backbone.eval()


def _official_checkpoint(backbone: torch.nn.Module, opt_model: str, **opt_extra) -> dict:
    model = OrderedDict((f"encoder.module.{k}", v.clone()) for k, v in backbone.state_dict().items())
    model_ema = OrderedDict((k, v + 1 if v.is_floating_point() else v.clone()) for k, v in model.items())
    contrast = OrderedDict(params=torch.tensor([-1]), memory=torch.rand(64, 128))
    return {"opt": _opt(opt_model, **opt_extra), "model": model, "contrast": contrast,
            "optimizer": backbone._official_optimizer_state, "epoch": 800, "model_ema": model_ema}


def _pickle_end(data: bytes, start: int) -> int:
    """Offset just past the pickle that starts at `start`."""
    return start + next(pos for op, _, pos in pickletools.genops(data[start:]) if op.name == "STOP") + 1


def _as_pytorch14_gpu_file(data: bytes) -> bytes:
    """A legacy-format file as PyTorch 1.4 wrote it from CUDA tensors.

    PyTorch >= 1.6 pickles every storage as `torch.FloatStorage` with its device as location; 1.4 pickled
    the storage's own class (`torch.cuda.FloatStorage`) and location `cuda:0`. The legacy format is four
    protocol-2 pickles (magic, version, sys info, the object) then raw storage bytes; only the object's
    pickle is rewritten (protocol 2 has no frames, and GLOBAL operands are newline-terminated).
    """
    start = 0
    for _ in range(3):
        start = _pickle_end(data, start)
    end = _pickle_end(data, start)
    obj = data[start:end]
    for kind in (b"FloatStorage", b"LongStorage"):
        assert b"ctorch\n" + kind + b"\n" in obj
        obj = obj.replace(b"ctorch\n" + kind + b"\n", b"ctorch.cuda\n" + kind + b"\n")
    assert b"X\x03\x00\x00\x00cpu" in obj
    obj = obj.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
    return data[:start] + obj + data[end:]


def _save(ckpt: dict, path: Path, fmt: str) -> Path:
    if fmt == "zip":
        torch.save(ckpt, path)
    else:
        buf = io.BytesIO()
        torch.save(ckpt, buf, _use_new_zipfile_serialization=False)
        path.write_bytes(buf.getvalue() if fmt == "legacy" else _as_pytorch14_gpu_file(buf.getvalue()))
    return path


def _ours(backbone: torch.nn.Module, directory: Path) -> Path:
    """Our own format: a plain state dict + meta.json (landmarks.models.formats.save_backbone)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(backbone.state_dict(), directory / "backbone.pt")
    (directory / "meta.json").write_text(json.dumps({"backbone": backbone.name, "low_dim": 128}))
    return directory / "backbone.pt"


def _assert_same_weights(loaded, info, reference, ours_path, ckpt):
    """`loaded` (from the official file) == the same weights through our backbone.pt; model_ema unused."""
    ref, ref_info = load_backbone(str(ours_path), reference.name)
    assert info["fingerprint"] == ref_info["fingerprint"] == fingerprint(reference)
    with torch.no_grad():
        assert torch.equal(hypercolumn(loaded, IMAGES), hypercolumn(ref, IMAGES))
        assert torch.equal(loaded(IMAGES), ref(IMAGES))  # the MoCo head too
    got = loaded.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(got[key], value), key
        if value.is_floating_point():
            assert not torch.equal(got[key], ckpt["model_ema"][f"encoder.module.{key}"]), key


@pytest.fixture(scope="module")
def trained():
    return {arch: _trained_backbone(arch, seed) for seed, arch in enumerate(ARCHS)}


# Every architecture in the zip format; the two legacy formats (a question of the file, not of the
# architecture) with the smallest one.
@pytest.mark.parametrize("arch,fmt", [(a, "zip") for a in ARCHS] + [("resnet18", "legacy"),
                                                                     ("resnet18", "pytorch14_gpu")])
def test_official_checkpoint_equals_our_format(trained, tmp_path, arch, fmt):
    reference = trained[arch]
    ckpt = _official_checkpoint(reference, arch)
    path = _save(ckpt, tmp_path / f"ckpt_epoch_800_{arch}_celeba.pth", fmt)
    with pytest.raises(Exception, match="Namespace"):  # why plain weights-only loading failed before
        torch.load(path, map_location="cpu", weights_only=True)

    loaded, info = load_backbone(str(path), arch)
    assert not loaded.training and loaded.name == arch
    assert info["type"] == "official_moco" and info["init"] == "pretrained"
    assert info["source"] == str(path)
    assert info["meta"] == {"backbone": arch, "low_dim": 128, "epoch": 800, "opt.model": arch,
                            "opt.dataset": "CelebA", "opt.image_size": 136, "opt.image_crop": 20,
                            "opt.epochs": 800, "opt.nce_k": 4096}
    json.dumps(info["meta"])  # plain values only
    _assert_same_weights(loaded, info, reference, _ours(reference, tmp_path / "ours"), ckpt)


def test_load_backbone_weights_reads_official_files(trained, tmp_path):
    """The lower-level loader takes the same files (weights-only, query encoder, prefix stripped)."""
    reference = trained["resnet18"]
    path = _save(_official_checkpoint(reference, "resnet18"), tmp_path / "ckpt.pth", "zip")
    model = build_backbone("resnet18")
    report = load_backbone_weights(model, path)
    assert report.missing == [] and report.unexpected == [] and report.skipped == {}
    assert fingerprint(model) == fingerprint(reference)


def test_half_width_recorded_as_resnet50(trained, tmp_path):
    """InsResNet50(width=0.5) may carry opt.model='resnet50': the shapes decide, the width agrees."""
    reference = trained["resnet50_half"]
    for name, extra in (("a.pth", {}), ("b.pth", {"width": 0.5})):
        path = _save(_official_checkpoint(reference, "resnet50", **extra), tmp_path / name, "zip")
        _, info = load_backbone(str(path), "resnet50_half")
        assert info["fingerprint"] == fingerprint(reference) and info["meta"]["opt.model"] == "resnet50"
    path = _save(_official_checkpoint(reference, "resnet50", width=1), tmp_path / "c.pth", "zip")
    with pytest.raises(UserError, match="inconsistent"):
        load_backbone(str(path), "resnet50_half")


def _one_line_naming(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    return message


@pytest.mark.parametrize("arch,requested", [("resnet18", "resnet50"), ("resnet50_half", "resnet50"),
                                            ("resnet50", "resnet18")])
def test_other_architecture_is_a_one_line_user_error(trained, tmp_path, arch, requested):
    path = _save(_official_checkpoint(trained[arch], arch), tmp_path / f"ckpt_{arch}.pth", "zip")
    with pytest.raises(UserError) as err:
        load_backbone(str(path), requested)
    message = _one_line_naming(err, path)
    assert f"holds a '{arch}' backbone" in message and f"model.backbone='{requested}'" in message
    assert f"set model.backbone={arch}" in message


def test_opt_model_contradicting_the_shapes(trained, tmp_path):
    path = _save(_official_checkpoint(trained["resnet18"], "resnet50"), tmp_path / "ckpt.pth", "zip")
    with pytest.raises(UserError) as err:
        load_backbone(str(path), "resnet18")
    message = _one_line_naming(err, path)
    assert "opt.model='resnet50'" in message and "'resnet18'" in message


def test_architecture_outside_the_registry(tmp_path):
    """e.g. the official resnet34 / resnet50x2: shapes match nothing of ours."""
    state = {f"encoder.module.{k}": v for k, v in build_backbone("resnet18").state_dict().items()}
    state["encoder.module.layer1.2.conv1.weight"] = torch.zeros(64, 64, 3, 3)  # a third block: not resnet18
    ckpt = {"opt": _opt("resnet34"), "model": state, "epoch": 200}
    path = tmp_path / "ckpt_resnet34.pth"
    torch.save(ckpt, path)
    with pytest.raises(UserError) as err:
        load_backbone(str(path), "resnet18")
    message = _one_line_naming(err, path)
    assert "opt.model='resnet34'" in message and "resnet50_half" in message


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_truncated_file(trained, tmp_path, fmt):
    full = _save(_official_checkpoint(trained["resnet18"], "resnet18"), tmp_path / "full.pth", fmt)
    data = full.read_bytes()
    for cut in (len(data) // 2, 40):  # half the storages; inside the pickles
        path = tmp_path / f"ckpt_epoch_800_resnet18_celeba_{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(UserError) as err:
            load_backbone(str(path), "resnet18")
        message = _one_line_naming(err, path)
        assert "cannot read" in message and ("truncated" in message or "corrupt" in message), message


class TrainOptions:  # a custom options class instead of argparse.Namespace
    def __init__(self, **kw):
        self.__dict__.update(kw)


class StateDict(OrderedDict):  # an OrderedDict subclass for the weights
    pass


class CallsAFunction:  # what a malicious pickle does: call something on load
    def __reduce__(self):
        return (os.getpid, ())


@pytest.mark.parametrize("kind,refused", [("opt", "TrainOptions"), ("model", "StateDict"), ("extra", "getpid")])
def test_unexpected_pickled_class_is_refused(trained, tmp_path, kind, refused):
    ckpt = _official_checkpoint(trained["resnet18"], "resnet18")
    if kind == "opt":
        ckpt["opt"] = TrainOptions(**vars(ckpt["opt"]))
    elif kind == "model":
        ckpt["model"] = StateDict(ckpt["model"])
    else:
        ckpt["extra"] = CallsAFunction()
    path = tmp_path / "ckpt_epoch_800_resnet18_celeba.pth"
    torch.save(ckpt, path)
    with pytest.raises(UserError) as err:
        load_backbone(str(path), "resnet18")
    message = _one_line_naming(err, path)
    assert "refused the pickled global" in message and refused in message, message
    assert "not one" in message and "argparse.Namespace" in message


# ----------------------------------------------------------------------------- s3://


@pytest.fixture
def moto_s3(tmp_path):
    """A local moto S3 server (stopped by PID), the AWS variables pointing at it, one bucket."""
    moto = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if moto is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    from conftest import free_port

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "AKIATESTKEYID0000077", "AWS_SECRET_ACCESS_KEY": "s3cr3t-official-0077",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    with open(tmp_path / "moto.log", "w") as log:
        proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "moto.log").read_text()
                time.sleep(0.2)
        os.environ.update(env)
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket="released")
        yield client
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_official_checkpoint_from_s3(moto_s3, tmp_path):
    """Same path through s3:// (copied locally by _from_path); the CPU demo's small ResNet keeps it fast."""
    reference = _trained_backbone("resnet18_quarter", seed=7)
    ckpt = _official_checkpoint(reference, "resnet18_quarter")
    path = _save(ckpt, tmp_path / "ckpt_epoch_800_resnet18q.pth", "pytorch14_gpu")
    moto_s3.upload_file(str(path), "released", "moco/ckpt_epoch_800_resnet18q.pth")
    loaded, info = load_backbone("s3://released/moco/ckpt_epoch_800_resnet18q.pth", "resnet18_quarter")
    assert info["type"] == "official_moco"
    _assert_same_weights(loaded, info, reference, _ours(reference, tmp_path / "ours"), ckpt)


# ----------------------------------------------------------------------------- the authors' feature projectors


def _official_projector_checkpoint(projector, out_dim: int, mul: float) -> dict:
    """What train_feature_projector.py saves: DataParallel(FeatDistiller).state_dict() under 'feat_disiller'
    (sic), its argparse options, and numpy float64 matching errors."""
    import numpy as np

    state = OrderedDict([("module.reg_conv.weight", projector.proj.weight.detach().clone()),
                         ("module.reg_conv.bias", projector.proj.bias.detach().clone())])
    opt = argparse.Namespace(model="resnet18", feat_distill=True, distill_mode="softmax", kernel_size=1,
                             out_dim=out_dim, softargmax_mul=mul, temperature=7.0, train_out_size=24,
                             val_out_size=96, train_layer=4, val_layer=4, epochs=10, learning_rate=0.001)
    return {"opt": opt, "epoch": 7, "feat_disiller": state,
            "val_error": [np.mean([1.0, 2.0]), np.mean([3.0, 4.0])], "test_error": [np.float64(1.5), np.float64(3.5)]}


def test_official_projector_equals_our_format(trained, tmp_path):
    """projector.source=<official projector checkpoint>: the same projected descriptors as our own format."""
    from landmarks.models import Projector
    from landmarks.models.representation import Representation
    from landmarks.sources import load_projector

    backbone = trained["resnet18"]
    fp = fingerprint(backbone)
    torch.manual_seed(3)
    reference = Projector(960, 64, softargmax_mul=6.5)
    path = tmp_path / "64d.pth"
    torch.save(_official_projector_checkpoint(reference, 64, 6.5), path)
    ours = tmp_path / "ours"
    ours.mkdir()
    torch.save(reference.state_dict(), ours / "projector.pt")
    (ours / "meta.json").write_text(json.dumps({"backbone_fingerprint": fp, "backbone": "resnet18", "dim": 64,
                                                "in_channels": 960, "layers": 4, "softargmax_mul": 6.5}))
    official, mine = load_projector(str(path), fp, 960), load_projector(str(ours), fp, 960)
    assert official.softargmax_mul == mine.softargmax_mul == 6.5 and official.dim == 64
    assert official.meta["official"] and official.meta["epoch"] == 7 and official.meta["val_match_diff_px"] == 3.5
    with torch.no_grad():
        stages = backbone.stages(IMAGES)
        dense = [Representation("projected", backbone, {}, p, 4, (0.0,) * 3, (1.0,) * 3).dense(stages, (32, 32))
                 for p in (official, mine)]
    assert torch.equal(dense[0], dense[1])
    torch.testing.assert_close(dense[0].sum((2, 3)), torch.ones(2, 64))  # spatial softmax maps

    torch.save({**_official_projector_checkpoint(reference, 64, 6.5), "opt": argparse.Namespace(
        distill_mode="softplus", kernel_size=1, out_dim=64)}, tmp_path / "softplus.pth")
    with pytest.raises(UserError, match="distill_mode='softplus'") as err:
        load_projector(str(tmp_path / "softplus.pth"), fp, 960)
    assert "softplus.pth" in str(err.value) and "\n" not in str(err.value)
