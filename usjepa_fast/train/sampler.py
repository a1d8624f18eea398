"""A deterministic, resumable, distributed sampler.

Each epoch's order is a pure function of ``(seed, epoch)``: a permutation, or, when per-item
weights are given (the mixed corpus caps large sources), weighted draws with replacement. Rank r
takes every ``world``-th index (the list is padded by wrapping so that all ranks see the same number
of batches, as DistributedSampler does). ``start`` skips the items already consumed in the current
epoch, which is how a resumed run continues exactly where the killed one stopped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ResumableDistributedSampler(Sampler[int]):
    def __init__(
        self,
        num_items: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        weights: Sequence[float] | None = None,
    ) -> None:
        if num_items <= 0:
            raise ValueError("sampler needs at least one item")
        self.num_items = num_items
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.weights = torch.as_tensor(weights, dtype=torch.float64) if weights is not None else None
        self.epoch = 0
        self.start = 0
        self.per_rank = -(-num_items // world_size)  # ceil: every rank gets the same count

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip its first ``start`` items of this rank."""
        self.epoch = epoch
        self.start = start

    def epoch_order(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.weights is None:
            order = torch.randperm(self.num_items, generator=gen)
        else:
            order = torch.multinomial(self.weights, self.num_items, replacement=True, generator=gen)
        total = self.per_rank * self.world_size
        order = torch.cat([order, order[: total - self.num_items]]) if total > self.num_items else order
        return order[self.rank :: self.world_size].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order(self.epoch)[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start
