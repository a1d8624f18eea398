"""``usfast train CONFIG [--set k=v ...] [--resume]``: SALT / EMA / stage-1 pixel pretraining.

CONFIG is a YAML file or a shipped recipe name (``salt_vitb16_paper``, ``salt_tiny_cpu``,
``pixel_teacher_tiny_cpu``, ``pixel_teacher_vitb16``). Stage 1 (our own pixel teacher) is the same
command with ``objective.kind: pixel``; its run directory is then stage 2's ``teacher.spec``.
Multi-GPU: ``torchrun --nproc_per_node 8 -m usjepa_fast train CONFIG``.
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train(
        config: str = typer.Argument(..., help="YAML config or shipped recipe name (e.g. salt_tiny_cpu)."),
        set_: list[str] = typer.Option([], "--set", help="Override a key: --set optim.lr=1e-4 (repeatable)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in run.out_dir."),
        out: Path = typer.Option(None, "--out", help="Shortcut for --set run.out_dir=PATH."),
    ) -> None:
        """Pretrain a student (SALT, EMA baseline, or stage-1 pixel teacher) from a config."""
        from usjepa_fast.train import load_train_config, run

        overrides = list(set_) + ([f"run.out_dir={out}"] if out is not None else [])
        cfg = load_train_config(config, overrides)
        summary = run(cfg, resume=resume)
        state = "finished" if summary.finished else "stopped"
        typer.echo(
            f"{state} at step {summary.step}/{summary.total_steps}: loss {summary.final_loss:.4f}, "
            f"best val {summary.best_val_loss if summary.best_val_loss is None else f'{summary.best_val_loss:.4f}'}, "
            f"{summary.images_per_s:.1f} img/s, run dir {summary.run_dir}"
        )
        if summary.student_path is not None:
            typer.echo(f"export-ready student: {summary.student_path} (+ {summary.student_path.with_suffix('.json')})")
