"""``usfast masks IMAGE_OR_DATASET --out preview.png``: see what (USrc) masking does to your frames."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("masks")
    def masks(
        source: Path = typer.Argument(..., help="An image, a clip, or a directory of them."),
        out: Path = typer.Option(Path("mask_preview.png"), "--out", "-o", help="PNG to write."),
        n: int = typer.Option(6, "--n", help="How many frames to draw."),
        usrc: bool = typer.Option(True, "--usrc/--no-usrc", help="Restrict blocks to the scan region (USrc)."),
        tau: float = typer.Option(0.8, "--tau", help="USrc: min valid fraction of a target block."),
        image_size: int = typer.Option(224, "--image-size", help="Model input side."),
        patch_size: int = typer.Option(16, "--patch-size", help="ViT patch side."),
        config: Path = typer.Option(None, "--config", help="Take mask/image settings from a train config."),
        seed: int = typer.Option(0, "--seed", help="Seed of the mask draw."),
        mask_cache: str = typer.Option(
            "cache", "--mask-cache", help="Detected scan masks: cache (the cache dir) or beside (next to the data)."
        ),
        cache_dir: Path = typer.Option(None, "--cache-dir", help="usfast's data cache (default $USFAST_CACHE_DIR)."),
    ) -> None:
        """Draw sampled context and target blocks and the scan region (the one training uses, its source
        in each title) over frames; --n counts frames, spread over a single clip too.

        \b
        Example:
          usfast masks synth_data/clips --out preview.png --n 4
        """
        from usjepa_fast.cli.outputs import claim_output_file

        claim_output_file(out)
        from usjepa_fast.masking.multiblock import MaskConfig
        from usjepa_fast.masking.preview import render_mask_preview

        if config is not None:
            from usjepa_fast.train.config import load_train_config

            train_cfg = load_train_config(config, [f"mask.usrc={str(usrc).lower()}"])
            mask_cfg, image_size, patch_size = train_cfg.mask, train_cfg.data.image_size, train_cfg.model.patch_size
        else:
            mask_cfg = MaskConfig(usrc=usrc, tau=tau)
        path = render_mask_preview(
            source,
            out,
            mask_cfg,
            image_size=image_size,
            patch_size=patch_size,
            n=n,
            seed=seed,
            cache_dir=cache_dir,
            mask_cache=mask_cache,
        )
        typer.echo(f"wrote {path}")
