"""Batched training preprocessing (``preprocess_train_batch``) against the per-item ``Preprocessor``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from usjepa_fast.data.preprocess import (
    PreprocessConfig,
    Preprocessor,
    pad_frames,
    preprocess_train_batch,
    train_crop_params,
)

SHAPES = [(40, 50), (24, 20), (64, 64), (33, 90), (32, 32), (17, 130)]


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, sh, dtype=np.uint8) for sh in SHAPES]
    masks = [rng.random(sh) > 0.3 for sh in SHAPES]
    masks[2][:] = False  # an empty region: percentiles of the whole frame, every patch valid
    masks[3][:, :60] = False  # a region on one side only: crops that miss it
    return frames, masks


def _check(ref: list[dict], out: dict, tol: float = 2e-6) -> None:
    for i, r in enumerate(ref):
        assert torch.allclose(r["image"], out["image"][i], atol=tol, rtol=0), i
        assert torch.equal(r["scan_mask"], out["scan_mask"][i]), i
        assert torch.equal(r["valid_patches"], out["valid_patches"][i]), i


@pytest.mark.parametrize("size,patch", [(32, 8), (48, 16)])
def test_same_generator_same_crops_and_pixels(size: int, patch: int) -> None:
    frames, masks = _batch()
    cfg = PreprocessConfig(image_size=size, patch_size=patch, train=True, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))
    pp = Preprocessor(cfg)
    g = torch.Generator().manual_seed(3)
    ref = [pp(f, m, generator=g) for f, m in zip(frames, masks, strict=True)]
    batch, bmask, sizes = pad_frames(frames, masks)
    out = preprocess_train_batch(batch, bmask, sizes, cfg, generator=torch.Generator().manual_seed(3))
    assert out["image"].shape == (len(SHAPES), 3, size, size) and out["image"].dtype == torch.float32
    assert out["valid_patches"].shape == (len(SHAPES), size // patch, size // patch)
    _check(ref, out)


def test_fixed_boxes_and_flips_match_each_item(monkeypatch) -> None:
    """Given boxes (edges, a one-pixel-wide crop, up- and downsampling), the per-item Preprocessor with
    those boxes and the batch give the same pixels, masks and patch grids, flipped or not."""
    import usjepa_fast.data.preprocess as pre

    frames, masks = _batch(seed=1)
    boxes = torch.tensor(
        [[0, 0, 40, 50], [3, 2, 21, 1], [10, 20, 54, 44], [0, 50, 33, 40], [5, 5, 8, 8], [1, 0, 16, 130]]
    )
    queue = [tuple(b) for b in boxes.tolist()]
    monkeypatch.setattr(pre, "_random_crop_box", lambda *args: queue.pop(0))
    cfg = PreprocessConfig(image_size=32, patch_size=8, train=True)
    g = torch.Generator().manual_seed(9)
    draws = torch.Generator().manual_seed(9)  # the Preprocessor's only draws now: one flip per item
    flips = torch.tensor([float(torch.rand(1, generator=draws)) < 0.5 for _ in SHAPES])
    assert flips.any() and not flips.all()
    ref = [Preprocessor(cfg)(f, m, generator=g) for f, m in zip(frames, masks, strict=True)]
    batch, bmask, sizes = pad_frames(frames, masks)
    _check(ref, preprocess_train_batch(batch, bmask, sizes, cfg, boxes=boxes, flips=flips))
    # Every item flipped, and none: the same equality.
    for forced in (torch.ones(len(SHAPES), dtype=torch.bool), torch.zeros(len(SHAPES), dtype=torch.bool)):
        queue[:] = [tuple(b) for b in boxes.tolist()]
        one = PreprocessConfig(image_size=32, patch_size=8, train=True, hflip=bool(forced[0]))
        ref = []
        for f, m in zip(frames, masks, strict=True):
            gen = _generator_drawing(flip=bool(forced[0]))
            ref.append(Preprocessor(one)(f, m, generator=gen))
        _check(ref, preprocess_train_batch(batch, bmask, sizes, cfg, boxes=boxes, flips=forced))


def _generator_drawing(flip: bool) -> torch.Generator:
    """A generator whose next ``torch.rand(1)`` is below 0.5 iff ``flip``."""
    for seed in range(100):
        g = torch.Generator().manual_seed(seed)
        if (float(torch.rand(1, generator=g)) < 0.5) == flip:
            return torch.Generator().manual_seed(seed)
    raise AssertionError("no seed found")


def test_crop_params_draw_like_the_preprocessor() -> None:
    cfg = PreprocessConfig(image_size=32, patch_size=8, train=True, crop_scale=(0.2, 0.9))
    sizes = torch.tensor(SHAPES)
    boxes, flips = train_crop_params(sizes, cfg, torch.Generator().manual_seed(11))
    assert boxes.shape == (len(SHAPES), 4) and flips.shape == (len(SHAPES),)
    h, w = sizes[:, 0], sizes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= h).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= w).all()
    again, _ = train_crop_params(sizes, cfg, torch.Generator().manual_seed(11))
    assert torch.equal(boxes, again)
    no_flip = PreprocessConfig(image_size=32, patch_size=8, train=True, hflip=False)
    assert not train_crop_params(sizes, no_flip, torch.Generator().manual_seed(0))[1].any()


def test_eval_geometry_equals_eval_preprocessor_and_batch() -> None:
    frames, masks = _batch(seed=2)
    cfg = PreprocessConfig(image_size=32, patch_size=8, train=False)
    batch, bmask, sizes = pad_frames(frames, masks)
    out = preprocess_train_batch(batch, bmask, sizes, cfg)
    _check([Preprocessor(cfg)(f, m) for f, m in zip(frames, masks, strict=True)], out)


def test_whole_frame_without_masks_and_input_errors() -> None:
    frames, _ = _batch(seed=4)
    cfg = PreprocessConfig(image_size=32, patch_size=8, train=True)
    batch, bmask, sizes = pad_frames(frames)
    assert torch.equal(bmask[0, :40, :50], torch.ones(40, 50, dtype=torch.bool)) and not bmask[0, 40:].any()
    g = torch.Generator().manual_seed(5)
    ref = [Preprocessor(cfg)(f, None, generator=g) for f in frames]
    _check(ref, preprocess_train_batch(batch, None, sizes, cfg, generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match="uint8"):
        preprocess_train_batch(batch.float(), None, sizes, cfg)
    with pytest.raises(ValueError, match="mask 0"):
        pad_frames(frames, [np.ones((3, 3), bool)] * len(frames))


@pytest.mark.gpu
def test_on_cuda_matches_cpu() -> None:
    frames, masks = _batch(seed=6)
    cfg = PreprocessConfig(image_size=48, patch_size=16, train=True)
    batch, bmask, sizes = pad_frames(frames, masks)
    boxes, flips = train_crop_params(sizes, cfg, torch.Generator().manual_seed(1))
    cpu = preprocess_train_batch(batch, bmask, sizes, cfg, boxes=boxes, flips=flips)
    gpu = preprocess_train_batch(batch.cuda(), bmask.cuda(), sizes, cfg, boxes=boxes, flips=flips)
    assert torch.allclose(cpu["image"], gpu["image"].cpu(), atol=5e-3)  # TF32 matmuls allowed
    assert torch.equal(cpu["scan_mask"], gpu["scan_mask"].cpu())
    assert torch.equal(cpu["valid_patches"], gpu["valid_patches"].cpu())
