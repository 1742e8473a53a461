"""One typed config per job, with the paper's settings as defaults (SPEC "Paper settings").

Sections (`data`, `model`, `train`, `ray`, `mlflow`, `checkpoint`, ...) come from
`landmarks.config`, so a key means the same in every job. Presets in jobs/configs/ set
what differs per benchmark; `*_synthetic_cpu.yaml` presets shrink everything for a 2-core CPU.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..config import (
    AnnotationsMixin,
    Backbone,
    BackboneSource,
    CheckpointConfig,
    DataConfig,
    MlflowConfig,
    ModelConfig,
    ProjectorSource,
    RayConfig,
    Representation,
    Section,
    TrainConfig,
)


class MocoConfig(Section):
    """MoCo v1 (He et al. 2020; facebookresearch/moco main_moco.py defaults, as in the paper)."""

    queue_size: int = Field(4096, ge=1, description="K, negatives in the queue (paper: 4096)")
    momentum: float = Field(0.999, ge=0.0, lt=1.0, description="key encoder EMA (moco-m)")
    temperature: float = Field(0.07, gt=0.0, description="InfoNCE temperature (moco-t)")
    crop_min_scale: float = Field(0.2, gt=0.0, le=1.0, description="RandomResizedCrop scale lower bound")
    color_jitter: float = Field(0.4, ge=0.0, description="brightness/contrast/saturation jitter")
    jpeg: bool = Field(True, description="JPEG-noise augmentation")
    lighting_std: float = Field(0.1, ge=0.0, description="PCA lighting noise std (AlexNet)")


class PretrainTrain(TrainConfig):
    epochs: int = Field(800, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(0.03, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    sgd_momentum: float = Field(0.9, ge=0.0, lt=1.0)
    warmup_epochs: float = Field(0.0, ge=0.0)
    log_every_steps: int = Field(10, ge=1)
    compile: bool = Field(False, description="torch.compile both encoders (worth it on GPUs for long runs: "
                          "the first step compiles for about a minute)")


class PretrainConfig(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    moco: MocoConfig = MocoConfig()
    train: PretrainTrain = PretrainTrain()
    ray: RayConfig = RayConfig()
    mlflow: MlflowConfig = MlflowConfig(experiment="pretrain")
    checkpoint: CheckpointConfig = CheckpointConfig()
    max_failures: int = Field(2, ge=-1, description="Ray Train FailureConfig(max_failures); -1 = unlimited")

    @model_validator(mode="after")
    def _batch_divisible(self):
        if self.train.batch_size % self.ray.num_workers:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} is not divisible by ray.num_workers="
                f"{self.ray.num_workers}; the global batch is split evenly over workers"
            )
        return self


class EvalRay(RayConfig):
    """Resources of one evaluation job (a Ray task, or a Tune trial); `gpus_per_worker` may be a
    fraction (e.g. 0.25) so several trials share a GPU. `num_workers` > 1 only for the jobs that
    scale out with Ray Train (projector, fine-tuning)."""


class FeatureCacheConfig(Section):
    enabled: bool = True
    dir: str = Field("", description="cache directory; default: <data.path>/_features (local) or runs/features")


class EvalTrain(TrainConfig):
    epochs: int = Field(120, ge=1, description="MAFL 120 / AFLW 45 / 300W 80 on hypercolumns, 150 projected")
    batch_size: int = Field(32, ge=1)
    lr: float | Literal["auto"] = Field("auto", description="auto: the paper's rule for the budget")
    weight_decay: float | Literal["auto"] = "auto"
    adam_beta1: float = Field(0.5, ge=0.0, lt=1.0, description="Adam beta1 (paper: 0.5)")


class EvalCommon(AnnotationsMixin):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    backbone: BackboneSource = BackboneSource()
    representation: Representation = "hypercolumn"
    projector: ProjectorSource = ProjectorSource()
    features: FeatureCacheConfig = FeatureCacheConfig()
    ray: EvalRay = EvalRay()
    repeat: int = Field(0, ge=0, description="repeat index; offsets the subset/initialisation seed")
    layers: int = Field(4, ge=1, le=4, description="hypercolumn stages (layer4..layer1)")


class RegressTrain(EvalTrain):
    samples_per_epoch: int | Literal["auto"] = Field(
        "auto", description="auto: 1000 for limited face budgets (official --repeat --num_per_epoch 1000), "
        "else one pass over the annotated images")

    @field_validator("samples_per_epoch")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("samples_per_epoch must be a positive integer or 'auto'")
        return v


class RegressConfig(EvalCommon):
    train: RegressTrain = RegressTrain()
    tps_augment: bool | Literal["auto"] = Field("auto", description="auto: on for limited face budgets")
    mlflow: MlflowConfig = MlflowConfig(experiment="regress")


class SegmentTrain(EvalTrain):
    epochs: int = Field(100, ge=1)
    lr: float | Literal["auto"] = Field(1e-3, description="head lr (auto: 1e-3)")
    weight_decay: float | Literal["auto"] = Field(5e-4, description="auto: 5e-4")
    samples_per_epoch: int | Literal["auto"] = Field(
        "auto", description="auto: 1000 for limited budgets (as the regressor's official --num_per_epoch "
        "1000), else one pass over the annotated images")

    @field_validator("samples_per_epoch")
    @classmethod
    def _positive(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("samples_per_epoch must be a positive integer or 'auto'")
        return v


class SegmentConfig(EvalCommon):
    train: SegmentTrain = SegmentTrain()
    finetune: bool = Field(False, description="fine-tune the backbone too (Table 6 'fine-tuned')")
    backbone_lr: float = Field(1e-4, gt=0.0)
    mlflow: MlflowConfig = MlflowConfig(experiment="segment")


class MatchConfig(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    backbone: BackboneSource = BackboneSource()
    representation: Representation = "hypercolumn"
    projector: ProjectorSource = ProjectorSource()
    features: FeatureCacheConfig = FeatureCacheConfig()
    ray: EvalRay = EvalRay()
    layers: int = Field(4, ge=1, le=4)
    split: str = "test"
    seed: int = 0
    warp: Literal["match", "pair"] = Field(
        "match", description="TPS strength of same-identity pairs: match = half of pair, both images warped "
        "(contrast-landmark MAFLAligned(pair_image=True)); pair = the equivariance-loss PAIR preset")
    descriptor_size: int | None = Field(
        None, ge=1, description="side of the descriptor maps; None: the input size (official val_out_size 96)")
    batch_size: int = Field(32, ge=2, description="images per forward pass (even: consecutive pairs)")
    mlflow: MlflowConfig = MlflowConfig(experiment="match")


class ProjectorTrain(TrainConfig):
    """Sec. 3.2: 10 epochs, Adam lr 1e-3, wd 5e-4, temperature 1/7, no other augmentation."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    temperature: float = Field(1 / 7, gt=0.0)
    power: float = Field(0.5, gt=0.0)
    log_every_steps: int = Field(10, ge=1, description="log the step loss to MLflow every N steps")


