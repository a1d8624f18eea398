"""The validation hold-out, by clip or patient group: never two frames of one clip on both sides.

Neighbouring frames of a clip are near-duplicates, and images of one patient share anatomy, scanner
and gain; a hold-out drawn frame by frame leaks them into validation, and its loss then measures
memorisation. :func:`split_by_group` holds out whole groups, chosen per corpus member in a seeded
stable-hash order (independent of item order, ``PYTHONHASHSEED`` and the worker count), until the
member's share of ``val_fraction`` is reached. :func:`corpus_groups` gives the groups of the corpora
the trainer builds: a :class:`~usjepa_fast.data.prepared.PreparedCorpus` (its unit table) or a
:class:`~usjepa_fast.data.corpus.MixedCorpus` of folder / UltraBench datasets.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from usjepa_fast.errors import DataError

log = logging.getLogger("usfast")


def _rank(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{seed}\x00{key}".encode()).digest()[:8], "big")


def split_by_group(
    groups: Sequence[Any] | np.ndarray, val_fraction: float, seed: int = 0, members: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` sorted int64 item indices; items of one group are all on one side.

    ``groups (N,)``: a group key per item (clip path, patient id, or an integer id); ``members (N,)``:
    the corpus member of each item (default: one member), so every member contributes about
    ``val_fraction`` of its items. Within a member, groups are taken in the order of a seeded hash
    of their key while the member's hold-out is below its share; a group that would take it past
    twice the share is passed over (a 900-frame clip does not become the hold-out of a small
    member), and a member's last group always stays in training. If that leaves no validation item
    although ``val_fraction > 0``, the smallest group of the member with the most groups (at least
    two) is held out.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction} must be in [0, 1)")
    keys = np.asarray([str(g) for g in groups], dtype=object)
    n = len(keys)
    member_of = np.zeros(n, dtype=np.int64) if members is None else np.asarray(members, dtype=np.int64)
    if member_of.shape != (n,):
        raise DataError(f"members has shape {member_of.shape}, expected ({n},): one member per item")
    if val_fraction == 0.0 or n < 2:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    held_keys: set[str] = set()
    fallback: tuple[int, str] | None = None  # (groups in the member, its smallest group)
    for m in np.unique(member_of):
        where = np.flatnonzero(member_of == m)
        names, inverse, counts = np.unique(keys[where], return_inverse=True, return_counts=True)
        if len(names) < 2:
            continue
        order = sorted(range(len(names)), key=lambda g: (_rank(seed, names[g]), names[g]))
        share = val_fraction * len(where)
        taken, picked = 0, []
        for g in order[:-1]:  # the last group in hash order never leaves training
            if taken >= share:
                break
            if taken + counts[g] > 2 * share:
                continue
            picked.append(g)
            taken += counts[g]
        held_keys.update(names[g] for g in picked)
        if fallback is None or len(names) > fallback[0]:
            smallest = min(order, key=lambda g: counts[g])  # first in hash order among the smallest
            fallback = (len(names), names[smallest])
    if not held_keys and fallback is not None:
        held_keys.add(fallback[1])
        log.info("validation hold-out: every member is too small for its share; holding out one group")
    # A group is one side for the whole corpus, even when it has items in several members.
    held = np.isin(keys, np.asarray(sorted(held_keys), dtype=object))
    return np.flatnonzero(~held), np.flatnonzero(held)


def _source_key(root: Path, path: Path | str) -> str:
    """``<source name>/<path relative to the source>``: the group key ``usfast prepare`` records for a
    folder input (a source that is a file is relative to its folder)."""
    root, path = Path(root).absolute(), Path(path).absolute()
    base = root if root.is_dir() else root.parent
    rel = path.relative_to(base).as_posix() if path.is_relative_to(base) else path.as_posix()
    return f"{root.name or root}/{rel}"


def corpus_groups(corpus: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(groups (N,), members (N,))`` of a ``PreparedCorpus`` or a ``MixedCorpus`` whose members are
    ``VideoFrameDataset`` (a frame's group is its clip), ``ImageFolderDataset`` (the file),
    ``UltraBenchDataset`` (the record's patient, else the image) or ``PreparedCorpus.member_datasets()``
    views (the prepared unit's group: clip, image, patient or folder). Keys do not depend on storage:
    ``<source name>/<relative path>`` (UltraBench: ``<source name>/<patient>``), the groups prepare
    records, so a raw folder and its prepared corpus hold out the same clips."""
    if hasattr(corpus, "item_groups") and hasattr(corpus, "item_member"):  # PreparedCorpus
        return np.asarray(corpus.item_groups, dtype=np.int64), np.asarray(corpus.item_member, dtype=np.int64)
    datasets = getattr(corpus, "datasets", None)
    if datasets is None:
        raise DataError(f"cannot tell the groups of a {type(corpus).__name__}; pass a PreparedCorpus or MixedCorpus")
    groups: list[str] = []
    members: list[int] = []
    for d, ds in enumerate(datasets):
        base = getattr(ds, "dataset", None)  # a Subset: PreparedCorpus.member_datasets() views
        if base is not None and hasattr(base, "item_groups"):
            # The corpus's own group names (they carry the source), so a patient folder with images and
            # clips (two members) stays one group.
            names = base.group_names[base.item_groups[np.asarray(ds.indices, dtype=np.int64)]]
            keys = [str(g) for g in names]
        elif hasattr(ds, "index") and hasattr(ds, "files"):  # VideoFrameDataset: (clip id, frame, timestamp)
            clip_keys = [_source_key(ds.root, f) for f in ds.files]
            keys = [clip_keys[fid] for fid, _, _ in ds.index]
        elif hasattr(ds, "groups") and hasattr(ds, "paths"):  # UltraBenchDataset
            name = Path(ds.root).absolute().name
            keys = [
                f"{name}/{g}" if g is not None else _source_key(ds.root, p)
                for g, p in zip(ds.groups, ds.paths, strict=True)
            ]
        elif hasattr(ds, "files"):  # ImageFolderDataset
            keys = [_source_key(ds.root, p) for p in ds.files]
        else:
            raise DataError(f"corpus member {d} ({type(ds).__name__}) has no clip, patient or file to group by")
        if len(keys) != len(ds):
            raise DataError(f"corpus member {d} lists {len(keys)} groups for {len(ds)} items")
        groups += keys
        members += [d] * len(keys)
    return np.asarray(groups, dtype=object), np.asarray(members, dtype=np.int64)
