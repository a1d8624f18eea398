"""``usfast synth --out DIR [--dicom]``: write the built-in synthetic B-mode dataset (UltraBench format +
clips, and with ``--dicom`` ultrasound DICOM cine loops and a dual-view image)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("synth")
    def synth(
        out: Path = typer.Option(Path("synth_data"), "--out", "-o", help="Output folder (ultrabench/ and clips/)."),
        n_images: int = typer.Option(240, "--n-images", help="Images in the UltraBench-format dataset."),
        n_clips: int = typer.Option(8, "--n-clips", help="Drifting-probe clips (mp4; plus VP9 webm and MJPEG avi)."),
        size: int = typer.Option(256, "--size", help="Image and clip side in pixels (even)."),
        clip_frames: int = typer.Option(32, "--clip-frames", help="Frames per clip."),
        seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same files)."),
        workers: int = typer.Option(0, "--workers", help="Processes (0 = one per CPU; files do not depend on it)."),
        dicom: bool = typer.Option(
            False,
            "--dicom",
            help="Also write dicom/: a JPEG-baseline cine loop, an uncompressed one and a dual-view image, with "
            "Ultrasound Regions and fake patient tags (needs the dicom extra).",
        ),
    ) -> None:
        """Synthesise physically plausible B-mode ultrasound (fan/linear, speckle, lesions, text, clips).

        \b
        Example:
          usfast synth --out synth_data --dicom
        """
        from usjepa_fast.cli.outputs import claim_output_dir
        from usjepa_fast.data.synth import synthesize

        with claim_output_dir(out, "usfast synth"):
            s = synthesize(
                out,
                n_images=n_images,
                n_clips=n_clips,
                image_size=size,
                seed=seed,
                clip_frames=clip_frames,
                workers=workers,
                dicom=dicom,
            )
            typer.echo(f"wrote {s.n_images} images and {s.n_clips} clips to {s.out_dir} in {s.seconds:.1f}s")
            typer.echo(f"  ultrabench: {s.ultrabench_dir}  splits {s.split_counts}")
            typer.echo(f"  classes:    {s.class_counts}")
            if s.clip_files:
                typer.echo(f"  clips:      {', '.join(p.name for p in s.clip_files)}")
            if s.dicom_files:
                typer.echo(f"  dicom:      {', '.join(p.name for p in s.dicom_files)}")
