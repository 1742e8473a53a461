"""The input normalisation of each dataset: the official constants, the same in every job.

The official code normalises every face set (CelebA, MAFL, AFLW, AFLW_M, 300W; pretraining and
evaluation alike) by CelebA's statistics and the bird sets (iNat Aves, CUB) by ImageNet's
(contrast-landmark ``data_loaders_face.py`` / ``data_loaders_animal.py`` ``transforms.Normalize``),
whatever the backbone's weights (ImageNet weights on faces get the CelebA constants too). So a
backbone pretrained on CelebA sees the same input scale when it is evaluated on AFLW.

Our synthetic faces stand in for faces and take the CelebA constants; a dataset of another name
is normalised by its own train-split statistics from ``dataset.json``.
"""

from __future__ import annotations

from typing import Any

CELEBA_MEAN = (0.5084, 0.4224, 0.3769)
CELEBA_STD = (0.2599, 0.2371, 0.2323)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FACE_DATASETS = ("synthetic-faces", "celeba", "celeba-wild", "mafl", "aflw-mtfl", "aflw", "300w")
BIRD_DATASETS = ("inat-aves", "cub")


def input_stats(manifest: Any) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, name) of the per-channel input normalisation for a dataset's `Manifest`.

    name: "celeba" (face sets), "imagenet" (bird sets) or "dataset" (the manifest's own stats).
    """
    if manifest.name in FACE_DATASETS:
        return CELEBA_MEAN, CELEBA_STD, "celeba"
    if manifest.name in BIRD_DATASETS:
        return IMAGENET_MEAN, IMAGENET_STD, "imagenet"
    return tuple(manifest.mean), tuple(manifest.std), "dataset"
