"""Schedules as pure functions of the optimizer step (so resume needs only the step number).

- lr: linear warm-up ``start_lr -> lr`` over ``warmup_steps``, then cosine ``lr -> final_lr``;
- weight decay: cosine ramp ``weight_decay -> final_weight_decay`` (I-JEPA: 0.04 -> 0.4);
- EMA momentum: linear ``m0 -> m1`` (I-JEPA: 0.996 -> 1.0).
"""

from __future__ import annotations

import math


def lr_at(step: int, total: int, warmup: int, start_lr: float, peak_lr: float, final_lr: float) -> float:
    if warmup > 0 and step < warmup:
        return start_lr + (peak_lr - start_lr) * step / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return final_lr + 0.5 * (peak_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


def wd_at(step: int, total: int, start_wd: float, final_wd: float) -> float:
    progress = min(1.0, step / max(1, total))
    return final_wd + 0.5 * (start_wd - final_wd) * (1.0 + math.cos(math.pi * progress))


def momentum_at(step: int, total: int, start: float, end: float) -> float:
    return start + (end - start) * min(1.0, step / max(1, total))
