"""Stratified few-shot subsets: per-class budgets, >= 1 per class, nested, deterministic by seed."""

from __future__ import annotations

import numpy as np
import pytest

from usjepa_fast.errors import UsfastError
from usjepa_fast.probe.fewshot import PAPER_FRACTIONS, fewshot_indices, parse_fractions


@pytest.fixture
def labels() -> np.ndarray:
    rng = np.random.default_rng(3)
    # imbalanced: 300 / 120 / 40 / 7 / 2 samples
    y = np.concatenate([np.full(n, c) for c, n in enumerate((300, 120, 40, 7, 2))])
    return y[rng.permutation(y.size)]


@pytest.mark.parametrize("fraction", PAPER_FRACTIONS)
def test_stratified_counts_never_below_one(labels: np.ndarray, fraction: float) -> None:
    idx = fewshot_indices(labels, fraction, seed=0)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)  # sorted, unique
    for cls in np.unique(labels):
        n_c = int(np.sum(labels == cls))
        got = int(np.sum(labels[idx] == cls))
        assert got == max(1, int(round(fraction * n_c)))


def test_deterministic_by_seed_and_nested(labels: np.ndarray) -> None:
    a = fewshot_indices(labels, 0.05, seed=7)
    np.testing.assert_array_equal(a, fewshot_indices(labels, 0.05, seed=7))
    assert not np.array_equal(a, fewshot_indices(labels, 0.05, seed=8))
    small, large = set(fewshot_indices(labels, 0.05, 1)), set(fewshot_indices(labels, 0.5, 1))
    assert small <= large
    np.testing.assert_array_equal(fewshot_indices(labels, 1.0, 1), np.arange(labels.size))


def test_bad_budgets_are_user_errors(labels: np.ndarray) -> None:
    with pytest.raises(UsfastError):
        fewshot_indices(labels, 0.0, 0)
    with pytest.raises(UsfastError):
        fewshot_indices(labels, 1.5, 0)
    with pytest.raises(UsfastError):
        parse_fractions("1,x")
    assert parse_fractions("1,5,10,50,100") == PAPER_FRACTIONS
    assert parse_fractions("0.1,0.01") == (0.01, 0.1)
