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


def _shared_overrides(sources: list[str | Path], usrc: bool, seed: int, progress: bool, overrides) -> list[str]:
    src = "[" + ", ".join(str(s) for s in sources) + "]"
    return [
        f"data.sources={src}",
        f"mask.usrc={str(usrc).lower()}",
        f"run.seed={seed}",
        f"run.progress={str(progress).lower()}",
        *overrides,
    ]


def _steps(steps: int) -> list[str]:
    return [f"optim.steps={steps}", f"optim.warmup_steps={max(1, steps // 10)}"]


def pixel_teacher_stage(
    sources: list[str | Path],
    out_dir: str | Path,
    steps: int = 150,
    overrides: list[str] | tuple[str, ...] = DEMO_OVERRIDES,
    config: str = "pixel_teacher_tiny_cpu",
    usrc: bool = True,
    seed: int = 0,
    progress: bool = True,
    resume: bool = False,
) -> RunSummary:
    """SALT stage 1 into ``out_dir``: masked pixel reconstruction; its ``student.safetensors`` is the
    frozen teacher of stage 2. Raises if the run stopped before its last step (e.g. Ctrl-C)."""
    cfg = load_train_config(
        config, [*_shared_overrides(sources, usrc, seed, progress, overrides), *_steps(steps), f"run.out_dir={out_dir}"]
    )
    log.info("SALT stage 1: pixel teacher, %d steps -> %s", steps, out_dir)
    teacher = run(cfg, resume=resume)
    if teacher.student_path is None:
        raise RuntimeError(f"stage 1 stopped before the end ({teacher.step}/{teacher.total_steps} steps)")
    return teacher


def salt_student_stage(
    teacher: str | Path,
    sources: list[str | Path],
    out_dir: str | Path,
    steps: int = 150,
    overrides: list[str] | tuple[str, ...] = DEMO_OVERRIDES,
    config: str = "salt_tiny_cpu",
    usrc: bool = True,
    seed: int = 0,
    progress: bool = True,
    resume: bool = False,
) -> RunSummary:
    """SALT stage 2 into ``out_dir``: the student predicts the latents of the frozen ``teacher`` (any
    teacher spec: a stage-1 ``student.safetensors``, a run dir, ``zoo:NAME=PATH``, ...)."""
    cfg = load_train_config(
        config,
        [
            *_shared_overrides(sources, usrc, seed, progress, overrides),
            *_steps(steps),
            f"teacher.spec={teacher}",
            f"run.out_dir={out_dir}",
        ],
    )
    log.info("SALT stage 2: student from teacher %s, %d steps -> %s", teacher, steps, out_dir)
    return run(cfg, resume=resume)


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
    common = dict(overrides=overrides, usrc=usrc, seed=seed, progress=progress, resume=resume)
    teacher = pixel_teacher_stage(sources, out / "teacher", teacher_steps, config=teacher_config, **common)
    student = salt_student_stage(
        teacher.student_path, sources, out / "student", student_steps, config=student_config, **common
    )
    return TwoStageResult(teacher=teacher, student=student)
