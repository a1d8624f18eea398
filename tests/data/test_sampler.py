"""The one corpus sampler: min(size, cap) quotas, permutation streams, determinism, exact resume, shards."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from usjepa_fast.data.sampler import CorpusSampler, corpus_weights, quotas
from usjepa_fast.errors import DataError


def _members(sampler: CorpusSampler, idx) -> np.ndarray:
    return np.array([sampler.member_of(i) for i in idx])


def test_weights_and_quotas_follow_min_size_cap() -> None:
    np.testing.assert_allclose(corpus_weights([10, 1000, 200], cap=300), np.array([10, 300, 200]) / 510)
    np.testing.assert_allclose(corpus_weights([10, 30], cap=None), [0.25, 0.75])
    s = CorpusSampler([10, 1000, 200], cap=300)
    assert s.num_samples == 510 and s.quotas.tolist() == [10, 300, 200]  # default epoch: the capped total
    idx = list(s)
    assert len(idx) == len(s) == 510
    assert np.bincount(_members(s, idx), minlength=3).tolist() == [10, 300, 200]
    # the small member is covered once (a permutation), the capped one without repeats
    assert sorted(i for i in idx if i < 10) == list(range(10))
    big = [i for i in idx if 10 <= i < 1010]
    assert len(set(big)) == 300
    q = quotas(7, np.array([0.5, 0.25, 0.25]))
    assert q.tolist() == [3, 2, 2]  # 3.5, 1.75, 1.75: the two largest remainders get the spare draws
    assert quotas(3, np.array([0.5, 0.5])).tolist() == [2, 1]  # ties go to the first member


def test_proportions_over_a_long_epoch_and_even_coverage_of_small_members() -> None:
    s = CorpusSampler([10, 1000, 200], cap=300, num_samples=20_000, seed=1)
    idx = list(s)
    frac = np.bincount(_members(s, idx), minlength=3) / len(idx)
    np.testing.assert_allclose(frac, s.weights, atol=1e-4)  # stratified: exact up to rounding
    counts = np.bincount([i for i in idx if i < 10], minlength=10)
    assert counts.max() - counts.min() <= 1  # a permutation stream, not i.i.d. draws


def test_streams_continue_across_epochs_so_a_capped_member_is_covered() -> None:
    s = CorpusSampler([1000, 50], cap=100, seed=4)
    seen = set()
    for epoch in range(10):
        s.set_epoch(epoch)
        seen |= {i for i in s if i < 1000}
    assert len(seen) == 1000  # 10 epochs x 100 draws walk one whole permutation of the big member


def test_uniform_members_give_one_permutation_per_epoch() -> None:
    s = CorpusSampler([37], cap=None, seed=9)
    a = list(s)
    assert sorted(a) == list(range(37))
    s.set_epoch(1)
    b = list(s)
    assert sorted(b) == list(range(37)) and a != b


def test_deterministic_in_seed_and_epoch() -> None:
    a, b = CorpusSampler([50, 70], num_samples=100, seed=3), CorpusSampler([50, 70], num_samples=100, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(CorpusSampler([50, 70], num_samples=100, seed=4)) != list(b)


def test_resume_continues_exactly_and_len_counts_what_is_left() -> None:
    s = CorpusSampler([40, 25, 9], cap=30, seed=2)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start=17)
    assert len(s) == len(full) - 17 and list(s) == full[17:]
    # what a DataLoader sees after a resume at batch 4 of 8-item batches is the tail of the epoch
    batches = [b.tolist() for b in DataLoader(range(74), batch_size=8, sampler=s, drop_last=True)]
    assert sum(batches, []) == full[17 : 17 + 8 * len(batches)]
    with pytest.raises(DataError, match="start"):
        s.set_epoch(0, start=len(full) + 1)


def test_rank_shards_are_disjoint_equal_and_cover_the_epoch() -> None:
    full = CorpusSampler([40, 60], num_samples=101, seed=0).epoch_order(0).tolist()
    parts = [list(CorpusSampler([40, 60], num_samples=101, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 51  # padded by wrapping: every rank the same count
    assert sorted(parts[0] + parts[1]) == sorted(full + full[:1])
    assert parts[0] == full[0::2] and parts[1] == [*full[1::2], full[0]]


def test_visits_keep_their_items_adjacent() -> None:
    """The extension point for clip-aware sampling: a member contributing runs of items (a clip's
    frames) keeps each run together after the merge shuffle."""

    class Runs(CorpusSampler):
        def member_visits(self, member, epoch):
            items, _ = super().member_visits(member, epoch)
            items = np.sort(items)
            return items, np.full(len(items) // 4, 4, np.int64)  # visits of 4 consecutive items

    s = Runs([16, 8], cap=None, seed=1)
    order = s.epoch_order(0).tolist()
    assert sorted(order) == list(range(24))
    runs = [order[i : i + 4] for i in range(0, 24, 4)]
    assert all(r == list(range(r[0], r[0] + 4)) for r in runs)
    assert [r[0] for r in runs] != sorted(r[0] for r in runs)  # the visits themselves are shuffled


def test_bad_arguments_are_one_line_errors() -> None:
    for kwargs, match in (
        (dict(sizes=[]), "sizes"),
        (dict(sizes=[3, 0]), "sizes"),
        (dict(sizes=[3], cap=0), "cap"),
        (dict(sizes=[3], num_samples=0), "num_samples"),
        (dict(sizes=[3], rank=2, world_size=2), "rank"),
        (dict(sizes=[3, 4], weights=[1.0]), "weights"),
    ):
        with pytest.raises(DataError, match=match):
            CorpusSampler(**kwargs)


def _clip_sampler(**kwargs) -> tuple[CorpusSampler, np.ndarray]:
    """Member 0: 5 clips of 7, 1, 12, 3 and 9 frames (items of a clip interleaved, as after a split);
    member 1: 10 images (no clips)."""
    lengths = [7, 1, 12, 3, 9]
    clip = np.repeat(np.arange(5), lengths)
    clip = clip[np.random.default_rng(3).permutation(len(clip))]
    defaults = dict(cap=None, seed=4, clips=[clip, None], frames_per_visit=4)
    return CorpusSampler([len(clip), 10], **{**defaults, **kwargs}), clip


def test_clip_mode_visits_hold_frames_of_one_clip_and_cover_every_item() -> None:
    s, clip = _clip_sampler()
    assert s.clip_mode
    items, visits = s.member_visits(0, 0)
    assert sorted(items.tolist()) == list(range(len(clip)))  # one arrangement: every frame once
    assert visits.max() <= 4 and visits.sum() == len(items)
    starts = np.cumsum(visits) - visits
    for a, n in zip(starts, visits, strict=True):
        visit = items[a : a + n]
        assert len(set(clip[visit])) == 1  # one clip per visit
        assert visit.tolist() == sorted(visit.tolist())  # sorted: one forward decode serves it
    # the merged epoch keeps every visit adjacent and still holds both members
    order = s.epoch_order(0)
    assert sorted(order.tolist()) == list(range(len(clip) + 10))
    runs = [clip[i] for i in order if i < len(clip)]
    switches = sum(a != b for a, b in zip(runs, runs[1:], strict=False))
    assert switches < len(runs) // 2  # clip by clip, not frame by frame


def test_clip_mode_is_deterministic_resumes_exactly_and_shards_whole_blocks() -> None:
    s, _ = _clip_sampler()
    s2, _ = _clip_sampler()
    assert s.epoch_order(2).tolist() == s2.epoch_order(2).tolist()
    assert s.epoch_order(0).tolist() != s.epoch_order(1).tolist()
    full = list(s)
    s2.set_epoch(0, start=9)
    assert list(s2) == full[9:]
    parts = [list(_clip_sampler(rank=r, world_size=2)[0]) for r in (0, 1)]
    order = s.epoch_order(0).tolist()
    assert parts[0] + parts[1] == (order + order)[: 2 * len(parts[0])]  # contiguous blocks, padded by wrapping
    # frames_per_visit=1 or no clips: item mode, the same order as before
    item_mode = CorpusSampler([32, 10], cap=None, seed=4)
    assert _clip_sampler(frames_per_visit=1)[0].epoch_order(0).tolist() == item_mode.epoch_order(0).tolist()


def test_clip_mode_capped_member_covers_every_frame_across_epochs() -> None:
    s, clip = _clip_sampler(cap=8)
    seen = np.concatenate([s.member_visits(0, e)[0] for e in range(len(clip) // 8 + 1)])
    assert set(seen.tolist()) == set(range(len(clip)))
    with pytest.raises(DataError, match="frames_per_visit"):
        _clip_sampler(frames_per_visit=0)
    with pytest.raises(DataError, match="clip ids"):
        CorpusSampler([5], clips=[np.zeros(4, np.int64)], frames_per_visit=2)
