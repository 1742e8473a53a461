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
    cell_centers,
    normalized_to_pixels,
    pixels_to_normalized,
    size_hw,
    soft_argmax,
)
from landmarks.models.hypercolumn import conv4, hypercolumn, representation, representation_channels
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
    "cell_centers",
    "conv4",
    "hypercolumn",
    "load_backbone_weights",
    "normalized_to_pixels",
    "pixels_to_normalized",
    "positive_probability",
    "representation",
    "representation_channels",
    "size_hw",
    "soft_argmax",
]
