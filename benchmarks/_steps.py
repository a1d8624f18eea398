"""What every step of the GPU check (``benchmarks/gpu_check.sh``) shares: the results-file header, rows
printed (and flushed) as they are measured, a time limit per row, and the last JSON line.

A step prints to stdout; the check tees it into ``gpu_<step>.txt``, so whatever a step measured
before it was stopped is in its file. A row that runs out of its time prints a timeout line and
the step goes on with the next row.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from _machine import gpu_facts, gpu_header  # noqa: E402  (benchmarks/_machine.py)


class RowTimeout(Exception):
    """A row ran past its time limit."""


class TimeLimit:
    """``with TimeLimit(s) as limit:``: SIGALRM raises :class:`RowTimeout` after ``s`` seconds.

    The alarm interrupts Python code only: a CUDA kernel, a compiler pass or a C call running when it
    fires finishes first, then the exception is raised. Libraries may wrap the exception (dynamo
    turns it into a compile error), so callers check ``limit.fired`` rather than the type. No limit
    (``seconds`` None or <= 0, or outside the main thread) runs the block unbounded.
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.fired = False
        self._armed = False

    def _handler(self, signum: int, frame: object) -> None:
        self.fired = True
        raise RowTimeout(f"ran past its {self.seconds:.0f} s limit")

    def __enter__(self) -> TimeLimit:
        if self.seconds and self.seconds > 0 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGALRM, self._handler)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self._armed = True
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> bool:
        if self._armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous)
        # an alarm that fires after the block's own handlers (its last bytecodes) ends the row, not the step
        return exc_type is RowTimeout


# The whole step's time (``USFAST_STEP_BUDGET_S``, set by gpu_check.sh a little under the hard
# ``timeout`` of the step): rows are cut to what is left of it, so the step ends by itself and its
# last JSON line is written before the shell's kill would come.
_STEP_T0 = time.monotonic()
_BUDGET_RESERVE_S = 2.0  # kept back for the ratio table and the JSON line


def budget_left() -> float | None:
    """Seconds left of the step's budget (None: no budget set)."""
    budget = os.environ.get("USFAST_STEP_BUDGET_S")
    if not budget:
        return None
    return float(budget) - (time.monotonic() - _STEP_T0) - _BUDGET_RESERVE_S


@contextlib.contextmanager
def guarded_row(row: dict, seconds: float | None) -> Iterator[TimeLimit]:
    """Run one row's measurement; an exception or a timeout is recorded in ``row`` (``error`` /
    ``timeout``), never raised, so the step goes on with its next row. The row's limit is cut to
    what is left of the step's budget; with nothing left the row stops at once (``timeout``)."""
    t0 = time.perf_counter()
    left = budget_left()
    spent = left is not None and left <= 0.5
    if left is not None:
        seconds = 1e-3 if spent else min(seconds, left) if seconds else left
    with TimeLimit(seconds) as limit:
        try:
            yield limit
        except Exception as exc:  # noqa: BLE001 - one row failing must not end the step
            if spent:
                row["timeout"] = "not run: the step's time budget was spent"
            elif limit.fired:
                row["timeout"] = f"ran past its {seconds:.0f} s limit"
            else:
                row["error"] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
    row["row_s"] = round(time.perf_counter() - t0, 2)


def emit(line: str = "") -> None:
    """Print one line now (a step killed later keeps everything printed before)."""
    print(line, flush=True)


def start(step: str, title: str, dry_run: bool) -> dict:
    """Print the results-file header of ``step``; returns the machine facts for the JSON line.

    A dry run computes with one intra-op thread: its tensors are tiny, and on a shared 2-core
    machine two OpenMP threads waiting on each other's barriers run ~40x slower than one."""
    if dry_run:
        import torch

        torch.set_num_threads(1)
    facts = gpu_facts()
    for line in gpu_header(facts):
        emit(line)
    emit(f"# gpu_check step {step}: {title}{' (DRY RUN: tiny sizes on the CPU, no GPU figure)' if dry_run else ''}")
    return facts


STATUS_RC = {"ok": 0, "failed": 1, "partial": 3}  # partial: some rows ran out of time, the rest passed


def finish(step: str, facts: dict, dry_run: bool, seconds: float, status: str, **payload: object) -> int:
    """Print the step's last line, one JSON object; returns its exit status (``STATUS_RC``)."""
    record = {"step": step, "status": status, "dry_run": dry_run, "seconds": round(seconds, 1)}
    record.update(facts)
    record.update(payload)
    emit(json.dumps(record, default=str))
    return STATUS_RC[status]
