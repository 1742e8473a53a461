"""One typed config per job, with the paper's settings as defaults (SPEC "Paper settings").

Sections (`data`, `model`, `train`, `ray`, `mlflow`, `checkpoint`, ...) come from
`landmarks.config`, so a key means the same in every job. Presets in jobs/configs/ set
what differs per benchmark; `*_synthetic_cpu.yaml` presets shrink everything for a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import (
    AnnotationsMixin,
    Backbone,
    BackboneSource,
    CheckpointConfig,
    DataConfig,
    MlflowConfig,
    ModelConfig,
    ProjectorSource,
    RayConfig,
    RepresentationKind,
    Section,
    TrainConfig,
)

# The paper's regression recipe (Sec. 4; the official README's eval_face.py / eval_animal.py command lines):
# lr / weight decay per budget, the cosine's T (--epochs) and the epoch trained to ("We stop the training
# procedure at 120th, 45th, 80th epoch on MAFL, AFLW, and 300W" of --epochs 200; 1000 for limited face
# budgets, 2000 for CUB), and the images of a limited budget tiled to ~1000 samples an epoch (--repeat).
# Table 1's epochs are counted from 0 (the official README: "The epoch is indexing from 0. However, the
# index was starting from 1 when we saved the model"): its numbers are after 121 / 46 / 81 epochs of
# training, one more than the released loop's `ckpt_epoch_120` / 45 / 80 (1-indexed) hold.
FULL_LR, FULL_WD = 1e-3, 5e-4
LIMITED_FACE_LR, LIMITED_FACE_WD = 1e-2, 5e-2
CUB_LR, CUB_WD_SMALL, CUB_WD_LARGE = 1e-2, 5e-2, 5e-3  # wd 5e-2 up to 100 annotations, 5e-3 above
FULL_SCHEDULE, LIMITED_SCHEDULE, CUB_SCHEDULE = 200, 1000, 2000
STOP_EPOCH = {"mafl": 121, "aflw-mtfl": 46, "aflw": 46, "300w": 81}  # epochs trained: Table 1's 120th / 45th / 80th
REPEAT_PER_EPOCH = 1000  # official --repeat --num_per_epoch 1000 for limited face budgets


def repeated_samples(n_annotated: int, n_train: int) -> int:
    """Samples an epoch of a limited budget: its images tiled 1000 // N times (official
    ``restrict_annos(repeat_flag=True, num_per_epoch=1000)``, capped by the split's size)."""
    total = min(REPEAT_PER_EPOCH, n_train)
    return n_annotated * (total // n_annotated) if n_annotated < total else n_annotated


def paper_lr_wd(is_cub: bool, annotations: int | str) -> tuple[float, float]:
    """The regressor's lr and weight decay for a dataset and budget (train.lr / weight_decay = auto)."""
    if is_cub:
        return CUB_LR, CUB_WD_SMALL if annotations != "all" and annotations <= 100 else CUB_WD_LARGE
    return (FULL_LR, FULL_WD) if annotations == "all" else (LIMITED_FACE_LR, LIMITED_FACE_WD)


def paper_schedule(dataset: str, is_cub: bool, annotations: int | str) -> tuple[int, int]:
    """(epochs trained, cosine T) of the official recipe (train.epochs / schedule_epochs = auto)."""
    if is_cub:
        return CUB_SCHEDULE, CUB_SCHEDULE
    if annotations != "all":
        return LIMITED_SCHEDULE, LIMITED_SCHEDULE
    return STOP_EPOCH.get(dataset, FULL_SCHEDULE), FULL_SCHEDULE


def positive_or_auto(value, info):
    """A field validator: an int setting that may also say 'auto' must be >= 1."""
    if isinstance(value, int) and value < 1:
        raise ValueError(f"{info.field_name} must be a positive integer or 'auto'")
    return value


@dataclass(frozen=True)
class Resolved:
    """A job's 'auto' settings resolved for its dataset and budget (logged as `resolved.*` params)."""

    lr: float
    weight_decay: float
    samples_per_epoch: int
    epochs: int
    schedule_epochs: int | None = None  # regression: the cosine's T
    tps_augment: bool | None = None  # regression
    track_test: bool | None = None  # regression: score the test split every epoch

    def params(self) -> dict[str, float | int | bool]:
        return {f"resolved.{k}": v for k, v in asdict(self).items() if v is not None}


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
    lr_schedule: Literal["epoch", "step"] = Field(
        "epoch", description="epoch: the official cosine, lr x (1 + cos(pi e / epochs)) / 2 set at the start of "
        "epoch e = 1.. (train_moco.py); step: a cosine over steps with warmup_epochs (MoCo v2/v3)")
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warm-up (lr_schedule=step only)")
    log_every_steps: int = Field(10, ge=1)
    views_ahead: bool = Field(True, description="make the next batch's MoCo views while this batch trains "
                                                "(on GPUs a side CUDA stream overlaps them with the step; the "
                                                "numbers are identical either way)")
    compile: bool = Field(False, description="torch.compile both encoders (worth it on GPUs for long runs: "
                          "the first step compiles for about a minute)")


class ProbeConfig(Section):
    """The landmark probe after every pretraining epoch (`landmarks.probe`): seconds, no training."""

    enabled: bool | Literal["auto"] = Field(
        "auto", description="auto: on when the probe's dataset has landmarks (CelebA, the synthetic faces); "
        "iNat has none: set probe.path to an annotated set (e.g. CUB) or leave it off")
    path: str = Field("", description="annotated dataset to probe on; empty: data.path")
    ref_split: str = Field("train", description="split of the reference images (the landmark templates)")
    query_split: str = Field("auto", description="split of the scored images; auto: val if the dataset has "
                             "one, else test")
    images: int = Field(256, ge=4, description="images read for the probe, half reference and half query")
    every_epochs: int = Field(1, ge=1)


def _check_batch_split(cfg):
    if cfg.train.batch_size % cfg.ray.num_workers:
        raise ValueError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by ray.num_workers="
            f"{cfg.ray.num_workers}; the global batch is split evenly over workers"
        )
    return cfg


