"""``usfast train CONFIG [--set k=v ...] [--resume]``, ``usfast train --resume RUN``: SALT / EMA / pixel pretraining.

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
        config: str = typer.Argument(
            ..., help="YAML config or shipped recipe name (e.g. salt_tiny_cpu); with --resume also a run directory."
        ),
        set_: list[str] = typer.Option([], "--set", help="Override a key: --set optim.lr=1e-4 (repeatable)."),
        resume: bool = typer.Option(
            False,
            "--resume",
            help="Continue the run (its own config.yaml + only the --set given now; only resumable keys may change).",
        ),
        out: Path = typer.Option(None, "--out", help="Shortcut for --set run.out_dir=PATH."),
    ) -> None:
        """Pretrain a student (SALT, EMA baseline, or stage-1 pixel teacher) from a config.

        A resumed run keeps its config: changing any key but the resumable ones (optim.steps to
        extend, run.* cadence, data.num_workers) is refused; the previous config.yaml is kept in
        RUN/config_history/. Ctrl-C / SIGTERM saves a checkpoint and exits 130 / 143.

        \b
        Examples:
          usfast train salt_tiny_cpu --set teacher.spec=runs/pixel --out runs/salt
          usfast train --resume runs/salt --set optim.steps=600
        """
        from usjepa_fast.train import load_train_config, run
        from usjepa_fast.train.config import load_resume_config

        overrides = list(set_) + ([f"run.out_dir={out}"] if out is not None else [])
        run_dir = _run_to_resume(config, out, set_) if resume else None
        if run_dir is not None and (run_dir / "config.yaml").is_file():
            cfg = load_resume_config(run_dir, list(set_))  # CONFIG is not re-read: the run's own config is
        else:
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


def _run_to_resume(config: str, out: Path | None, set_: list[str]) -> Path | None:
    """The run directory ``--resume`` continues: ``--out``, CONFIG itself when it is a folder (``usfast
    train --resume RUN``), else CONFIG's ``run.out_dir``."""
    if out is not None:
        return Path(out)
    if Path(config).is_dir():
        return Path(config)
    from usjepa_fast.train import load_train_config

    return Path(load_train_config(config, list(set_)).run.out_dir)
