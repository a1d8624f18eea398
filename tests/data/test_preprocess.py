"""Percentile rescaling inside the scan region, per-item and batched preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from usjepa_fast.data.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessConfig,
    Preprocessor,
    batch_percentiles,
    percentile_rescale,
    preprocess_batch,
)
from usjepa_fast.data.scan_region import patch_validity


def _image_with_border(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gray = np.zeros((60, 80), np.uint8)
    mask = np.zeros_like(gray, bool)
    mask[10:50, 15:65] = True
    gray[mask] = rng.integers(60, 160, mask.sum())
    gray[2:6, 2:40] = 255  # burned-in text outside the region
    return gray, mask


def test_percentiles_are_taken_inside_the_mask() -> None:
    gray, mask = _image_with_border()
    out = percentile_rescale(gray, mask, 2, 98)
    lo, hi = np.percentile(gray[mask], [2, 98], method="inverted_cdf")
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    expected = np.clip((gray.astype(np.float32) - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    inside = out[mask]
    assert (inside <= 0).mean() == pytest.approx(0.02, abs=0.01)  # ~2% clipped low
    assert (inside >= 1).mean() == pytest.approx(0.02, abs=0.01)  # ~2% clipped high
    # without the mask the black border and the text stretch the window: a different result
    assert not np.allclose(percentile_rescale(gray, None), out)


def test_percentile_rescale_16bit_flat_and_empty_mask() -> None:
    g16 = (np.arange(100, dtype=np.uint16).reshape(10, 10) * 600).astype(np.uint16)
    out = percentile_rescale(g16, None, 0, 100)
    assert out.min() == 0 and out.max() == 1
    assert (percentile_rescale(np.full((5, 5), 7, np.uint8), None) == 0).all()
    gray, _ = _image_with_border()
    np.testing.assert_array_equal(percentile_rescale(gray, np.zeros_like(gray, bool)), percentile_rescale(gray))


def test_batch_percentiles_match_numpy() -> None:
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 40, 50), dtype=np.uint8)
    masks = rng.random((3, 40, 50)) < 0.5
    masks[2] = False  # empty mask -> whole frame
    lo, hi = batch_percentiles(torch.from_numpy(frames), torch.from_numpy(masks), 2, 98)
    for b in range(3):
        vals = frames[b][masks[b]] if masks[b].any() else frames[b].ravel()
        ref = np.percentile(vals, [2, 98], method="inverted_cdf")
        assert (lo[b].item(), hi[b].item()) == (ref[0], ref[1])


def test_preprocessor_eval_output_and_normalisation() -> None:
    gray, mask = _image_with_border()
    out = Preprocessor(PreprocessConfig(image_size=64))(gray, mask)
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.float32
    assert out["scan_mask"].shape == (64, 64) and out["scan_mask"].dtype == torch.bool
    assert out["valid_patches"].shape == (4, 4) and out["valid_patches"].dtype == torch.bool
    # channels are the same gray, normalised per channel
    x = out["image"] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert torch.allclose(x[0], x[1], atol=1e-5) and torch.allclose(x[0], x[2], atol=1e-5)
    assert x.min() >= -1e-5 and x.max() <= 1 + 1e-5
    torch.testing.assert_close(out["valid_patches"], patch_validity(mask, 64, 16))
    no_mask = Preprocessor(PreprocessConfig(image_size=64))(gray)
    assert no_mask["valid_patches"].all() and no_mask["scan_mask"].all()


def test_valid_patches_follow_the_region() -> None:
    gray = np.zeros((128, 128), np.uint8)
    mask = np.zeros_like(gray, bool)
    mask[:, :40] = True  # left 40 px -> patch columns 0..2 of 8 at S=128 (40/16 = 2.5)
    gray[mask] = 100
    out = Preprocessor(PreprocessConfig(image_size=128))(gray, mask)
    cols = out["valid_patches"].any(dim=0)
    assert cols.tolist() == [True, True, True, False, False, False, False, False]


def test_batch_path_matches_per_item_eval() -> None:
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (2, 96, 120), dtype=np.uint8)
    masks = np.zeros((2, 96, 120), bool)
    masks[:, 10:90, 20:100] = True
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    batch = preprocess_batch(torch.from_numpy(frames), torch.from_numpy(masks), 64, mean, std)
    pre = Preprocessor(PreprocessConfig(image_size=64, mean=mean, std=std))
    for b in range(2):
        torch.testing.assert_close(batch[b], pre(frames[b], masks[b])["image"], atol=1e-5, rtol=0)
    assert batch.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError):
        preprocess_batch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), None, 8)


def test_training_augmentation_is_seeded_and_applied_to_the_mask_too() -> None:
    gray = np.zeros((100, 100), np.uint8)
    mask = np.zeros_like(gray, bool)
    mask[:, :50] = True
    gray[:, :50] = np.random.default_rng(0).integers(50, 200, (100, 50))
    pre = Preprocessor(PreprocessConfig(image_size=32, patch_size=16, train=True, crop_scale=(0.5, 1.0)))
    a = pre(gray, mask, torch.Generator().manual_seed(3))
    b = pre(gray, mask, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a["image"], b["image"])
    flips = 0
    for seed in range(20):
        out = pre(gray, mask, torch.Generator().manual_seed(seed))
        bright = out["image"][0] > out["image"][0].min() + 1e-3  # where the textured half landed
        # mask and image stay aligned through crop and flip (a misaligned flip would give ~50%;
        # the antialiased resize blurs one or two columns across the boundary)
        assert (bright & ~out["scan_mask"]).float().mean() < 0.1
        flips += int(out["scan_mask"][:, -1].any() and not out["scan_mask"][:, 0].any())
    assert 0 < flips < 20  # both orientations occur


@pytest.mark.gpu
def test_batch_path_on_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(4)
    frames = torch.from_numpy(rng.integers(0, 256, (4, 120, 160), dtype=np.uint8))
    masks = torch.zeros(4, 120, 160, dtype=torch.bool)
    masks[:, 20:100, 30:130] = True
    cpu = preprocess_batch(frames, masks, 224)
    gpu = preprocess_batch(frames.cuda(), masks.cuda(), 224)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)
