"""Two-stage SALT in one call: stage-1 pixel teacher, then the SALT student distilled from it.

This is what ``usfast demo`` and ``benchmarks/salt_vs_random.py`` run: a user without a URFM
checkpoint builds a domain teacher from their own frames (masked pixel reconstruction), freezes it,
and trains the student to predict its latents (SALT stage 2). With the tiny recipes it finishes in a
few minutes on 2 CPU cores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from usjepa_fast.train.config import load_train_config
from usjepa_fast.train.engine import RunSummary, run

log = logging.getLogger("usfast")

# Extra --set strings for both stages (the tiny recipes already hold the CPU geometry).
DEMO_OVERRIDES: tuple[str, ...] = ()


@dataclass
class TwoStageResult:
    teacher: RunSummary  # stage 1: pixel teacher run (its student.safetensors is the SALT teacher)
    student: RunSummary  # stage 2: SALT student run

    @property
    def student_path(self) -> Path | None:
        return self.student.student_path


def pretrain_two_stage(
    sources: list[str | Path],
    out_dir: str | Path,
    teacher_steps: int = 150,
    student_steps: int = 150,
    overrides: list[str] | tuple[str, ...] = DEMO_OVERRIDES,
    teacher_config: str = "pixel_teacher_tiny_cpu",
    student_config: str = "salt_tiny_cpu",
    usrc: bool = True,
    seed: int = 0,
    progress: bool = True,
    resume: bool = False,
) -> TwoStageResult:
    """Stage 1 into ``out_dir/teacher``, stage 2 into ``out_dir/student``; returns both summaries.

    ``sources``: UltraBench directories (their train split) or image/video folders. ``overrides``
    are ``--set`` strings applied to both stages (after the shared ones set here). ``resume``
    continues either stage from its newest checkpoint (a finished stage is not re-run).
    """
    out = Path(out_dir)
    src = "[" + ", ".join(str(s) for s in sources) + "]"
    shared = [
        f"data.sources={src}",
        f"mask.usrc={str(usrc).lower()}",
        f"run.seed={seed}",
        f"run.progress={str(progress).lower()}",
        *overrides,
    ]
    teacher_dir, student_dir = out / "teacher", out / "student"

    t_cfg = load_train_config(
        teacher_config,
        [
            *shared,
            f"optim.steps={teacher_steps}",
            f"optim.warmup_steps={max(1, teacher_steps // 10)}",
            f"run.out_dir={teacher_dir}",
        ],
    )
    log.info("SALT stage 1: pixel teacher, %d steps -> %s", teacher_steps, teacher_dir)
    teacher = run(t_cfg, resume=resume)
    if teacher.student_path is None:
        raise RuntimeError(f"stage 1 stopped before the end ({teacher.step}/{teacher.total_steps} steps)")

    s_cfg = load_train_config(
        student_config,
        [
            *shared,
            f"optim.steps={student_steps}",
            f"optim.warmup_steps={max(1, student_steps // 10)}",
            f"teacher.spec={teacher.student_path}",
            f"run.out_dir={student_dir}",
        ],
    )
    log.info("SALT stage 2: student from teacher %s, %d steps -> %s", teacher.student_path, student_steps, student_dir)
    student = run(s_cfg, resume=resume)
    return TwoStageResult(teacher=teacher, student=student)
