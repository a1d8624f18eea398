"""Stratified few-shot subsets of a training split (the paper's 1 / 5 / 10 / 50 / 100 % label budgets).

Per class ``c`` with ``n_c`` training samples, a fraction ``f`` keeps ``max(1, round(f * n_c))`` of
them (never fewer than one per class, so every class stays learnable). Within a seed the subsets are
*nested* (the 1 % subset is inside the 5 % one, ...): each class's samples are shuffled once per seed
and a budget takes a prefix, so a few-shot curve measures label budget rather than resampling noise.
Everything is deterministic in ``seed`` (numpy ``default_rng``), independent of the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from usjepa_fast.errors import UsfastError

PAPER_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.50, 1.0)


def fewshot_indices(labels: np.ndarray | Sequence[int], fraction: float, seed: int) -> np.ndarray:
    """Sorted int64 indices into ``labels`` of a stratified ``fraction`` subset (>= 1 per present class)."""
    if not 0.0 < fraction <= 1.0:
        raise UsfastError(f"few-shot fraction {fraction} must be in (0, 1]; e.g. 0.01 for 1 %")
    y = np.asarray(labels).astype(np.int64, copy=False)
    if y.ndim != 1:
        raise UsfastError(f"labels must be 1-D, got shape {y.shape}")
    if fraction == 1.0:
        return np.arange(y.size, dtype=np.int64)
    rng = np.random.default_rng(int(seed))
    chosen = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        # One permutation per class and seed; budgets take prefixes -> nested subsets.
        order = members[rng.permutation(members.size)]
        k = max(1, int(round(fraction * members.size)))
        chosen.append(order[:k])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def parse_fractions(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"1,5,10,50,100"`` (percent) or ``"0.01,0.1"`` (fractions) or a sequence -> fractions in (0, 1]."""
    if isinstance(text, str):
        try:
            values = [float(v) for v in text.replace("%", "").split(",") if v.strip()]
        except ValueError:
            raise UsfastError(
                f"few-shot budgets {text!r} must be comma-separated numbers, e.g. 1,5,10,50,100"
            ) from None
    else:
        values = [float(v) for v in text]
    if not values:
        raise UsfastError("no few-shot budgets given; e.g. --fewshot 1,5,10,50,100")
    # Any value above 1 means the list is in percent.
    fracs = [v / 100.0 for v in values] if max(values) > 1.0 else values
    for f in fracs:
        if not 0.0 < f <= 1.0:
            raise UsfastError(f"few-shot budget {f} out of range; use percents in (0, 100]")
    return tuple(sorted(set(fracs)))
