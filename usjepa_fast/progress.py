"""Progress of long steps: a tqdm bar on a terminal, periodic one-line log records everywhere else.

Under a batch scheduler (SLURM, Kubernetes, ``nohup ... > log``) stderr is a file and tqdm's
carriage-return stream turns into one unreadable line; there the same object logs one line every
``USFAST_PROGRESS_S`` seconds (default 30) through ``logging.getLogger("usfast")``, timm-style::

    INFO usfast: embed: 120/480 files (25%), 41.3 files/s, 88.1 frames/s, ETA 0:00:08

:func:`progress` is the one place that decides; callers use ``update(n)``, ``set_postfix_str(s)``
and ``close()`` whatever they got back (or ``None`` when progress is off).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger("usfast")

DEFAULT_INTERVAL_S = 30.0


def interval_s() -> float:
    """Seconds between log lines when stderr is not a terminal (``USFAST_PROGRESS_S``, default 30)."""
    try:
        value = float(os.environ.get("USFAST_PROGRESS_S", DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value >= 0 else DEFAULT_INTERVAL_S


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LogProgress:
    """tqdm's ``update`` / ``set_postfix_str`` / ``close`` as periodic log lines (no ``\\r``)."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, every_s: float | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.start_n = initial
        self.every_s = interval_s() if every_s is None else every_s
        self.t0 = self.last = time.perf_counter()
        self.postfix = ""

    def line(self) -> str:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        rate = (self.n - self.start_n) / dt
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        pct = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        eta = ""
        if self.total and rate > 0:
            eta = f", ETA {format_eta((self.total - self.n) / rate)}"
        extra = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done} {self.unit}s{pct}, {rate:.2f} {self.unit}s/s{extra}{eta}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            log.info("%s", self.line())

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        self.postfix = text

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in kw.items())

    def close(self) -> None:
        if self.n > self.start_n and time.perf_counter() - self.t0 >= self.every_s:
            log.info("%s (done)", self.line())


def is_terminal(stream: Any = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(total: int | None, desc: str, unit: str = "it", *, enabled: bool = True, initial: int = 0) -> Any | None:
    """A progress reporter for ``total`` units: tqdm on a terminal, :class:`LogProgress` otherwise,
    None when ``enabled`` is False."""
    if not enabled:
        return None
    if is_terminal():
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass
        else:
            return tqdm(
                total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.5, leave=False
            )
    return LogProgress(total, desc, unit, initial=initial)
