"""Feature projector training: the loss falling (the official dense correlation loss, and the TPS-pair
alternative with its crop-window correspondence), and jobs/train_projector.py end to end on 2 Ray Train
workers (the epoch kept chosen by validation matching; the artifact loads back through load_projector),
resumed, and its errors.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

import _eval_data
from landmarks.augment import MoCoViews
from landmarks.augment.tps import PAIR, normalized_grid, pair_warp, sample_pair_params
from landmarks.augment.views import to_levels
from landmarks.cli import job_main
from landmarks.config import ProjectorConfig
from landmarks.data import load_manifest, read_split_numpy
from landmarks.data.preprocessing import Preprocessing
from landmarks.models import Projector, build_backbone
from landmarks.models.representation import Representation
from landmarks.sources import load_backbone, load_projector
from landmarks.train.projector import run_projector
from landmarks.train.projector_loop import crop_window_grid, dense_corr_step, pair_views, tps_pair_step

PRESET = str(_eval_data.ROOT / "jobs" / "configs" / "train_projector_synthetic_cpu.yaml")
MISSING_RUN = "0123456789abcdef0123456789abcdef"


def _coordinate_images(batch: int, side: int) -> torch.Tensor:
    """(B, 4, side, side) images whose pixels hold their own (x, y, x*y) and a 1: a warp is readable from
    them, and the 1 tells pixels fully inside the source from those mixed with the zero padding."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    return torch.stack([xx, yy, xx * yy, torch.ones_like(xx)]).expand(batch, 4, side, side).contiguous()


@pytest.mark.parametrize("border", [0, 20])
def test_crop_window_grid_finds_the_same_pixel(border):
    """Sampling image a's crop at cell u and image b's crop at grid(u) reads the same source point."""
    stored, size = 136, (24, 24)
    params = sample_pair_params(4, PAIR, torch.Generator().manual_seed(1))
    img_a, img_b, uncropped = pair_warp(_coordinate_images(4, stored), PAIR, size, params=params)
    grid = crop_window_grid(params[1], stored, border, size)
    crop = slice(border, stored - border)
    a, b = img_a[..., crop, crop], img_b[..., crop, crop]
    va = F.grid_sample(a, normalized_grid(*size).expand(4, *size, 2), align_corners=True)
    vb = F.grid_sample(b, grid, align_corners=True)
    ok = (grid.abs() <= 1).all(-1) & (va[:, 3] > 0.9999) & (vb[:, 3] > 0.9999)  # inside both images
    assert ok.float().mean() > 0.5
    assert (va - vb)[:, :3].abs().amax(1)[ok].max() * stored < 0.05  # in source pixels
    if border == 0:
        torch.testing.assert_close(grid, uncropped)
    else:  # the uncropped grid would be off by pixels
        off = (va - F.grid_sample(b, uncropped, align_corners=True))[:, :3].abs().amax(1)
        assert off[ok].mean() * stored > 1


@pytest.mark.parametrize("loss", ["dense_corr", "tps_pair"])
def test_projector_loss_falls(eval_data, loss):
    """A few Adam(beta1 0.5) steps of the worker's step on the tiny faces lower the projector's loss."""
    torch.manual_seed(0)
    split = read_split_numpy(str(eval_data["faces"]), "train")
    border = load_manifest(str(eval_data["faces"])).border  # 7 px of the 46 px stored faces
    images = torch.from_numpy(split["image"])
    backbone = build_backbone("resnet18").eval().requires_grad_(False)
    projector = Projector(960, 32)
    rep = Representation("projected", backbone, {}, projector, 4, [0.5] * 3, [0.25] * 3)
    optimizer = torch.optim.Adam(projector.parameters(), lr=1e-3, betas=(0.5, 0.999), weight_decay=5e-4)
    views = MoCoViews(32, mean=[0.5] * 3, std=[0.25] * 3, border=border)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(12):
        idx = torch.randint(0, len(images), (8,), generator=gen)
        if loss == "dense_corr":  # one MoCo view per image, 8 x 8 maps 4 px apart
            x = views.view(to_levels(images[idx]), gen)
            losses.append(dense_corr_step(rep, rep, optimizer, x, 8, 1 / 7, 0.5))
        else:
            img_a, img_b, grid = pair_views(images[idx], border, 32, [0.5] * 3, [0.25] * 3, (16, 16), gen)
            losses.append(tps_pair_step(rep, rep, optimizer, img_a, img_b, grid, 16, 1 / 7, 0.5))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses


