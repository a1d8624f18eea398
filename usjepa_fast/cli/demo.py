"""``usfast demo --out DIR``: the pipeline end to end on built-in synthetic data (a few minutes on 2 CPUs)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("demo_run"), "--out", "-o", help="Folder for the data and every stage's output."),
        n_images: int = typer.Option(
            None, "--n-images", help="Synthetic images (default 1400; 15% test: ~210 test images)."
        ),
        n_clips: int = typer.Option(8, "--n-clips", help="Synthetic clips."),
        size: int = typer.Option(256, "--size", help="Synthetic image side in pixels."),
        seed: int = typer.Option(0, "--seed", help="Random seed."),
        stage: list[str] = typer.Option(None, "--stage", help="Run only these stages (repeatable)."),
        teacher_steps: int = typer.Option(200, "--teacher-steps", help="Stage-1 pixel-teacher training steps."),
        student_steps: int = typer.Option(300, "--student-steps", help="SALT student training steps."),
    ) -> None:
        """Whole pipeline on synthetic ultrasound: synth, data layer, SALT train, export, embed, probe.

        \b
        Example:
          usfast demo --out demo_run
        """
        from usjepa_fast.cli.outputs import claim_output_dir

        with claim_output_dir(out, "usfast demo"):
            from usjepa_fast.demo import run_demo

            run_demo(
                out,
                n_images=n_images,
                n_clips=n_clips,
                image_size=size,
                seed=seed,
                stages=stage or None,
                echo=typer.echo,
                teacher_steps=teacher_steps,
                student_steps=student_steps,
            )
