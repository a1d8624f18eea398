"""Deterministic split of the input files over ``torchrun`` ranks (no cluster code of our own).

Ranks learn ``RANK``/``WORLD_SIZE`` from the environment ``torchrun`` sets (one or many nodes). Files
are balanced by size with the longest-processing-time greedy rule on a sorted listing, which is
deterministic for every rank that sees the same folder, so the shares are disjoint and complete
without any communication; ``torch.distributed`` (gloo) is used only for the barrier before the
rank-0 merge.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Sequence
from datetime import timedelta

log = logging.getLogger("usfast")


def env_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment; ``(0, 1)`` outside torchrun."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1
    return (rank, world) if 0 <= rank < world else (0, 1)


def assign_shares(sizes: Sequence[int], world_size: int) -> list[list[int]]:
    """Indices of the items (e.g. files, by byte size) for each rank; disjoint and covering.

    Largest first, each to the rank with the least bytes so far (ties: lowest rank); each share is
    returned in ascending index order so ranks walk the listing in the same (sorted) order.
    """
    if world_size < 1:
        raise ValueError(f"world_size {world_size} must be >= 1")
    order = sorted(range(len(sizes)), key=lambda i: (-int(sizes[i]), i))
    heap = [(0, r) for r in range(world_size)]
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for i in order:
        load, r = heapq.heappop(heap)
        shares[r].append(i)
        heapq.heappush(heap, (load + max(1, int(sizes[i])), r))
    return [sorted(s) for s in shares]


def barrier(world_size: int) -> bool:
    """Wait for all ranks (gloo process group from torchrun's env). Returns False when no process
    group can be formed (not under torchrun), in which case the caller merges later."""
    if world_size <= 1:
        return True
    import torch.distributed as dist

    if not dist.is_available():
        return False
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            return False
        # gloo: a CPU barrier works whatever the inference device; generous timeout for slow ranks
        dist.init_process_group("gloo", timeout=timedelta(hours=12))
    dist.barrier()
    return True