@pytest.mark.slow
def test_train_projector_end_to_end_and_resume(eval_data, ray_address, tmp_path, monkeypatch):
    faces = str(eval_data["faces"])
    args = ["--config", PRESET, f"data.path={faces}", "data.image_size=32", "projector.dim=32", "train.epochs=3",
            "train.batch_size=8", "train.map_size=8", "ray.num_workers=2", f"validation.path={faces}",
            "validation.split=val", "--metrics-out", "m.json"]
    proc = _eval_data.run_job("train_projector", args, tmp_path, ray_address)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert np.isfinite(metrics["loss"]) and metrics["epochs"] == 3

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags["job"], tags["dataset"], tags["backbone"], tags["init"], tags["projector_dim"]) == (
        "train_projector", "synthetic-faces", "resnet18", "random", "32")
    assert run.data.params["train.lr"] == "0.001" and run.data.params["ray.num_workers"] == "2"
    # epochs x steps per epoch of the 28-image train split: 14 rows a worker in batches of 4, the last partial
    steps = 3 * math.ceil((28 // 2) / 4)
    assert len(client.get_metric_history(run.info.run_id, "loss")) == steps
    assert len(client.get_metric_history(run.info.run_id, "epoch_loss")) == 3
    val_rows = json.loads((eval_data["faces"] / "dataset.json").read_text())["splits"]["val"]["rows"]
    assert run.data.params["resolved.softargmax_mul"] == "7.0"
    assert run.data.params["resolved.validation_pairs"] == str(val_rows // 2)
    # The epoch kept is the one with the lowest validation (different identity) matching error.
    history = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "val_match_diff_px"),
                                       key=lambda m: m.step)]
    assert len(history) == 3 and metrics["kept_epoch"] == int(np.argmin(history))
    assert metrics["val_match_diff_px"] == pytest.approx(min(history))

    _, info = load_backbone("random", "resnet18", seed=0)  # the preset's backbone.source
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    projector = load_projector(metrics["mlflow_run_id"], info["fingerprint"], 960)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert (projector.in_channels, projector.dim, projector.softargmax_mul) == (960, 32, 7.0)
    assert projector.meta["backbone_fingerprint"] == info["fingerprint"] and projector.meta["layers"] == 4
    assert projector.meta["kept_epoch"] == metrics["kept_epoch"]
    # The run's model: the kept projector on its backbone, dense unit descriptors at the input size.
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["synthetic-faces/train"]
    model = _eval_data.logged_model(tmp_path, metrics["mlflow_run_id"])
    assert (model.task, model.meta["kept_epoch"]) == ("descriptors", metrics["kept_epoch"])
    torch.testing.assert_close(model.rep.projector.proj.weight, projector.proj.weight)
    faces = read_split_numpy(eval_data["faces"], "test")["image"][:2]
    descriptors = model.predict(Preprocessing.from_dict(model.meta["preprocessing"]).stored_to_input(faces))["descriptors"]
    assert descriptors.shape == (2, 32, 32, 32)

    again = _eval_data.run_job("train_projector", args, tmp_path, ray_address)  # complete: nothing to train
    assert again.returncode == 0, again.stderr[-4000:]
    assert "already finished" in again.stdout
    second = json.loads((tmp_path / "m.json").read_text())
    assert second["mlflow_run_id"] == metrics["mlflow_run_id"] and second["loss"] == metrics["loss"]


def test_train_projector_bad_input(eval_data, tmp_path, monkeypatch, capsys):
    faces = str(eval_data["faces"])
    base = ["--config", PRESET, f"data.path={faces}", "data.image_size=32"]
    proc = _eval_data.run_job("train_projector", base + [f"backbone.source={MISSING_RUN}"], tmp_path, timeout=300)
    _eval_data.assert_one_line_error(proc, MISSING_RUN, "does not exist")  # through the real script

    monkeypatch.chdir(tmp_path)  # the rest through the same entry point, in this process
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    for extra, needles, code in [
        (["train.batch_size=9"], ("train.batch_size", "ray.num_workers"), 2),  # not divisible by the 2 workers
        (["train.batch_size=64"], ("fewer than one batch",), 1),  # more than the 28 training images
    ]:
        assert job_main(ProjectorConfig, run_projector, None, base + extra) == code
        _eval_data.assert_one_line_error((code, capsys.readouterr().err), *needles)
