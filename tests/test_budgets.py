"""Annotation budgets: seeded, nested, checked; the shipped CUB lists as they are."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from landmarks.data.budgets import CUB_BUDGETS, budget_indices, cub_budget_ids


def test_budget_indices_are_reproducible_and_seeded():
    a = budget_indices(10122, 20, seed=3)
    assert a.dtype == np.int64 and a.shape == (20,) and len(set(a.tolist())) == 20
    assert np.array_equal(a, budget_indices(10122, 20, seed=3))
    assert not np.array_equal(a, budget_indices(10122, 20, seed=4))
    assert a.min() >= 0 and a.max() < 10122


def test_smaller_budgets_nest_in_larger_ones():
    for seed in range(3):
        sizes = [1, 5, 10, 20, 50, 100]
        subsets = [budget_indices(1000, n, seed) for n in sizes]
        for small, large in itertools.pairwise(subsets):
            assert np.array_equal(small, large[: len(small)])
    everything = budget_indices(37, "all", seed=0)
    assert sorted(everything.tolist()) == list(range(37))
    assert np.array_equal(budget_indices(37, 37, seed=0), everything)


def test_too_large_or_invalid_budgets_raise():
    with pytest.raises(ValueError, match=r"budget 51 exceeds the 50 rows"):
        budget_indices(50, 51, seed=0)
    for bad in (0, -3, "most", True, 2.5):
        with pytest.raises(ValueError, match="positive integer or 'all'"):
            budget_indices(50, bad, seed=0)


def test_cub_lists_have_their_sizes_and_lie_in_the_training_split():
    full = cub_budget_ids("all")
    assert full == cub_budget_ids(1241) and len(set(full)) == 1241
    assert all(name.endswith(".jpg") and "/" in name for name in full)
    for n in CUB_BUDGETS:
        ids = cub_budget_ids(n)
        assert len(ids) == len(set(ids)) == n
        assert set(ids) <= set(full)


def test_cub_lists_are_not_nested():
    """The official lists were drawn independently: a smaller one is not inside a larger one.

    So CUB budget curves (Tables 6, 8) compare different images at each size, as the paper
    did; only the generic `budget_indices` subsets are nested.
    """
    for small, large in itertools.pairwise(CUB_BUDGETS[:-1]):
        assert not set(cub_budget_ids(small)) <= set(cub_budget_ids(large)), (small, large)


def test_cub_budget_must_be_an_official_size():
    with pytest.raises(ValueError, match=r"one of \[10, 50, 100, 250, 500, 1241\]"):
        cub_budget_ids(20)
