"""Augmentations on device tensors: MoCo views (views.py, in Pillow's 8-bit arithmetic from pil_ops.py,
with the JPEG noise of jpeg_noise.py and the batched codec of jpeg.py; made one batch ahead by
prefetch.py) and thin-plate-spline warps (tps.py).

Pure torch + kornia: no Ray, MLflow or S3 here, and no device placement; every function
works on the device of the tensors it is given. The names below load on first use, so
that ``landmarks.augment.geometry`` (numpy + PIL, used by the ingest converters) does not
pull in torch and kornia.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "jpeg": ("jpeg_round_trip",),
    "prefetch": ("ViewsAhead", "views_generator"),
    "tps": ("AUGMENT", "MATCH", "PAIR", "TPSParams", "TPSStrength", "match_pair_warp", "normalized_grid",
            "normalized_to_pixels",
            "pair_keypoints", "pair_warp", "pixels_to_normalized", "sample_pair_params", "snap_keypoints",
            "tps_augment", "warp_images", "warp_keypoints"),
    "views": ("IMAGENET_PCA_EIGVAL", "IMAGENET_PCA_EIGVEC", "MoCoViews", "border_crop", "input_tensor",
              "normalize", "to_float_images", "to_levels"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "AUGMENT",
    "IMAGENET_PCA_EIGVAL",
    "IMAGENET_PCA_EIGVEC",
    "MATCH",
    "PAIR",
    "MoCoViews",
    "TPSParams",
    "TPSStrength",
    "ViewsAhead",
    "border_crop",
    "input_tensor",
    "jpeg_round_trip",
    "match_pair_warp",
    "normalize",
    "normalized_grid",
    "normalized_to_pixels",
    "pair_keypoints",
    "pair_warp",
    "pixels_to_normalized",
    "sample_pair_params",
    "snap_keypoints",
    "to_float_images",
    "to_levels",
    "tps_augment",
    "views_generator",
    "warp_images",
    "warp_keypoints",
]
assert sorted(__all__) == sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
