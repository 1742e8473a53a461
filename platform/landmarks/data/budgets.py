"""Annotation budgets: which training rows a regressor sees with N annotations.

Generic datasets (Table 7: AFLW_M with 1..100 annotations, repeated over seeds): the
first N rows of a seeded permutation, so a budget is reproducible from its seed and
smaller budgets of one seed are nested in larger ones (the 10 are among the 50). An epoch
of a limited budget repeats its N images (`landmarks.config.repeated_samples`, the official ``--repeat``).

CUB (Tables 6 and 8): the fixed lists of the official code
(cvl-umass/contrast-landmark ``datasets/CUB_200_2011/split/train_{N}.txt``), shipped in
``landmarks/resources/cub_splits``. Each is a subset of the 1241 training images, but
they were drawn independently: the 10 are not all among the 50, and so on.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np

from ..errors import UserError
from .manifest import Manifest
from .reader import split_image_ids

Budget = int | str  # a positive number of annotated rows, or "all"

CUB_BUDGETS = (10, 50, 100, 250, 500, 1241)


def _check_budget(budget: Budget) -> None:
    if isinstance(budget, str):
        if budget != "all":
            raise ValueError(f"annotation budget must be a positive integer or 'all', got {budget!r}")
    elif isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"annotation budget must be a positive integer or 'all', got {budget!r}")


def budget_indices(num_rows: int, budget: Budget, seed: int) -> np.ndarray:
    """Row indices (int64) of a `budget`-row subset of `num_rows` rows, drawn with `seed`.

    The first `budget` entries of ``np.random.default_rng(seed).permutation(num_rows)``, in
    that order: same seed, same rows; for one seed, a smaller budget is a prefix of a larger.

    Raises:
        ValueError: budget is not a positive integer or "all", or exceeds num_rows.
    """
    _check_budget(budget)
    if num_rows < 0:
        raise ValueError(f"num_rows must be >= 0, got {num_rows}")
    count = num_rows if budget == "all" else int(budget)
    if count > num_rows:
        raise ValueError(f"annotation budget {count} exceeds the {num_rows} rows of the training split")
    perm = np.random.default_rng(seed).permutation(num_rows)
    return perm[:count].astype(np.int64)


def cub_budget_ids(budget: Budget) -> list[str]:
    """image_ids (``<class dir>/<file>.jpg``, as in ``images.txt``) of the official CUB subset.

    budget: one of 10, 50, 100, 250, 500, 1241, or "all" (= 1241).
    """
    _check_budget(budget)
    count = CUB_BUDGETS[-1] if budget == "all" else int(budget)
    if count not in CUB_BUDGETS:
        raise ValueError(f"CUB annotation budget must be one of {list(CUB_BUDGETS)} or 'all', got {budget!r}")
    name = f"train_{count}.txt"
    text = resources.files("landmarks").joinpath("resources", "cub_splits", name).read_text()
    ids = [line.strip() for line in text.splitlines() if line.strip()]
    if len(ids) != count:
        raise ValueError(f"landmarks/resources/cub_splits/{name} lists {len(ids)} images, expected {count}")
    return ids


def annotated_rows(cfg: Any, manifest: Manifest) -> np.ndarray:
    """Sorted indices into the train split of a job's `annotations` budget (`data.fraction` for 'all').

    CUB budgets of 10/50/100/250/500/1241 are the official fixed lists (`cub_budget_ids`); other
    budgets are the seeded `budget_indices` of seed train.seed + repeat.

    Raises:
        UserError: a budget larger than the split, a CUB list that does not match the split, or
            annotations=N together with data.fraction < 1.
    """
    n = manifest.splits["train"].rows
    seed = cfg.train.seed + cfg.repeat
    if cfg.annotations == "all":
        if cfg.data.fraction < 1.0:
            return np.sort(budget_indices(n, max(1, round(cfg.data.fraction * n)), seed))
        return np.arange(n)
    if cfg.data.fraction < 1.0:
        raise UserError("set either annotations=N or data.fraction<1, not both")
    if cfg.annotations > n:
        raise UserError(f"annotations={cfg.annotations} is more than the {n} rows of the train split of "
                        f"{cfg.data.path}; use at most {n} or annotations=all")
    if manifest.name == "cub" and cfg.annotations in CUB_BUDGETS:
        where = {image_id: i for i, image_id in enumerate(split_image_ids(cfg.data.path, "train"))}
        wanted = cub_budget_ids(cfg.annotations)
        missing = [i for i in wanted if i not in where]
        if missing:
            raise UserError(f"{cfg.data.path}: {len(missing)} images of the CUB train_{cfg.annotations} list are not "
                            f"in its train split (first: {missing[0]}); re-ingest cub with the shipped splits")
        return np.array(sorted(where[i] for i in wanted))
    return np.sort(budget_indices(n, cfg.annotations, seed))
