"""Pure-torch model core: backbones, the dense representations (`representation.py`), MoCo, and heads.

Imports no Ray / MLflow / S3 and never moves tensors between devices: callers
pass tensors on the device they want.
"""

from landmarks.models.backbones import (
    LoadReport,
    ResNetBackbone,
    build_backbone,
    load_backbone_weights,
)
from landmarks.models.heads import (
    LandmarkRegressor,
    MapRegressor,
    Projector,
    SegmentationHead,
    soft_argmax,
    spatial_softmax,
)
from landmarks.models.moco import MoCo, positive_logit, positive_probability
from landmarks.models.representation import (
    Representation,
    assemble,
    block_channels,
    conv4,
    dense_size,
    hypercolumn,
    stage_blocks,
)

__all__ = [
    "LandmarkRegressor",
    "LoadReport",
    "MapRegressor",
    "MoCo",
    "Projector",
    "Representation",
    "ResNetBackbone",
    "SegmentationHead",
    "assemble",
    "block_channels",
    "build_backbone",
    "conv4",
    "dense_size",
    "hypercolumn",
    "load_backbone_weights",
    "positive_logit",
    "positive_probability",
    "soft_argmax",
    "spatial_softmax",
    "stage_blocks",
]
