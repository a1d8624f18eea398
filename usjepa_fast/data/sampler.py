"""The one corpus sampler: weighted across datasets, permutation streams inside them, resumable, sharded.

A pretraining corpus is a concatenation of member datasets (dataset 0's items first, then dataset
1's, ...; :class:`~usjepa_fast.data.corpus.MixedCorpus` or a train subset of it). Each epoch:

1. **Quotas.** Member ``d`` gets ``q_d`` draws with ``q_d ∝ w_d``, ``w_d ∝ min(size_d, cap)``
   (cap = 50,000 frames in the paper: one huge video collection cannot drown the small image
   datasets, big datasets still get more draws). Quotas are the exact largest-remainder rounding of
   ``num_samples * w`` (stratified, not multinomial: no epoch-to-epoch noise in the mixture). The
   default ``num_samples = sum(min(size_d, cap))`` makes ``q_d = min(size_d, cap)``: a corpus whose
   members are all below the cap is sampled as one plain permutation per epoch.
2. **Streams.** Inside member ``d`` the epoch takes the next ``q_d`` items of an endless stream of
   fresh permutations (permutation ``k`` seeded by ``(seed, d, k)``), continuing across epochs: a
   capped dataset is covered evenly over epochs, small ones are never re-drawn before exhaustion.
3. **Merge.** The epoch's *visits* (in item mode, one item each) are shuffled together, seeded by
   ``(seed, epoch)``.
4. **Shards.** The epoch list is padded by wrapping to a multiple of ``world_size`` so every rank
   gets the same count (as ``DistributedSampler``), and rank ``r`` takes every ``world_size``-th item.

Everything is a pure function of ``(seed, epoch)``; ``set_epoch(epoch, start)`` skips the first
``start`` items of this rank's epoch, which is how a resumed run continues exactly where it stopped.

Clip-aware mode (``clips=`` + ``frames_per_visit=k > 1``): reading one random frame of a video costs
a decode of (a good part of) its clip, so a member whose items are frames of clips is visited clip by
clip. Its endless stream is made of *arrangements* instead of permutations: arrangement ``j`` shuffles
each clip's items, cuts them into visits of at most ``k`` items (sorted inside a visit, so one forward
decode serves it) and shuffles the visits of all clips. An epoch takes the next ``quota`` items of
that stream, cutting the visits at the window's edges, so quotas, coverage across epochs and resume
are exactly those of item mode. :meth:`CorpusSampler.member_visits` returns ``(items, visit_lengths)``
either way; the merge shuffles whole visits and keeps each visit's items adjacent. In this mode the
ranks get contiguous blocks of the merged (padded) order, so a visit is split between ranks only at
the ``world_size - 1`` block edges. :func:`clip_ids` reads the clip of each item from the datasets
usfast builds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from usjepa_fast.errors import DataError

DEFAULT_CAP = 50_000
_MEMBER, _MERGE, _CLIPS = 1, 2, 3  # seed-sequence tags: item permutations, the epoch merge, clip arrangements


def clip_ids(dataset: Any) -> np.ndarray | None:
    """The clip of each item of ``dataset`` ``(len,)`` int64, or None when it has no clips (images).

    ``VideoFrameDataset``: its index's file ids; ``PreparedCorpus`` (or one of its ``member_datasets()``
    views): the units; a ``torch.utils.data.Subset`` of either: those of its indices."""
    indices = getattr(dataset, "indices", None)
    base = getattr(dataset, "dataset", None)
    if indices is not None and base is not None:  # a Subset
        ids = clip_ids(base)
        return None if ids is None else ids[np.asarray(indices, dtype=np.int64)]
    if hasattr(dataset, "item_clip"):  # PreparedCorpus
        return np.asarray(dataset.item_clip, dtype=np.int64)
    index = getattr(dataset, "index", None)
    if index is not None and hasattr(dataset, "files"):  # VideoFrameDataset: (file id, frame, timestamp)
        return np.asarray([fid for fid, _, _ in index], dtype=np.int64)
    return None


def corpus_weights(sizes: Sequence[int], cap: int | None = DEFAULT_CAP) -> np.ndarray:
    """Per-member sampling probability ``∝ min(size, cap)`` (``cap=None``: ``∝ size``), summing to 1."""
    s = np.asarray(sizes, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or (s <= 0).any():
        raise DataError(f"corpus member sizes {list(sizes)} must be a non-empty list of positive counts")
    if cap is not None and cap < 1:
        raise DataError(f"corpus cap={cap} must be >= 1")
    capped = np.minimum(s, cap) if cap is not None else s
    return capped / capped.sum()


def quotas(num_samples: int, weights: np.ndarray) -> np.ndarray:
    """Integer draws per member summing to ``num_samples``: largest-remainder rounding of ``n * w``."""
    exact = num_samples * np.asarray(weights, dtype=np.float64)
    base = np.floor(exact + 1e-9).astype(np.int64)
    rest = int(num_samples - base.sum())
    if rest > 0:
        frac = exact - base
        order = np.lexsort((np.arange(len(frac)), -frac))  # largest remainder first, ties by index
        base[order[:rest]] += 1
    return base


class CorpusSampler(Sampler[int]):
    """Indices into a concatenation of members of ``sizes`` (see the module doc).

    ``cap``: per-member cap of the weights (``None``: weights ∝ size). ``weights``: explicit
    per-member weights instead. ``num_samples``: draws per epoch across all ranks (default
    ``sum(min(size, cap))``). ``clips``: per member, the clip id of each of its items ``(size,)`` or
    None; with ``frames_per_visit > 1`` members that have a clip of several items are visited clip by
    clip (see the module doc).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        cap: int | None = DEFAULT_CAP,
        *,
        weights: Sequence[float] | None = None,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        clips: Sequence[np.ndarray | None] | None = None,
        frames_per_visit: int = 1,
    ) -> None:
        self.sizes = [int(n) for n in sizes]
        self.cap = cap
        if weights is None:
            self.weights = corpus_weights(self.sizes, cap)
        else:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(self.sizes),) or (w < 0).any() or not w.sum() > 0:
                raise DataError(f"corpus weights {list(weights)} must be one non-negative weight per member")
            corpus_weights(self.sizes, None)  # validates the sizes
            self.weights = w / w.sum()
        if num_samples is None:
            num_samples = int(sum(min(n, cap) if cap is not None else n for n in self.sizes))
        if num_samples < 1:
            raise DataError(f"num_samples={num_samples} must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} outside world size {world_size}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.offsets = np.cumsum([0, *self.sizes])
        self.quotas = quotas(self.num_samples, self.weights)  # (members,) draws per epoch
        self.per_rank = -(-self.num_samples // self.world_size)  # ceil: every rank gets the same count
        self.epoch = 0
        self.start = 0
        if isinstance(frames_per_visit, bool) or not isinstance(frames_per_visit, int) or frames_per_visit < 1:
            raise DataError(f"frames_per_visit={frames_per_visit!r} must be an integer >= 1 (1 = one item per visit)")
        self.frames_per_visit = frames_per_visit
        if clips is not None and len(clips) != len(self.sizes):
            raise DataError(f"{len(clips)} clip arrays for {len(self.sizes)} corpus members; give one (or None) each")
        # per member: (items grouped by clip, clip lengths) in clip mode, else None (item mode)
        self._groups: list[tuple[np.ndarray, np.ndarray] | None] = [
            self._clip_groups(d, ids) if clips is not None and frames_per_visit > 1 else None
            for d, ids in enumerate(clips if clips is not None else [None] * len(self.sizes))
        ]
        self.clip_mode = any(g is not None for g in self._groups)

    def _clip_groups(self, member: int, ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        if ids is None:
            return None
        ids = np.asarray(ids)
        if ids.shape != (self.sizes[member],):
            raise DataError(f"member {member}: {ids.shape} clip ids for {self.sizes[member]} items; one per item")
        dense, counts = np.unique(ids, return_inverse=True, return_counts=True)[1:]
        if counts.max(initial=0) <= 1:  # every clip one item (an image member): item mode
            return None
        grouped = np.lexsort((np.arange(len(dense)), dense))  # items by clip, in item order inside a clip
        return grouped.astype(np.int64), counts.astype(np.int64)

    @classmethod
    def from_corpus(cls, corpus: Any, **kwargs: Any) -> CorpusSampler:
        """For a :class:`~usjepa_fast.data.corpus.MixedCorpus` (its member sizes and cap); with
        ``frames_per_visit`` > 1 and no ``clips`` given, the members' :func:`clip_ids`."""
        if kwargs.get("frames_per_visit", 1) > 1 and "clips" not in kwargs:
            kwargs["clips"] = [clip_ids(ds) for ds in getattr(corpus, "datasets", [])] or None
        return cls(corpus.sizes, corpus.cap, **kwargs)

    # -- the epoch ----------------------------------------------------------------------------------
    def _permutation(self, member: int, k: int) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, _MEMBER, member, k])))
        return rng.permutation(self.sizes[member])

    def _arrangement(self, member: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Clip mode's ``j``-th pass over a member: ``(every item once, visit lengths)``."""
        grouped, counts = self._groups[member]  # type: ignore[misc]
        k = self.frames_per_visit
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, _CLIPS, member, j])))
        clip = np.repeat(np.arange(len(counts)), counts)  # clip of each grouped position
        shuffled = grouped[np.lexsort((rng.random(len(grouped)), clip))]  # each clip's items shuffled
        first = np.cumsum(counts) - counts
        visits_of_clip = -(-counts // k)
        local_visit = (np.arange(len(grouped)) - np.repeat(first, counts)) // k  # visit inside its clip
        visit = np.repeat(np.cumsum(visits_of_clip) - visits_of_clip, counts) + local_visit
        rank = np.empty(int(visits_of_clip.sum()), np.int64)
        rank[rng.permutation(len(rank))] = np.arange(len(rank))  # the visits of all clips shuffled
        order = np.lexsort((shuffled, rank[visit]))  # visit by visit, sorted items inside each
        return shuffled[order], np.bincount(rank[visit], minlength=len(rank)).astype(np.int64)

    def member_visits(self, member: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(local item indices, visit lengths)`` member ``member`` contributes to ``epoch``: the next
        ``quota`` items of the member's endless stream (item mode: of permutations, one item per visit;
        clip mode: of arrangements, visits cut at the window's edges; see the module doc)."""
        q, n = int(self.quotas[member]), self.sizes[member]
        if q == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        start = epoch * q  # position in the endless stream
        first, last = start // n, (start + q - 1) // n
        off = start - first * n
        if self._groups[member] is None:
            stream = np.concatenate([self._permutation(member, k) for k in range(first, last + 1)])
            return stream[off : off + q].astype(np.int64), np.ones(q, np.int64)
        parts = [self._arrangement(member, j) for j in range(first, last + 1)]
        items = np.concatenate([p[0] for p in parts])
        ends = np.cumsum(np.concatenate([p[1] for p in parts]))
        cut = np.clip(ends, off, off + q) - np.clip(ends - np.concatenate([p[1] for p in parts]), off, off + q)
        return items[off : off + q], cut[cut > 0]

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Global indices of ``epoch`` across all ranks, ``(num_samples,)``, before sharding."""
        items, lengths = [], []
        for d in range(len(self.sizes)):
            local, visit = self.member_visits(d, epoch)
            items.append(local + self.offsets[d])
            lengths.append(visit)
        flat = np.concatenate(items)
        visit_len = np.concatenate(lengths)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, _MERGE, epoch])))
        order = rng.permutation(len(visit_len))  # shuffle whole visits
        starts = np.cumsum(visit_len) - visit_len
        new_len = visit_len[order]
        # item positions: each shuffled visit's run of items, kept adjacent
        pos = np.repeat(starts[order] - (np.cumsum(new_len) - new_len), new_len) + np.arange(int(new_len.sum()))
        return flat[pos]

    def rank_order(self, epoch: int) -> np.ndarray:
        """This rank's share of ``epoch`` (``per_rank`` indices; padded by wrapping). Item mode: every
        ``world_size``-th item; clip mode: the rank's contiguous block, so visits stay whole."""
        order = self.epoch_order(epoch)
        total = self.per_rank * self.world_size
        if total > len(order):
            order = np.concatenate([order, np.resize(order, total - len(order))])
        if self.clip_mode:
            return order[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        return order[self.rank :: self.world_size]

    # -- the Sampler protocol -------------------------------------------------------------------------
    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip this rank's first ``start`` items (exact resume)."""
        if not 0 <= start <= self.per_rank:
            raise DataError(f"sampler start={start} outside this rank's epoch of {self.per_rank} items")
        self.epoch, self.start = int(epoch), int(start)

    def __iter__(self) -> Iterator[int]:
        return iter(self.rank_order(self.epoch)[self.start :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start

    def member_of(self, index: int) -> int:
        """The member a global index belongs to."""
        return int(np.searchsorted(self.offsets, index, side="right") - 1)
