"""Atomic, rolling training checkpoints and the export-ready student.

Checkpoint ``checkpoints/step_XXXXXXX.pt`` holds everything resume needs: student, predictor, EMA
teacher (EMA mode), optimizer, step, data position (epoch, micro-batches consumed in it), every
RNG state (python, numpy, torch CPU, CUDA) and the best validation loss. Writes go to a temporary
file in the same directory, are fsync'ed and then ``os.replace``d, so a kill at any point leaves
either the previous or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usjepa_fast.errors import CheckpointError
from usjepa_fast.fileio import atomic_open

log = logging.getLogger("usfast")
_STEP_RE = re.compile(r"step_(\d+)\.pt$")


def atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_open(path) as handle:
        torch.save(obj, handle)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:07d}.pt"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    ckpt_dir = run_dir / "checkpoints"
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _STEP_RE.search(p.name)
        if m and not p.name.startswith("."):
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_rolling(state: dict[str, Any], run_dir: Path, step: int, keep_last: int) -> Path:
    """Write the step checkpoint atomically, then prune all but the newest ``keep_last``."""
    path = checkpoint_path(run_dir, step)
    atomic_torch_save(state, path)
    for _, old in list_checkpoints(run_dir)[: -max(1, keep_last)]:
        old.unlink(missing_ok=True)
    return path


def load_training_state(path: Path) -> dict[str, Any]:
    try:
        # Our own files: RNG states hold numpy arrays/tuples, so weights_only is not applicable.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(
            f"training checkpoint {path} cannot be read ({exc.__class__.__name__}); delete it to resume from "
            "the previous one"
        ) from None
