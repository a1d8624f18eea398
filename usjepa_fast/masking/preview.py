"""Mask previews: draw sampled context / target blocks and the scan region over real frames.

``usfast masks IMAGE_OR_DATASET --out preview.png`` calls :func:`render_mask_preview`, so a user
sees what (USrc) multi-block masking does to their data before spending GPU hours on it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from usjepa_fast.errors import DataError
from usjepa_fast.masking.multiblock import MaskConfig, MultiBlockMaskCollator
from usjepa_fast.masking.ragged import masks_to_grid

log = logging.getLogger("usfast")

_TARGET_COLOURS = ((0.95, 0.25, 0.2), (1.0, 0.75, 0.1), (0.7, 0.3, 0.9), (0.2, 0.85, 0.85), (0.9, 0.5, 0.6))


def _load_frames(source: Path, n: int) -> list[tuple[str, np.ndarray]]:
    """Up to ``n`` gray frames from an image, a video, or a directory of either."""
    from usjepa_fast.data.media import list_media, media_kind, read_image_gray

    paths = list_media(source) if source.is_dir() else [source]
    if not paths:
        raise DataError(f"{source} holds no images or videos; pass an image, a clip or a dataset directory")
    frames: list[tuple[str, np.ndarray]] = []
    for path in paths:
        if len(frames) >= n:
            break
        kind = media_kind(path)
        try:
            if kind == "image":
                frames.append((path.name, read_image_gray(path)))
            elif kind == "video":
                from usjepa_fast.data.video import FrameSampling, get_decoder

                for frame in get_decoder("pyav").frames(path, FrameSampling(max_frames=1)):
                    frames.append((f"{path.name}#{frame.index}", frame.image))
            else:
                raise DataError(f"{path} is neither an image nor a video usfast reads")
        except DataError as exc:
            if not source.is_dir():
                raise
            log.warning("skipping %s: %s", path, exc)
    if not frames:
        raise DataError(f"no readable frame in {source}")
    return frames


def render_mask_preview(
    source: str | Path,
    out: str | Path,
    cfg: MaskConfig | None = None,
    image_size: int = 224,
    patch_size: int = 16,
    n: int = 6,
    seed: int = 0,
) -> Path:
    """Draw ``n`` frames of ``source`` with their scan region, valid patches and one mask draw each.

    Context patches are tinted blue, each target block gets its own colour, patches outside the
    scan region (invalid for USrc) are hatched, and the detected region is outlined in green.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from usjepa_fast.data.preprocess import PreprocessConfig, Preprocessor
    from usjepa_fast.data.scan_region import detect_scan_region

    cfg = cfg or MaskConfig(usrc=True)
    grid = (image_size // patch_size, image_size // patch_size)
    pre = Preprocessor(PreprocessConfig(image_size=image_size, patch_size=patch_size))
    frames = _load_frames(Path(source), n)
    items = []
    for name, gray in frames:
        region = detect_scan_region(gray)
        item = pre(gray, region if region.any() else None)
        items.append((name, item))
    valid = np.stack([it["valid_patches"].numpy() for _, it in items])
    collator = MultiBlockMaskCollator(cfg, grid)
    import torch

    masks = collator.sample(len(items), torch.from_numpy(valid), np.random.default_rng(seed))
    ctx = masks_to_grid(masks.context, grid)[:, 0].numpy()  # (B, gh, gw)
    tgt = masks_to_grid(masks.target, grid).numpy()  # (B, nT, gh, gw)
    tgt_blocks = [tgt[:, j] for j in range(masks.num_target_blocks)]

    cols = min(3, len(items))
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.3 * rows), squeeze=False)
    mean = np.asarray(pre.cfg.mean)[0]
    std = np.asarray(pre.cfg.std)[0]
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(items):
            continue
        name, item = items[k]
        img = item["image"][0].numpy() * std + mean  # back to [0, 1] gray
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, extent=(0, image_size, image_size, 0))
        for r in range(grid[0]):
            for c in range(grid[1]):
                xy = (c * patch_size, r * patch_size)
                if cfg.usrc and not valid[k, r, c]:
                    ax.add_patch(
                        Rectangle(
                            xy, patch_size, patch_size, fill=False, hatch="///", edgecolor=(1, 1, 1, 0.25), linewidth=0
                        )
                    )
                if ctx[k, r, c]:
                    ax.add_patch(Rectangle(xy, patch_size, patch_size, color=(0.2, 0.45, 1.0), alpha=0.28, lw=0))
                for j, blk in enumerate(tgt_blocks):
                    if blk[k, r, c]:
                        colour = _TARGET_COLOURS[j % len(_TARGET_COLOURS)]
                        ax.add_patch(Rectangle(xy, patch_size, patch_size, color=colour, alpha=0.55, lw=0))
        centres = np.arange(image_size) + 0.5  # pixel centres in the imshow coordinates above
        ax.contour(
            centres, centres, item["scan_mask"].numpy().astype(float), levels=[0.5], colors=["lime"], linewidths=1.0
        )
        block_sizes = "+".join(str(n) for n in masks.target.lens[k].tolist())
        ax.set_title(f"{name[:28]}\nctx {int(masks.context.lens[k, 0])}  tgt {block_sizes}", fontsize=8)
    mode = f"USrc tau={cfg.tau}" if cfg.usrc else "I-JEPA (no USrc)"
    fig.suptitle(f"{mode}\nblue = context, colours = targets\nhatched = outside scan region", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    if masks.fallbacks:
        log.warning("mask fallbacks in this draw: %s", masks.fallbacks)
    return out
