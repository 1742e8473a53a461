"""Landmark matching with frozen descriptors (SPEC "Metrics"; Table 4).

    python jobs/match.py --config jobs/configs/match_mafl.yaml backbone.source=<run id> representation=projected ...

The official protocol (`landmarks.matching`): consecutive pairs of the split, each image
TPS-warped twice at the stored size; the first image's twice-warped version is matched against its
once-warped self ("same identity") and the other image's once-warped version ("different
identity"), every landmark by nearest descriptor; errors in pixels of a 70 x 70 image. Descriptors
are the dense maps at `descriptor_size` (default: the input size, the official val_out_size; conv4
at its own resolution), L2-normalized per stage block. Every image is warped, so nothing comes from
the feature cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..cli import JobArgs
from ..config import MatchConfig, absolute_paths
from ..data.manifest import Manifest, open_manifest
from ..data.reader import load_split
from ..errors import UserError
from ..matching import describer, match_pairs
from ..models.representation import Representation
from ..precision import pick_device
from ..progress import Progress
from ..sources import load_representation
from ..tracking import RunLogger
from .runner import run_evaluation


@dataclass
class MatchPlan:
    manifest: Manifest
    rep: Representation
    tags: dict
    splits: tuple[str, ...] = ("test",)  # what it reads (its MLflow inputs)


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
    return MatchPlan(manifest, rep, tags, (cfg.split,))


def run_name(cfg: MatchConfig, plan: MatchPlan) -> str:
    return cfg.mlflow.run_name or (f"match-{plan.manifest.name}-{cfg.model.backbone}-{cfg.representation}"
                                   f"-s{cfg.seed}")


def run_match(cfg: MatchConfig, args: JobArgs) -> dict:
    """The job: check, then evaluate as one Ray task (in-process inside a Tune trial)."""
    cfg = absolute_paths(cfg)
    plan = check_matching(cfg)
    params = {"backbone.fingerprint": plan.rep.info["fingerprint"]}
    return run_evaluation("match", cfg, args, plan, run_name(cfg, plan), evaluate_matching, params)


@torch.no_grad()
def evaluate_matching(cfg: MatchConfig, run_logger: RunLogger, plan: MatchPlan | None = None) -> dict:
    """Same- and different-identity matching errors on `cfg.split`; logs to `run_logger`."""
    cfg = absolute_paths(cfg)
    plan = plan or check_matching(cfg)
    device = pick_device()
    rep = plan.rep.to(device)
    side = cfg.data.image_size
    data = load_split(cfg.data.path, cfg.split, side, stored=True)
    pairs = len(data["image"]) // 2
    per_batch = max(1, cfg.batch_size // 2)
    bar = Progress(-(-pairs // per_batch), "match", every=5.0)
    same, diff = match_pairs(describer(rep, (cfg.descriptor_size or side,) * 2), data["image"], data["keypoints"],
                             plan.manifest.border, side, rep.mean, rep.std, torch.Generator().manual_seed(cfg.seed),
                             device, per_batch, progress=lambda: bar.update(1))
    metrics = {"match_same_px": float(same.mean()), "match_diff_px": float(diff.mean()), "pairs": pairs,
               "landmarks_same": same.numel(), "landmarks_diff": diff.numel()}
    run_logger.log_metrics(metrics)
    return metrics


__all__ = ["check_matching", "evaluate_matching", "run_match"]
