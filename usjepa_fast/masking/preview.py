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


def load_preview_frames(
    source: Path, n: int, cache_dir: str | Path | None = None, mask_cache: str = "cache"
) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """Up to ``n`` frames of an image, a clip, or a directory of either, each with the file's scan mask
    and its source: ``(title, gray (H, W), scan mask (H, W) bool, mask source)``.

    A clip gives :func:`~usjepa_fast.data.clips.spread_frames` (``n`` means frames, also for a single
    clip); a folder gives one frame per file first, then more of its clips. The mask is
    :func:`~usjepa_fast.data.clips.find_scan_mask` of the file, the one training, embed and prepare
    use, so the preview shows what training does. Unreadable entries are listed, never dropped."""
    from usjepa_fast.data.clips import find_scan_mask, spread_frames
    from usjepa_fast.data.media import find_media, log_problems, media_kind, read_image_gray

    listing = find_media(source)
    log_problems(listing.problems)
    paths = listing.files
    if not paths:
        extra = f" ({len(listing.problems)} unreadable entries)" if listing.problems else ""
        raise DataError(f"{source} holds no images or videos{extra}; pass an image, a clip or a dataset directory")
    per_file = max(1, -(-n // len(paths)))  # frames per clip so that n frames are drawn in all
    frames: list[tuple[str, np.ndarray, np.ndarray, str]] = []
    for path in paths:
        if len(frames) >= n:
            break
        try:
            mask, mask_source = find_scan_mask(path, cache_dir=cache_dir, mask_cache=mask_cache)
            if media_kind(path) == "video":
                picked = [(f"{path.name}#{f.index}", f.image) for f in spread_frames(path, per_file, cache_dir)]
            else:
                picked = [(path.name, read_image_gray(path))]
        except DataError as exc:
            if source.is_file():
                raise
            log.warning("skipping %s: %s", path, exc)
            continue
        for name, gray in picked[: n - len(frames)]:
            frames.append((name, gray, mask, mask_source))
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
    cache_dir: str | Path | None = None,
    mask_cache: str = "cache",
) -> Path:
    """Draw ``n`` frames of ``source`` with their scan region, valid patches and one mask draw each.

    Context patches are tinted blue, each target block gets its own colour, patches outside the
    scan region (invalid for USrc) are hatched, and the scan region (:func:`load_preview_frames`:
    the file's one mask, its source in the panel title) is outlined in green.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from usjepa_fast.data.preprocess import PreprocessConfig, Preprocessor

    cfg = cfg or MaskConfig(usrc=True)
    grid = (image_size // patch_size, image_size // patch_size)
    pre = Preprocessor(PreprocessConfig(image_size=image_size, patch_size=patch_size))
    frames = load_preview_frames(Path(source), n, cache_dir, mask_cache)
    items = []
    for name, gray, region, mask_source in frames:
        if region.shape != gray.shape:  # a frame of another size than its clip's first: whole frame
            region, mask_source = np.ones(gray.shape, bool), "whole-frame"
        items.append((f"{name[:28]}  [{mask_source}]", pre(gray, region)))
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
        ax.set_title(f"{name}\nctx {int(masks.context.lens[k, 0])}  tgt {block_sizes}", fontsize=8)
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
