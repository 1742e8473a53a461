"""The official landmark regressor on frozen hypercolumns: error against steps, for each init std x lr.

    python benchmarks/regressor_head.py --data runs/demo/data/synthetic-faces --image-size 48 \\
        --backbone resnet18_quarter --sources random,runs:/<run>/backbone --init-std 1,0.01,0.001 \\
        --lrs 1e-3,1e-2 --steps 100,200,400,800,1600 [--points 50] [--annotations all]

The head (`models.LandmarkRegressor`: a 1x1 conv to K*P heatmaps, x100 soft-argmax, P points per
landmark) trains with the regression job's loss and Adam (beta1 0.5, weight decay 5e-4) on the
cached hypercolumns of each source (`features.get_features`), batch 32, one core, no Ray, no TPS; the
test split's inter-ocular error (%) is read at each of `--steps`. docs/demo_study.md, "the head",
is made of these tables: the official N(0, 1) init saturates the soft-argmax on small features.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_parser, finish, parse_ints

from landmarks.coords import normalized_to_pixels, pixels_to_normalized
from landmarks.data.budgets import budget_indices
from landmarks.features import get_features
from landmarks.losses import regression_loss
from landmarks.metrics import inter_ocular_error
from landmarks.models import LandmarkRegressor
from landmarks.models.representation import dense_size, landmarks_from_blocks, stage_blocks
from landmarks.sources import load_backbone

EYES = (0, 1)  # synthetic-faces: left and right eye centres


def train_head(train, test, rows: np.ndarray, image_size: int, init_std: float, lr: float, steps: list[int],
               points: int, batch_size: int = 32, seed: int = 0) -> dict[int, float]:
    """Adam on the regressor over `rows` of `train` (a FeatureSet) -> {step: test IOD %} at each of `steps`."""
    torch.manual_seed(seed)
    size = dense_size("hypercolumn", image_size)
    head = LandmarkRegressor(train.channels, train.keypoints.shape[1], points_per_landmark=points, init_std=init_std)
    opt = torch.optim.Adam(head.parameters(), lr=lr, betas=(0.5, 0.999), weight_decay=5e-4)
    kps, vis = torch.from_numpy(train.keypoints), torch.from_numpy(train.visible)
    rng = np.random.default_rng(seed)

    def test_iod() -> float:
        with torch.no_grad():
            pred = torch.cat([normalized_to_pixels(landmarks_from_blocks(
                head, stage_blocks(test.stage_batch(np.arange(s, min(s + 256, len(test)))), "hypercolumn"), size),
                image_size) for s in range(0, len(test), 256)])
        return inter_ocular_error(pred.numpy(), test.keypoints, EYES, visible=test.visible)

    out, step = {}, 0
    while step < max(steps):
        order = rng.permutation(rows)
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            pred = landmarks_from_blocks(head, stage_blocks(train.stage_batch(idx), "hypercolumn"), size)
            loss = regression_loss(pred, pixels_to_normalized(kps[idx], image_size), vis[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step in steps:
                out[step] = test_iod()
            if step >= max(steps):
                break
    return out


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--data", required=True, help="an ingested synthetic-faces dataset")
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--backbone", default="resnet18_quarter")
    parser.add_argument("--sources", default="random", help="comma list of backbone sources (random, a path, a run)")
    parser.add_argument("--init-std", default="1,0.01,0.001")
    parser.add_argument("--lrs", default="1e-3,1e-2")
    parser.add_argument("--steps", type=parse_ints, default=[100, 200, 400, 800, 1600])
    parser.add_argument("--points", type=int, default=50, help="soft-argmax points per landmark (official 50)")
    parser.add_argument("--annotations", default="all", help="training rows: all, or a budget (the first N of a draw)")
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: the platform's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.init_std, args.lrs, args.steps, args.points = "1,0.01", "1e-3", [5, 10], 10
    rows = []
    for source in args.sources.split(","):
        backbone, info = load_backbone(source, args.backbone)
        train, test = (get_features(backbone, info["fingerprint"], args.data, split, "hypercolumn", args.image_size,
                                    cache_dir=args.cache_dir) for split in ("train", "test"))
        chosen = (np.arange(len(train)) if args.annotations == "all"
                  else budget_indices(len(train), int(args.annotations), seed=0))
        for init_std in (float(x) for x in args.init_std.split(",")):
            for lr in (float(x) for x in args.lrs.split(",")):
                started = time.perf_counter()
                curve = train_head(train, test, chosen, args.image_size, init_std, lr, args.steps, args.points)
                rows.append({"source": source, "init_std": init_std, "lr": lr,
                             **{f"iod@{s}": round(v, 2) for s, v in curve.items()},
                             "seconds": round(time.perf_counter() - started, 1)})
    finish(args, "regressor_head", rows, params={"data": args.data, "image_size": args.image_size,
                                                   "backbone": args.backbone, "points": args.points,
                                                   "annotations": args.annotations},
           label_keys=("source", "init_std", "lr"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
