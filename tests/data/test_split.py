"""The validation hold-out by group: no clip or patient on both sides, member shares, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from usjepa_fast.data.split import corpus_groups, split_by_group
from usjepa_fast.errors import DataError


def _groups(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two members: 400 clips of 1..60 frames, and 300 single images."""
    rng = np.random.default_rng(seed)
    clips = np.repeat([f"clip{i}" for i in range(400)], rng.integers(1, 61, 400))
    images = np.asarray([f"img{i}" for i in range(300)])
    groups = np.concatenate([clips, images]).astype(object)
    members = np.concatenate([np.zeros(len(clips), int), np.ones(len(images), int)])
    order = rng.permutation(len(groups))  # item order must not matter
    return groups[order], members[order]


def test_no_group_on_both_sides_and_shares_per_member() -> None:
    groups, members = _groups()
    train, val = split_by_group(groups, 0.05, seed=1, members=members)
    assert len(train) + len(val) == len(groups) and not set(train) & set(val)
    assert not set(groups[train]) & set(groups[val])
    for m in (0, 1):
        share = np.isin(val, np.flatnonzero(members == m)).sum() / (members == m).sum()
        assert 0.04 <= share <= 0.07, (m, share)


def test_deterministic_and_independent_of_item_order() -> None:
    groups, members = _groups()
    a = split_by_group(groups, 0.05, seed=3, members=members)[1]
    perm = np.random.default_rng(9).permutation(len(groups))
    b = split_by_group(groups[perm], 0.05, seed=3, members=members[perm])[1]
    assert set(groups[a]) == set(groups[perm][b])
    c = split_by_group(groups, 0.05, seed=4, members=members)[1]
    assert set(groups[a]) != set(groups[c])


def test_small_corpora_keep_training_and_still_validate() -> None:
    train, val = split_by_group(["a"] * 10 + ["b"] * 3, 0.05)
    assert len(val) == 3 and len(train) == 10  # the fallback: one group out, the other trains
    train, val = split_by_group(["a"] * 10, 0.05)
    assert len(val) == 0 and len(train) == 10  # one clip cannot be split without leaking
    train, val = split_by_group(list("abcd"), 0.0)
    assert len(val) == 0
    with pytest.raises(DataError, match="val_fraction"):
        split_by_group(list("ab"), 1.0)


def test_a_group_spanning_members_is_on_one_side() -> None:
    groups = np.asarray(["p1", "p1", "p2", "p2", "p3"] * 20, dtype=object)
    members = np.asarray([0, 1, 0, 1, 0] * 20)
    train, val = split_by_group(groups, 0.3, members=members)
    assert not set(groups[train]) & set(groups[val])


def test_corpus_groups_of_a_folder_corpus_split_by_clip(synth_root) -> None:
    from usjepa_fast.data.corpus import build_pretrain_corpus
    from usjepa_fast.data.preprocess import PreprocessConfig

    corpus = build_pretrain_corpus([str(synth_root / "clips"), str(synth_root / "ultrabench")], PreprocessConfig(64))
    groups, members = corpus_groups(corpus)
    assert len(groups) == len(corpus) == len(members)
    train, val = split_by_group(groups, 0.2, members=members)
    assert len(val) and not set(groups[train]) & set(groups[val])
    videos = corpus.datasets[0]  # the clips folder's VideoFrameDataset: item -> (clip id, frame, timestamp)
    clip_of = lambda idx: {videos.index[int(i)][0] for i in idx if members[i] == 0}  # noqa: E731
    assert clip_of(val) and not clip_of(val) & clip_of(train)  # whole clips on one side
