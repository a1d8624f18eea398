"""The CLI side of issue 14's output rules: check a command's output path before any compute and
hold the output folder's lock while the command runs (``fileio`` owns both checks and locks)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def claim_output_dir(out: Path, purpose: str, *, lock: bool = True) -> Iterator[Path]:
    """``with claim_output_dir(out, "usfast probe"): ...``: refuse an unwritable ``--out`` folder in
    one line (``fileio.check_output_dir``); with ``lock``, hold ``fileio.folder_lock(out, purpose)``
    for the block."""
    from usjepa_fast.fileio import check_output_dir, folder_lock

    check_output_dir(out, what="--out")
    if not lock:
        yield out
        return
    with folder_lock(out, purpose):
        yield out


def claim_output_file(out: Path) -> Path:
    """Refuse an unwritable ``--out`` file in one line (``fileio.check_output_file``)."""
    from usjepa_fast.fileio import check_output_file

    return check_output_file(out, what="--out")
