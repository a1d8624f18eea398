"""Corruptions: shape/dtype/range kept, scan mask respected, strength monotone in severity."""

from __future__ import annotations

import pytest
import torch

from usjepa_fast.errors import UsfastError
from usjepa_fast.probe.corruptions import CORRUPTIONS, SEVERITIES, corrupt, gaussian_filter, save_corruption_grids


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    gray = gaussian_filter(torch.rand(3, 1, 48, 56, generator=g), 1.5)  # speckle-like texture
    gray = (gray - gray.amin()) / (gray.amax() - gray.amin()) * 0.8 + 0.1
    x = gray.expand(3, 3, 48, 56).clone()  # gray replicated to 3 channels, as model inputs are
    mask = torch.zeros(3, 48, 56, dtype=torch.bool)
    mask[0, 6:44, 8:50] = True  # rectangle
    yy, xx = torch.meshgrid(torch.arange(48), torch.arange(56), indexing="ij")
    mask[1] = ((yy - 2) ** 2 + (xx - 28) ** 2 < 44**2) & (yy > 4) & ((xx - 28).abs() < (yy - 2))  # fan
    mask[2] = True  # whole image
    return x, mask


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_shape_range_and_mask_respected(batch, name: str) -> None:
    x, mask = batch
    for sev in SEVERITIES:
        y = corrupt(x, name, sev, mask, seed=1)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        outside = ~mask[:, None].expand_as(x)
        assert torch.equal(y[outside], x[outside]), f"{name} s{sev} changed pixels outside the scan mask"
        assert not torch.equal(y[~outside], x[~outside]), f"{name} s{sev} did nothing inside the mask"
        # gray stays gray: every channel gets the same corruption
        assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_strength_grows_with_severity(batch, name: str) -> None:
    x, mask = batch
    inside = mask[:, None].expand_as(x)
    dist = [float((corrupt(x, name, s, mask, seed=2) - x)[inside].abs().mean()) for s in SEVERITIES]
    assert dist[0] > 0 and dist[0] < dist[1] < dist[2], f"{name}: {dist}"


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_deterministic_by_seed_and_mask_optional(batch, name: str) -> None:
    x, mask = batch
    assert torch.equal(corrupt(x, name, 2, mask, seed=5), corrupt(x, name, 2, mask, seed=5))
    assert corrupt(x, name, 2, None, seed=5).shape == x.shape


def test_contrast_is_about_the_in_region_median(batch) -> None:
    x, mask = batch
    y = corrupt(x, "contrast", 3, mask)  # alpha 0.3
    med = x[0, 0][mask[0]].median()
    inside = mask[0]
    torch.testing.assert_close(y[0, 0][inside], med + 0.3 * (x[0, 0][inside] - med))


def test_bad_arguments_are_user_errors(batch) -> None:
    x, mask = batch
    with pytest.raises(UsfastError, match="severity"):
        corrupt(x, "speckle", 4, mask)
    with pytest.raises(UsfastError, match="unknown corruption"):
        corrupt(x, "fog", 1, mask)
    with pytest.raises(UsfastError, match="mask"):
        corrupt(x, "speckle", 1, mask[:2])


def test_example_grids_are_written(batch, tmp_path) -> None:
    x, mask = batch
    paths = save_corruption_grids(x, tmp_path, mask, names=["speckle", "acoustic_shadow"])
    assert sorted(p.name for p in paths) == ["acoustic_shadow.png", "overview.png", "speckle.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_same_pixels_on_gpu(batch, name: str) -> None:
    x, mask = batch
    cpu = corrupt(x, name, 2, mask, seed=3)
    gpu = corrupt(x.cuda(), name, 2, mask.cuda(), seed=3)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)


def test_per_image_seeds_make_noise_batch_independent(batch) -> None:
    x, mask = batch
    whole = corrupt(x, "speckle", 2, mask, seed=[10, 11, 12])
    part = corrupt(x[1:], "speckle", 2, mask[1:], seed=[11, 12])
    torch.testing.assert_close(whole[1:], part, rtol=0, atol=0)
    with pytest.raises(UsfastError, match="seeds"):
        corrupt(x, "speckle", 2, mask, seed=[1, 2])
