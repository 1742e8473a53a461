"""Landmark matching with frozen descriptors (SPEC "Metrics"; Table 4).

    python jobs/match.py --config jobs/configs/match_mafl.yaml backbone.source=<run id> representation=projected ...

The protocol of the official evaluation (contrast-landmark train_feature_projector.py `validate`,
after DVE's test_matching.py), on consecutive pairs (0, 1), (2, 3), ... of the test split:
every image is warped twice by a random thin-plate spline, b = base(image) and a = second(b)
(`landmarks.augment.tps.pair_warp`; `warp=match`: half the strength of the equivariance pairs,
both warps at full strength, as the official MAFLAligned(pair_image=True)). For each
ground-truth landmark of a_i, its descriptor's nearest neighbour (cosine) is looked up

- in b_i: "same identity", ground truth = the landmark moved by the warps;
- in b_j, j the other image of the pair: "different identity".

Errors are in pixels of a 70 x 70 image (`landmarks.metrics.matching_error`), averaged over
landmarks that are visible and stay inside both images. Hypercolumns are L2-normalized per
stage block before matching ("otherwise the performance drops", official code), projected and
conv4 maps as a whole. Descriptors are the dense maps resized to `descriptor_size` (default: the
input size, the official val_out_size). Every image is warped, so nothing comes from the cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..augment.tps import MATCH, PAIR, pair_keypoints, pair_warp, sample_pair_params
from ..augment.views import normalize, to_float_images
from ..cli import JobArgs, print_summary
from ..data.manifest import Manifest
from ..errors import UserError
from ..features import load_split
from ..metrics import matching_error
from ..progress import Progress
from ..tracking import RunLogger
from .configs import MatchConfig
from .data_source import open_manifest
from .eval_job import Representation, absolute_paths, load_representation, pick_device, run_logged

SCALE_TO = 70.0  # DVE / official compute_pixel_err: errors on a 70 x 70 canvas


@dataclass
class MatchPlan:
    manifest: Manifest
    rep: Representation
    tags: dict


def check_matching(cfg: MatchConfig) -> MatchPlan:
    """Validate the dataset split, backbone and projector before any work."""
    manifest = open_manifest(cfg.data.path, cfg.split, need_landmarks=True)
    if manifest.splits[cfg.split].rows < 2:
        raise UserError(f"{cfg.data.path}: split {cfg.split!r} has {manifest.splits[cfg.split].rows} image(s); "
                        "matching needs at least one pair")
    if cfg.batch_size % 2:
        raise UserError(f"batch_size={cfg.batch_size} must be even: images are matched in consecutive pairs")
    rep = load_representation(cfg, manifest, seed=cfg.seed)
    tags = {"dataset": manifest.name, "backbone": cfg.model.backbone, "representation": cfg.representation,
            "init": rep.info["init"], "seed": cfg.seed, "backbone_source": cfg.backbone.source,
            "projector_dim": rep.info.get("projector_dim"), "image_size": cfg.data.image_size, "split": cfg.split}
    return MatchPlan(manifest, rep, tags)


def run_name(cfg: MatchConfig, plan: MatchPlan) -> str:
    return cfg.mlflow.run_name or (f"match-{plan.manifest.name}-{cfg.model.backbone}-{cfg.representation}"
                                   f"-s{cfg.seed}")


def run_match(cfg: MatchConfig, args: JobArgs) -> dict:
    """The job: check, then evaluate as one Ray task (in-process inside a Tune trial)."""
    cfg = absolute_paths(cfg)
    plan = check_matching(cfg)
    metrics = run_logged("match", cfg, plan.tags, run_name(cfg, plan), evaluate_matching,
                         getattr(args, "verbose", False),
                         extra_params={"backbone.fingerprint": plan.rep.info["fingerprint"]}, plan=plan)
    print_summary("match", metrics)
    return metrics


def describe(rep: Representation, images_b3hw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float [0, 1] images -> (B, C, size) descriptors, each stage block L2-normalized over channels."""
    dense = rep.dense(rep.stages(normalize(images_b3hw, rep.mean, rep.std)), size)
    return torch.cat([F.normalize(part, dim=1) for part in dense.split(rep.blocks, dim=1)], dim=1)


def _inside(kps_bk2: torch.Tensor, side: int) -> torch.Tensor:
    finite = torch.isfinite(kps_bk2).all(-1)
    return finite & (kps_bk2 >= 0).all(-1) & (kps_bk2 <= side - 1).all(-1)


def _accumulate(total: list[float], desc_a, desc_b, kps_a, kps_b, ok, side: int) -> None:
    count = int(ok.sum())
    if count:
        err = matching_error(desc_a, desc_b, kps_a, kps_b, side, scale_to=SCALE_TO, visible=ok)
        total[0] += err * count
        total[1] += count


@torch.no_grad()
def evaluate_matching(cfg: MatchConfig, run_logger: RunLogger, plan: MatchPlan | None = None) -> dict:
    """Same- and different-identity matching errors on `cfg.split`; logs to `run_logger`."""
    cfg = absolute_paths(cfg)
    plan = plan or check_matching(cfg)
    device = pick_device()
    rep = plan.rep.to(device)
    side = cfg.data.image_size
    size = (cfg.descriptor_size or side,) * 2
    data = load_split(cfg.data.path, cfg.split, side)
    n = len(data["image"]) // 2 * 2
    strength = MATCH if cfg.warp == "match" else PAIR
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    same, diff = [0.0, 0], [0.0, 0]
    bar = Progress((n + cfg.batch_size - 1) // cfg.batch_size, "match", every=5.0)
    for start in range(0, n, cfg.batch_size):
        stop = min(start + cfg.batch_size, n)
        images = to_float_images(torch.from_numpy(data["image"][start:stop]).to(device)).contiguous()
        kps = torch.from_numpy(data["keypoints"][start:stop]).to(device)
        vis = torch.from_numpy(data["visible"][start:stop]).to(device)
        params = sample_pair_params(stop - start, strength, generator, device, base_warp_scale=1.0,
                                    base_affine_scale=1.0)
        img_a, img_b, _ = pair_warp(images, params=params)
        kps_a, kps_b = pair_keypoints(kps, params, (side, side))
        ok_a, ok_b = vis & _inside(kps_a, side), vis & _inside(kps_b, side)
        desc_a, desc_b = describe(rep, img_a, size), describe(rep, img_b, size)
        _accumulate(same, desc_a, desc_b, kps_a, kps_b, ok_a & ok_b, side)
        _accumulate(diff, desc_a[0::2], desc_b[1::2], kps_a[0::2], kps_b[1::2], ok_a[0::2] & ok_b[1::2], side)
        bar.update(1)
    if not same[1] or not diff[1]:
        raise UserError(f"{cfg.data.path}: no landmark stayed visible in both images of any pair")
    metrics = {"match_same_px": same[0] / same[1], "match_diff_px": diff[0] / diff[1],
               "pairs": n // 2, "landmarks_same": same[1], "landmarks_diff": diff[1]}
    run_logger.log_metrics(metrics)
    return metrics


__all__ = ["check_matching", "describe", "evaluate_matching", "run_match"]
