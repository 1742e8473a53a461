"""Pure-torch model core: backbones, dense representations, MoCo, and heads.

Imports no Ray / MLflow / S3 and never moves tensors between devices: callers
pass tensors on the device they want.
"""

from landmarks.models.backbones import (
    BACKBONES,
    BackboneSpec,
    LoadReport,
    ResNetBackbone,
    build_backbone,
    load_backbone_weights,
)
from landmarks.models.heads import (
    LandmarkRegressor,
    Projector,
    SegmentationHead,
    soft_argmax,
    spatial_softmax,
)
from landmarks.models.hypercolumn import (
    conv4,
    dense_size,
    hypercolumn,
    representation,
    representation_channels,
)
from landmarks.models.moco import MoCo, positive_probability

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "LandmarkRegressor",
    "LoadReport",
    "MoCo",
    "Projector",
    "ResNetBackbone",
    "SegmentationHead",
    "build_backbone",
    "conv4",
    "dense_size",
    "hypercolumn",
    "load_backbone_weights",
    "positive_probability",
    "representation",
    "representation_channels",
    "soft_argmax",
    "spatial_softmax",
]
