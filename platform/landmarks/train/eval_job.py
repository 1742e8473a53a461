"""What the frozen-backbone evaluation jobs (regress, match) share: the representation they
evaluate, and how a job runs (one Ray task from the command line, in-process inside a Tune trial).

    rep = load_representation(cfg, manifest, seed)        # backbone (+ projector), checked
    stages = rep.stages(images_uint8)                     # [layer1..layer4], no gradients
    feats = rep.dense(stages, (48, 48))                   # (B, C, 48, 48) hypercolumn / conv4 / projected
    metrics = run_logged("regress", cfg, tags, name, evaluate_regression, verbose)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import storage, tracking
from ..config import to_flat_dict
from ..data.manifest import Manifest
from ..data.normalization import input_stats
from ..errors import UserError
from ..features import FeatureSet, blocks, get_features, input_tensor
from ..models import soft_argmax
from .backbone_source import load_backbone, load_projector


def in_ray_worker() -> bool:
    """True inside a Ray task or actor (e.g. a Tune trial): run there, do not start another task."""
    if os.environ.get("LANDMARKS_IN_PROCESS") == "1":
        return True
    try:
        import ray
    except ImportError:
        return False
    if not ray.is_initialized():
        return False
    from ray._private.worker import WORKER_MODE  # no public constant; ray.get_runtime_context uses it

    return ray.get_runtime_context().worker.mode == WORKER_MODE


def pick_device() -> torch.device:
    """The GPU Ray gave this task (CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def absolute_paths(cfg: Any) -> Any:
    """A copy with local data.path / features.dir absolute, so that Ray workers (other cwd) agree."""
    cfg = cfg.model_copy(deep=True)
    if cfg.data.path and not storage.is_s3(cfg.data.path):
        cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
    if cfg.features.dir:
        cfg.features.dir = str(Path(cfg.features.dir).expanduser().resolve())
    return cfg


def split_image_ids(data_path: str, split: str) -> list[str]:
    """image_id of every row of a split, in ingest order (reads one column only)."""
    import pyarrow.parquet as pq

    from ..data.manifest import dataset_dir

    manifest = Manifest.load(data_path)
    fs, base = storage.resolve(dataset_dir(data_path))
    ids: list[str] = []
    for shard in manifest.split(split).shards:
        ids += pq.read_table(storage.join(base, shard.path), filesystem=fs, columns=["image_id"]) \
            .column("image_id").to_pylist()
    return ids


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n_out, n_in): a 1-D linear resize (align_corners=False) as a matrix; bilinear = one per axis."""
    impulses = torch.eye(n_in, dtype=dtype, device=device).reshape(n_in, 1, n_in)
    return F.interpolate(impulses, size=n_out, mode="linear", align_corners=False)[:, 0].T.contiguous()


def linear_over_blocks(blocks_bchw: Sequence[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None,
                       size: tuple[int, int]) -> torch.Tensor:
    """A 1x1 conv (weight (O, C, 1, 1)) over the resized concatenation of `blocks_bchw` -> (B, O, h, w).

    A 1x1 conv mixes channels and a bilinear resize mixes locations, so they commute:
    conv(cat(resize(s))) = sum_s resize(conv_s(s)). Running each block's slice of the conv at the
    block's own resolution costs 32x fewer MACs for a ResNet50 hypercolumn at 96 px, and the
    3840-channel 48x48 map is never built. The resize is bilinear (align_corners=False), the same
    numbers as F.interpolate, done as matrix products: each block's columns are resized on its own,
    (B, O, h_s, w_s) @ (w_s, w) -> (B, O, h_s, w); the row resizes and the sum over blocks are then
    one product, (h, sum h_s) @ (B, O, sum h_s, w), so no full-size map is built per block. On CPU
    that is ~3x faster forward + backward than one resize per block (benchmarks/sweep.py).
    """
    out_h, out_w = size
    full, parts, rows, start = None, [], [], 0
    for block in blocks_bchw:
        c = block.shape[1]
        y = F.conv2d(block, weight[:, start:start + c])  # (B, O, h_s, w_s)
        start += c
        h, w = y.shape[-2:]
        if (h, w) == (out_h, out_w):
            full = y if full is None else full + y
            continue
        parts.append(y @ resize_matrix(w, out_w, y.dtype, y.device).T)  # (B, O, h_s, w)
        rows.append(resize_matrix(h, out_h, y.dtype, y.device))  # (h, h_s)
    if start != weight.shape[1]:
        raise ValueError(f"blocks have {start} channels, the conv expects {weight.shape[1]}")
    out = full
    if parts:
        resized = torch.cat(rows, dim=1) @ torch.cat(parts, dim=2)  # (h, sum h_s) @ (B, O, sum h_s, w)
        out = resized if out is None else out + resized
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def landmarks_from_blocks(regressor, blocks_bchw: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """A `LandmarkRegressor` on the hypercolumn of `blocks_bchw` at `size`, without building it:
    landmarks (B, K, 2), normalized. The x100 soft-argmax scale is applied to the (K*P, C) weight
    rather than to the (B, K*P, h, w) logits: the same map, less work."""
    logits = linear_over_blocks(blocks_bchw, regressor.heatmaps.weight * regressor.softmax_scale, None, size)
    return regressor.combine(soft_argmax(logits))  # (B, K*P, 2) points -> (B, K, 2)


@dataclass
class Representation:
    """A frozen backbone (+ projector) and the dense representation a job evaluates."""

    name: str  # hypercolumn | conv4 | projected
    backbone: torch.nn.Module
    info: dict
    projector: torch.nn.Module | None
    layers: int
    mean: Sequence[float]
    std: Sequence[float]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # see `to`

    @property
    def kind(self) -> str:
        """What the backbone gives: the projector runs on the hypercolumn."""
        return "hypercolumn" if self.name == "projected" else self.name

    @property
    def blocks(self) -> list[int]:
        """Channel blocks of the dense map, in order (normalized separately for matching)."""
        if self.projector is not None:
            return [self.projector.dim]
        return blocks(self.backbone.stage_channels, self.kind, self.layers)

    @property
    def channels(self) -> int:
        return sum(self.blocks)

    def to(self, device: torch.device) -> Representation:
        self.device = torch.device(device)
        self.backbone.to(self.device).eval()
        if self.projector is not None:
            self.projector.to(self.device).eval()
        return self

    def stage_blocks(self, stages: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The stage outputs the backbone representation is made of, in channel order."""
        return list(stages)[::-1][:self.layers] if self.kind == "hypercolumn" else [stages[2]]

    @torch.no_grad()
    def stages(self, images_bhw3: Any) -> list[torch.Tensor]:
        """uint8 images (B, H, W, 3) (or normalized float (B, 3, H, W) tensors) -> [layer1..layer4]."""
        if isinstance(images_bhw3, torch.Tensor) and images_bhw3.is_floating_point():
            x = images_bhw3.to(self.device)
        else:
            x = input_tensor(images_bhw3, self.mean, self.std, self.device)
        return self.backbone.stages(x, num_stages=4 if self.kind == "hypercolumn" else 3)

    def map_size(self, stages: Sequence[torch.Tensor], size: tuple[int, int]) -> tuple[int, int]:
        """conv4 is used at layer3's own resolution (the official conv4); the others at `size`."""
        return tuple(stages[2].shape[-2:]) if self.kind == "conv4" else tuple(size)

    def dense(self, stages: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """(B, C, h, w) float32: the hypercolumn at `size` / conv4 at its own size, or the projection."""
        size = self.map_size(stages, size)
        parts = self.stage_blocks(stages)
        if self.projector is not None:  # its conv block by block, then its spatial softmax
            conv = self.projector.proj
            return self.projector.activate(linear_over_blocks(parts, conv.weight, conv.bias, size))
        return torch.cat([p if tuple(p.shape[-2:]) == tuple(size) else
                          F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in parts], 1)

    def features(self, data_path: str, split: str, image_size: int, cache_dir: str | None) -> FeatureSet:
        """The cached stage outputs of a split (landmarks.features)."""
        return get_features(self.backbone, self.info["fingerprint"], data_path, split, self.kind, image_size,
                            self.layers, cache_dir=cache_dir or None, device=self.device,
                            mean=self.mean, std=self.std)


def load_representation(cfg: Any, manifest: Manifest, seed: int) -> Representation:
    """Backbone from backbone.source, projector from projector.source; every mismatch is a UserError."""
    backbone, info = load_backbone(cfg.backbone.source, cfg.model.backbone, seed=seed)
    projector = None
    if cfg.representation == "projected":
        if not cfg.projector.source:
            raise UserError("representation=projected needs projector.source: the MLflow run id of a "
                            "jobs/train_projector.py run (or a projector.pt file) trained on this backbone")
        in_channels = sum(blocks(backbone.stage_channels, "hypercolumn", cfg.layers))
        projector = load_projector(cfg.projector.source, info["fingerprint"], in_channels, cfg.model.backbone)
        if projector.dim != cfg.projector.dim:
            raise UserError(f"projector.source {cfg.projector.source} projects to {projector.dim} dimensions but "
                            f"projector.dim={cfg.projector.dim}; set projector.dim={projector.dim}")
        info["projector_dim"] = projector.dim
    mean, std, _ = input_stats(manifest)
    return Representation(cfg.representation, backbone, info, projector, cfg.layers, mean, std)


# ----------------------------------------------------------------------------- running a job


def _remote_call(evaluate: Callable, cfg_dict: dict, cfg_cls: type, run_id: str, uri: str) -> dict:
    cfg = cfg_cls.model_validate(cfg_dict)
    return evaluate(cfg, tracking.RunLogger(run_id, uri=uri))


def _as_task(evaluate: Callable, cfg: Any, logger: tracking.RunLogger, verbose: bool, what: str) -> dict:
    import ray

    from .ray_setup import join_cluster, task_options

    use_gpu = join_cluster(cfg.ray, what, verbose)
    remote = ray.remote(max_retries=0, **task_options(cfg.ray, use_gpu))(_remote_call)
    ref = remote.remote(evaluate, cfg.model_dump(mode="json"), type(cfg), logger.run_id, logger.uri)
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, UserError):
            raise cause from None
        raise
    except KeyboardInterrupt:
        ray.cancel(ref, force=True)
        raise


def run_logged(job: str, cfg: Any, tags: dict, run_name: str, evaluate: Callable, verbose: bool,
               extra_params: dict | None = None, **in_process: Any) -> dict:
    """Create the MLflow run, then evaluate in this process (inside a Ray worker) or as one Ray task
    with the resources of `ray.*`; the run ends FINISHED, or FAILED with the error as a tag."""
    logger = tracking.start_run(cfg.mlflow.experiment, run_name, tags={"job": job, **tags})
    logger.log_params({**to_flat_dict(cfg), **(extra_params or {})})
    try:
        if in_ray_worker():
            metrics = evaluate(cfg, logger, **in_process)
        else:
            metrics = _as_task(evaluate, cfg, logger, verbose, job)
    except BaseException as err:
        logger.fail(f"{type(err).__name__}: {err}")
        raise
    logger.finish()
    return {**metrics, "mlflow_run_id": logger.run_id}
