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
    for the block. A folder this call created is removed again when the block fails before writing
    anything into it (a refused option leaves no empty ``--out`` behind)."""
    from usjepa_fast.fileio import check_output_dir, folder_lock

    check_output_dir(out, what="--out")
    created = not Path(out).exists()
    try:
        if not lock:
            yield out
            return
        with folder_lock(out, purpose):
            yield out
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                Path(out).rmdir()  # only succeeds when empty: results written so far stay
        raise


def claim_output_file(out: Path) -> Path:
    """Refuse an unwritable ``--out`` file in one line (``fileio.check_output_file``)."""
    from usjepa_fast.fileio import check_output_file

    return check_output_file(out, what="--out")