def _check_batch_split(cfg):
    if cfg.train.batch_size % cfg.ray.num_workers:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by ray.num_workers="
            f"{cfg.ray.num_workers}; the global batch is split evenly over workers"
        )
    return cfg


class ProjectorConfig(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    backbone: BackboneSource = BackboneSource()
    projector: ProjectorSource = ProjectorSource()
    train: ProjectorTrain = ProjectorTrain()
    ray: EvalRay = EvalRay()
    layers: int = Field(4, ge=1, le=4)
    mlflow: MlflowConfig = MlflowConfig(experiment="projector")
    checkpoint: CheckpointConfig = CheckpointConfig()
    max_failures: int = Field(2, ge=-1, description="Ray Train FailureConfig(max_failures); -1 = unlimited")

    @model_validator(mode="after")
    def _batch_divisible(self):
        return _check_batch_split(self)


class FinetuneTrain(EvalTrain):
    lr: float | Literal["auto"] = 1e-3
    weight_decay: float | Literal["auto"] = 5e-4
    backbone_lr: float = Field(1e-4, gt=0.0, description="lr of the backbone (heads use train.lr)")
    log_every_steps: int = Field(10, ge=1, description="log the step loss to MLflow every N steps")


class FinetuneConfig(EvalCommon):
    train: FinetuneTrain = FinetuneTrain()
    representation: Representation = "conv4"
    mlflow: MlflowConfig = MlflowConfig(experiment="finetune")
    checkpoint: CheckpointConfig = CheckpointConfig()
    max_failures: int = Field(2, ge=-1, description="Ray Train FailureConfig(max_failures); -1 = unlimited")

    @model_validator(mode="after")
    def _batch_divisible(self):
        return _check_batch_split(self)


__all__ = [
    "Backbone",
    "FinetuneConfig",
    "MatchConfig",
    "PretrainConfig",
    "ProjectorConfig",
    "RegressConfig",
    "SegmentConfig",
]