class PretrainConfig(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    moco: MocoConfig = MocoConfig()
    train: PretrainTrain = PretrainTrain()
    probe: ProbeConfig = ProbeConfig()
    ray: RayConfig = RayConfig()
    mlflow: MlflowConfig = MlflowConfig(experiment="pretrain")
    checkpoint: CheckpointConfig = CheckpointConfig()
    max_failures: int = Field(2, ge=-1, description="Ray Train FailureConfig(max_failures); -1 = unlimited")

    @model_validator(mode="after")
    def _batch_divisible(self):
        _check_batch_split(self)
        if self.train.warmup_epochs and self.train.lr_schedule == "epoch":
            raise ValueError("train.warmup_epochs needs train.lr_schedule=step (the official per-epoch cosine "
                             "has no warm-up)")
        return self


class EvalRay(RayConfig):
    """Resources of one evaluation job (a Ray task, or a Tune trial); `gpus_per_worker` may be a
    fraction (e.g. 0.25) so several trials share a GPU. `num_workers` > 1 only for the jobs that
    scale out with Ray Train (projector, fine-tuning)."""


class FeatureCacheConfig(Section):
    enabled: bool = True
    dir: str = Field("", description="cache directory; default: <data.path>/_features (local) or runs/features")


class EvalTrain(TrainConfig):
    epochs: int = Field(121, ge=1, description="MAFL 121 / AFLW 46 / 300W 81 on hypercolumns, 150 projected")
    batch_size: int = Field(32, ge=1)
    lr: float | Literal["auto"] = Field("auto", description="auto: the paper's rule for the budget")
    weight_decay: float | Literal["auto"] = "auto"
    adam_beta1: float = Field(0.5, ge=0.0, lt=1.0, description="Adam beta1 (paper: 0.5)")


class RepresentationJob(Section):
    """What every job that evaluates a frozen (or fine-tuned) representation has."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    backbone: BackboneSource = BackboneSource()
    representation: RepresentationKind = "hypercolumn"
    projector: ProjectorSource = ProjectorSource()
    features: FeatureCacheConfig = FeatureCacheConfig()
    ray: EvalRay = EvalRay()
    layers: int = Field(4, ge=1, le=4, description="hypercolumn stages (layer4..layer1)")


class EvalCommon(RepresentationJob, AnnotationsMixin):
    repeat: int = Field(0, ge=0, description="repeat index; offsets the subset/initialisation seed")


class RegressTrain(EvalTrain):
    """The official regressor recipe (eval_face.py / eval_animal.py and the README's command lines)."""

    epochs: int | Literal["auto"] = Field(
        "auto", description="epochs trained; auto: the official stopping epoch, 121 / 46 / 81 of 200 for MAFL / "
        "AFLW / 300W with all annotations (200 for other face sets), 1000 with limited face budgets, 2000 for CUB")
    schedule_epochs: int | Literal["auto"] = Field(
        "auto", description="T of the per-epoch cosine (CosineAnnealingLR, eta_min = lr x 8e-4); auto: 200 with "
        "all face annotations, 1000 with limited ones, 2000 for CUB")
    samples_per_epoch: int | Literal["auto"] = Field(
        "auto", description="auto: limited face budgets repeat their N images 1000 // N times an epoch (official "
        "--repeat --num_per_epoch 1000), else one pass over the annotated images")

    check_positive = field_validator("epochs", "schedule_epochs", "samples_per_epoch")(positive_or_auto)


class RegressorConfig(Section):
    """The landmark regressor head (`models.LandmarkRegressor`)."""

    init_std: float = Field(1.0, gt=0.0, description="std of the heatmap conv's initial weights: 1 = the official "
                            "N(0, 1); small values (0.001) start the x100 soft-argmax soft and learn in far fewer "
                            "steps (the demo's setting)")
    points_per_landmark: int = Field(50, ge=1, description="soft-argmax points combined into each landmark (the "
                                     "official 50); fewer make the head cheaper")


class RegressConfig(EvalCommon):
    train: RegressTrain = RegressTrain()
    regressor: RegressorConfig = RegressorConfig()
    tps_augment: bool | Literal["auto"] = Field("auto", description="auto: on for limited face budgets")
    track_test: bool | Literal["auto"] = Field(
        "auto", description="also score the test split after every epoch and report the best one beside the last "
        "(iod_best_on_test, best_test_epoch), as the official eval_face.py keeps its best-on-test checkpoint; auto: "
        "on for limited face budgets")
    mlflow: MlflowConfig = MlflowConfig(experiment="regress")

    def resolve(self, dataset: str, train_rows: int, annotated: int) -> Resolved:
        """The 'auto' settings for `dataset` (CUB: its own rules) with `annotated` of its `train_rows`."""
        is_cub, limited = dataset == "cub", self.annotations != "all"
        lr, wd = paper_lr_wd(is_cub, self.annotations)
        epochs, schedule = paper_schedule(dataset, is_cub, self.annotations)
        spe = repeated_samples(annotated, train_rows) if limited and not is_cub else annotated
        pick = lambda value, auto: auto if value == "auto" else value
        return Resolved(float(pick(self.train.lr, lr)), float(pick(self.train.weight_decay, wd)),
                        int(pick(self.train.samples_per_epoch, spe)), int(pick(self.train.epochs, epochs)),
                        int(pick(self.train.schedule_epochs, schedule)),
                        bool(pick(self.tps_augment, limited and not is_cub)),
                        bool(pick(self.track_test, limited and not is_cub)))


class SegmentTrain(EvalTrain):
    epochs: int = Field(100, ge=1)
    lr: float | Literal["auto"] = Field(1e-3, description="head lr (auto: 1e-3)")
    weight_decay: float | Literal["auto"] = Field(5e-4, description="auto: 5e-4")
    samples_per_epoch: int | Literal["auto"] = Field(
        "auto", description="auto: 1000 for limited budgets (as the regressor's official --num_per_epoch "
        "1000), else one pass over the annotated images")

    check_positive = field_validator("samples_per_epoch")(positive_or_auto)


class SegmentConfig(EvalCommon):
    train: SegmentTrain = SegmentTrain()
    finetune: bool = Field(False, description="fine-tune the backbone too (Table 6 'fine-tuned')")
    backbone_lr: float = Field(1e-4, gt=0.0)
    mlflow: MlflowConfig = MlflowConfig(experiment="segment")

    def resolve(self, train_rows: int, annotated: int) -> Resolved:
        """The 'auto' settings: the full-annotation regressor's lr / wd; limited budgets tiled as its."""
        limited = self.annotations != "all"
        spe = repeated_samples(annotated, train_rows) if limited else annotated
        lr = FULL_LR if self.train.lr == "auto" else self.train.lr
        wd = FULL_WD if self.train.weight_decay == "auto" else self.train.weight_decay
        spe = spe if self.train.samples_per_epoch == "auto" else self.train.samples_per_epoch
        return Resolved(float(lr), float(wd), int(spe), self.train.epochs)


class MatchConfig(RepresentationJob):
    split: str = "test"
    seed: int = 0
    descriptor_size: int | None = Field(
        None, ge=1, description="side of the descriptor maps; None: the input size (official val_out_size 96); "
        "conv4 is matched at its own resolution")
    batch_size: int = Field(32, ge=2, description="images per forward pass (even: consecutive pairs)")
    mlflow: MlflowConfig = MlflowConfig(experiment="match")


class ProjectorTrain(TrainConfig):
    """The official feature projector (train_feature_projector.py and the README's "Stage 2" command):
    10 epochs, batch 32, Adam(beta1 0.5) lr 1e-3 wd 5e-4, per-epoch cosine (eta_min = lr x 8e-4),
    hypercolumns of 24 x 24 (--train_out_size 24), temperature 1/7 (1/8 for 64 dims)."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    adam_beta1: float = Field(0.5, ge=0.0, lt=1.0, description="Adam beta1 (official --beta1 0.5)")
    temperature: float | Literal["auto"] = Field(
        "auto", description="T of the loss's softmax(<f_u, f_v> / T); auto: 1/7, 1/8 for 64 dims (the official "
        "--temperature 7 / 8 multiplies)")
    power: float = Field(0.5, gt=0.0, description="exponent of the distance in the loss")
    map_size: int = Field(24, ge=2, description="side of the hypercolumn maps trained on (official --train_out_size)")
    log_every_steps: int = Field(10, ge=1, description="log the step loss to MLflow every N steps")

    def resolved_temperature(self, dim: int) -> float:
        if self.temperature != "auto":
            return float(self.temperature)
        return 1.0 / 8.0 if dim == 64 else 1.0 / 7.0


class ProjectorModel(ProjectorSource):
    dim: int = Field(128, ge=1, le=4096, description="dimensions of the projector trained")
    softargmax_mul: float | Literal["auto"] = Field(
        "auto", description="multiplier of the projector's spatial softmax; auto: 7, 6.5 for 64 dims (official "
        "--softargmax_mul, searched on a validation set); 0: no softmax (a plain 1x1 conv)")
    loss: Literal["dense_corr", "tps_pair"] = Field(
        "dense_corr", description="dense_corr: the official dense correlation loss of each image with itself, on "
        "MoCo-augmented images; tps_pair: the equivariance loss between two TPS warps of an image (our earlier "
        "variant, closer to the paper's text)")

    def resolved_softargmax_mul(self) -> float:
        from ..models.heads import DEFAULT_SOFTARGMAX_MUL, SOFTARGMAX_MUL

        if self.softargmax_mul != "auto":
            return float(self.softargmax_mul)
        return SOFTARGMAX_MUL.get(self.dim, DEFAULT_SOFTARGMAX_MUL)


class MatchValidation(Section):
    """The epoch kept is the one with the lowest different-identity matching error on these pairs
    (official: 2000 images of MAFL's train split, consecutive pairs)."""

    path: str = Field("", description="dataset with landmarks (e.g. MAFL); empty: keep the last epoch")
    split: str = "train"
    images: int = Field(2000, ge=2, description="a seeded subset of the split, in consecutive pairs")
    batch_size: int = Field(16, ge=2, description="images per forward pass")


class ProjectorConfig(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    backbone: BackboneSource = BackboneSource()
    projector: ProjectorModel = ProjectorModel()
    train: ProjectorTrain = ProjectorTrain()
    validation: MatchValidation = MatchValidation()
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
    regressor: RegressorConfig = RegressorConfig()
    representation: RepresentationKind = "conv4"
    mlflow: MlflowConfig = MlflowConfig(experiment="finetune")
    checkpoint: CheckpointConfig = CheckpointConfig()
    max_failures: int = Field(2, ge=-1, description="Ray Train FailureConfig(max_failures); -1 = unlimited")

    def resolve(self, annotated: int) -> Resolved:
        """The 'auto' settings: the full-annotation regressor's lr and weight decay (SPEC)."""
        lr = FULL_LR if self.train.lr == "auto" else self.train.lr
        wd = FULL_WD if self.train.weight_decay == "auto" else self.train.weight_decay
        return Resolved(float(lr), float(wd), annotated, self.train.epochs)

    @model_validator(mode="after")
    def _batch_divisible(self):
        return _check_batch_split(self)


class BaselineTrain(EvalTrain):
    """The supervised baseline's training: Adam, a cosine over the steps, the regression loss."""

    epochs: int = Field(25, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    samples_per_epoch: int | Literal["auto"] = Field(
        "auto", description="auto: limited face budgets tile their N images to 1000 an epoch, as the regressor's")

    check_positive = field_validator("samples_per_epoch")(positive_or_auto)


class BaselineConfig(AnnotationsMixin):
    """jobs/baseline.py: what a representation must beat at the same annotation budget (the same rows as
    regress at the same train.seed and repeat). mean_shape: every test image gets the annotated rows' mean
    landmarks. supervised: `model.backbone` from random init with a linear read-out of its last stage's map,
    trained end to end on the annotated rows alone (TPS-augmented for limited face budgets, as the regressor)."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    method: Literal["mean_shape", "supervised"] = "supervised"
    train: BaselineTrain = BaselineTrain()
    tps_augment: bool | Literal["auto"] = Field("auto", description="auto: on for limited face budgets")
    repeat: int = Field(0, ge=0, description="repeat index; offsets the subset/initialisation seed")
    ray: EvalRay = EvalRay()
    mlflow: MlflowConfig = MlflowConfig(experiment="baseline")

    def resolve(self, dataset: str, train_rows: int, annotated: int) -> Resolved:
        limited, is_cub = self.annotations != "all", dataset == "cub"
        spe = repeated_samples(annotated, train_rows) if limited and not is_cub else annotated
        spe = spe if self.train.samples_per_epoch == "auto" else int(self.train.samples_per_epoch)
        tps = (limited and not is_cub) if self.tps_augment == "auto" else bool(self.tps_augment)
        return Resolved(float(self.train.lr), float(self.train.weight_decay), spe, self.train.epochs,
                        tps_augment=tps)


class ModelSource(Section):
    source: str = Field("", description="an MLflow run id (its logged model), models:/NAME/VERSION, "
                        "models:/NAME@ALIAS, or a model directory")


class PredictInput(Section):
    path: str = Field("", description="an ingested dataset (local or s3://) or a local folder of photos (any format "
                      "PIL reads; other files are ignored)")
    split: str = Field("test", description="the dataset's split to predict")
    skip_bad: bool = Field(False, description="skip and count unreadable images (--skip-bad) instead of stopping")


class PredictOutput(Section):
    path: str = Field("predictions", description="output directory (must not hold anything yet)")
    overlays: int = Field(0, ge=0, description="images to draw the predictions on (--overlays N)")


class PredictConfig(Section):
    """jobs/predict.py: batch prediction with a trained model on Ray Data."""

    model: ModelSource = ModelSource()
    input: PredictInput = PredictInput()
    output: PredictOutput = PredictOutput()
    batch_size: int = Field(64, ge=1, description="images per prediction call")
    ray: EvalRay = EvalRay()
    mlflow: MlflowConfig = MlflowConfig(experiment="predict")


__all__ = [
    "Backbone",
    "BaselineConfig",
    "FinetuneConfig",
    "MatchConfig",
    "PredictConfig",
    "PretrainConfig",
    "ProjectorConfig",
    "RegressConfig",
    "SegmentConfig",
]
