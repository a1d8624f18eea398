"""Ultrasound corruptions for robustness evaluation, on batched tensors (any device), scan-mask aware.

Input: ``images (B, C, H, W)`` float in [0, 1] (un-normalised; gray replicated over C), optional
``mask (B, H, W)`` bool scan region (``None`` = whole image). Output: same shape/dtype/device, in
[0, 1], and **bit-identical to the input outside the scan mask** (borders, text, UI stay as they are).
Severities 1-3 as in the paper. Random corruptions draw their noise on CPU from ``seed`` and move it to
the images' device, so a seed gives the same corrupted pixels on CPU and GPU, and -- because every
severity reuses the same draw and only scales it -- strength grows monotonically with severity.

Paper corruptions: ``gaussian_blur`` (sigma = severity px), ``contrast`` (depletion about the
in-region median, alpha 0.7 / 0.5 / 0.3), ``speckle`` (multiplicative, spatially correlated).
Ultrasound artefacts users ask for: ``depth_attenuation`` (exponential loss of echo with depth),
``acoustic_shadow`` (a dark band behind a strong reflector), ``haze`` (near-field clutter veil),
``gaussian_noise`` (additive electronic noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from usjepa_fast.errors import UsfastError

SEVERITIES: tuple[int, ...] = (1, 2, 3)
PAPER_CORRUPTIONS: tuple[str, ...] = ("gaussian_blur", "contrast", "speckle")

# Per-severity strengths (index 0 = severity 1).
BLUR_SIGMA = (1.0, 2.0, 3.0)  # paper: sigma = severity (pixels at the model input size)
CONTRAST_ALPHA = (0.7, 0.5, 0.3)  # paper: contrast kept about the median
SPECKLE_STD = (0.15, 0.30, 0.45)  # std of the multiplicative field
SPECKLE_CORR_SIGMA = 1.0  # px; correlation length of speckle grains
ATTEN_BETA = (0.7, 1.4, 2.1)  # intensity at the deepest row = exp(-beta)
SHADOW_WIDTH = (0.10, 0.16, 0.22)  # fraction of the scan region's width
SHADOW_DEPTH = (0.45, 0.65, 0.85)  # fraction of echo removed in the shadow core
HAZE_ALPHA = (0.25, 0.45, 0.65)  # blend weight of the veil at the transducer
HAZE_LEVEL = 0.55  # gray level of the clutter veil
NOISE_STD = (0.04, 0.08, 0.12)  # additive gaussian noise std (intensity units)


def _gaussian_kernel1d(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_filter(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable gaussian blur of (B, C, H, W), replicate padding (no dark frame at the border)."""
    k = _gaussian_kernel1d(sigma, x.device, x.dtype)
    r = k.numel() // 2
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


Seed = int | Sequence[int]


def _draw(kind: str, shape: Sequence[int], seed: Seed, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """CPU-generated noise moved to ``device``; a sequence of seeds gives image i its own stream, so an
    image's corruption does not depend on which batch it was in."""
    fn = torch.randn if kind == "normal" else torch.rand
    if isinstance(seed, int):
        out = fn(*shape, generator=torch.Generator().manual_seed(int(seed)))
    else:
        if len(seed) != shape[0]:
            raise UsfastError(f"{len(seed)} corruption seeds for a batch of {shape[0]} images; pass one per image")
        out = torch.cat([fn(1, *shape[1:], generator=torch.Generator().manual_seed(int(sd))) for sd in seed])
    return out.to(device=device, dtype=dtype)


def _noise(shape: Sequence[int], seed: Seed, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _draw("normal", shape, seed, device, dtype)


def _uniform(shape: Sequence[int], seed: Seed, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return _draw("uniform", shape, seed, device, dtype)


def _region_geometry(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image normalised depth (B,1,H,1) in [0, 1] from the region's top row to its bottom row, and
    the column extent (B, 2) [first, last] of the region (whole image where the mask is empty)."""
    b, _, h, w = m.shape
    rows = m.amax(dim=3)[:, 0]  # (B, H) any pixel in row
    cols = m.amax(dim=2)[:, 0]  # (B, W)
    ar_h = torch.arange(h, device=m.device, dtype=m.dtype)
    ar_w = torch.arange(w, device=m.device, dtype=m.dtype)
    big = float(max(h, w) + 1)
    top = torch.where(rows > 0, ar_h, big).amin(dim=1)
    bottom = torch.where(rows > 0, ar_h, -1.0).amax(dim=1)
    left = torch.where(cols > 0, ar_w, big).amin(dim=1)
    right = torch.where(cols > 0, ar_w, -1.0).amax(dim=1)
    empty = bottom < 0
    top, bottom = torch.where(empty, 0.0, top), torch.where(empty, float(h - 1), bottom)
    left, right = torch.where(empty, 0.0, left), torch.where(empty, float(w - 1), right)
    depth = ((ar_h[None, :] - top[:, None]) / (bottom - top).clamp_min(1.0)[:, None]).clamp(0.0, 1.0)
    return depth[:, None, :, None], torch.stack([left, right], dim=1)


# Each function: (x (B,C,H,W) in [0,1], m (B,1,H,W) float {0,1}, severity index 0-2, seed) -> (B,C,H,W).


def _blur(x: torch.Tensor, m: torch.Tensor, s: int, seed: Seed) -> torch.Tensor:
    sigma = BLUR_SIGMA[s]
    # Normalised convolution: average only in-region pixels so the black frame does not bleed inward.
    num = gaussian_filter(x * m, sigma)
    den = gaussian_filter(m, sigma).clamp_min(1e-6)
    return num / den


def _contrast(x: torch.Tensor, m: torch.Tensor, s: int, seed: Seed) -> torch.Tensor:
    b = x.shape[0]
    inside = torch.where(m.expand_as(x) > 0, x, torch.full_like(x, float("nan"))).reshape(b, -1)
    med = torch.nanmedian(inside, dim=1).values
    med = torch.where(torch.isnan(med), x.reshape(b, -1).median(dim=1).values, med).view(b, 1, 1, 1)
    return med + CONTRAST_ALPHA[s] * (x - med)


def _speckle(x: torch.Tensor, m: torch.Tensor, s: int, seed: Seed) -> torch.Tensor:
    b, _, h, w = x.shape
    n = gaussian_filter(_noise((b, 1, h, w), seed, x.device, x.dtype), SPECKLE_CORR_SIGMA)
    # Smoothing unit white noise with k2d = k (x) k leaves std sqrt(sum k2d^2) = sum k^2; divide it out
    # so SPECKLE_STD is the field's true std (away from the replicate-padded border).
    k = _gaussian_kernel1d(SPECKLE_CORR_SIGMA, x.device, x.dtype)
    n = n / k.pow(2).sum()
    return x * (1.0 + SPECKLE_STD[s] * n)


def _attenuation(x: torch.Tensor, m: torch.Tensor, s: int, seed: Seed) -> torch.Tensor:
    depth, _ = _region_geometry(m)
    return x * torch.exp(-ATTEN_BETA[s] * depth)


def _shadow(x: torch.Tensor, m: torch.Tensor, s: int, seed: Seed) -> torch.Tensor:
    b, _, h, w = x.shape
    depth, extent = _region_geometry(m)
    u = _uniform((b, 2), seed, x.device, x.dtype)  # shadow position and onset depth per image
    left, right = extent[:, 0], extent[:, 1]
    width_px = (right - left + 1).clamp_min(1.0)
    center = left + width_px * (0.2 + 0.6 * u[:, 0])  # keep the reflector well inside the region
    onset = 0.15 + 0.35 * u[:, 1]  # shadow starts at 15-50 % depth (behind the reflector)
    half = 0.5 * SHADOW_WIDTH[s] * width_px
    cols = torch.arange(w, device=x.device, dtype=x.dtype)
    # Soft-edged band: flat core, cosine roll-off over another half-width on each side.
    dist = ((cols[None, :] - center[:, None]).abs() / half[:, None] - 1.0).clamp(0.0, 1.0)
    band = 0.5 * (1.0 + torch.cos(math.pi * dist))  # (B, W): 1 in the core, 0 outside
    ramp = ((depth[:, 0, :, 0] - onset[:, None]) / 0.08).clamp(0.0, 1.0)  # (B, H): quick onset
    shade = band[:, None, :] * ramp[:, :, None]  # (B, H, W)
    return x * (1.0 - SHADOW_DEPTH[s] * shade[:, None])


def _haze(x: torch.Tensor, m: torch.Tensor, s: int, seed: Seed) -> torch.Tensor:
    b, _, h, w = x.shape
    depth, _ = _region_geometry(m)
    # Veil strongest near the transducer, with slow spatial variation (clutter is not uniform).
    low = gaussian_filter(_noise((b, 1, h, w), seed, x.device, x.dtype), max(h, w) / 16.0)
    low = low / low.flatten(1).std(dim=1).clamp_min(1e-6).view(b, 1, 1, 1)
    profile = (torch.exp(-depth / 0.4) * (1.0 + 0.25 * low)).clamp(0.0, 1.0)  # (B, 1, H, W)
    a = HAZE_ALPHA[s] * profile
    return x * (1.0 - a) + a * HAZE_LEVEL


def _gauss_noise(x: torch.Tensor, m: torch.Tensor, s: int, seed: Seed) -> torch.Tensor:
    b, _, h, w = x.shape
    return x + NOISE_STD[s] * _noise((b, 1, h, w), seed, x.device, x.dtype)


CORRUPTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, int, Seed], torch.Tensor]] = {
    "gaussian_blur": _blur,
    "contrast": _contrast,
    "speckle": _speckle,
    "depth_attenuation": _attenuation,
    "acoustic_shadow": _shadow,
    "haze": _haze,
    "gaussian_noise": _gauss_noise,
}


def corrupt(
    images: torch.Tensor,
    name: str,
    severity: int,
    mask: torch.Tensor | None = None,
    seed: Seed = 0,
) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1-3) inside ``mask``; (B, C, H, W) -> (B, C, H, W).

    ``seed``: one int for the batch, or one per image (batch-composition independent noise)."""
    if name not in CORRUPTIONS:
        raise UsfastError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise UsfastError(f"corruption severity {severity} must be 1, 2 or 3")
    if images.ndim != 4:
        raise UsfastError(f"corrupt() expects images (B, C, H, W), got shape {tuple(images.shape)}")
    x = images if images.is_floating_point() else images.float()
    b, _, h, w = x.shape
    if mask is None:
        m = torch.ones(b, 1, h, w, device=x.device, dtype=x.dtype)
    else:
        if mask.ndim == 2:
            mask = mask[None].expand(b, h, w)
        if tuple(mask.shape) != (b, h, w):
            raise UsfastError(f"scan mask shape {tuple(mask.shape)} does not match images {(b, h, w)}")
        m = mask.to(device=x.device, dtype=x.dtype)[:, None]
    y = CORRUPTIONS[name](x, m, severity - 1, seed).clamp(0.0, 1.0)
    return torch.where(m > 0, y, x)  # outside the scan region: untouched


def parse_corruptions(spec: str) -> tuple[str, ...]:
    """``"all"``, ``"paper"`` (blur, contrast, speckle) or a comma-separated list of names."""
    if spec == "all":
        return tuple(CORRUPTIONS)
    if spec == "paper":
        return PAPER_CORRUPTIONS
    names = tuple(c.strip() for c in spec.split(",") if c.strip())
    unknown = [c for c in names if c not in CORRUPTIONS]
    if unknown or not names:
        raise UsfastError(f"unknown corruption(s) {unknown or [spec]}; choose from {', '.join(CORRUPTIONS)}")
    return names


def _column_title(j: int) -> str:
    return "clean" if j == 0 else f"severity {j}"


def _show(ax, img: torch.Tensor, title: str | None) -> None:
    """One grayscale panel of an example grid (no ticks; a column title on the first row)."""
    ax.imshow(img[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=9)


def save_corruption_grids(
    images: torch.Tensor,
    out_dir: str | Path,
    mask: torch.Tensor | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    max_examples: int = 4,
) -> list[Path]:
    """Example PNGs: one grid per corruption (rows: examples; columns: clean, severity 1, 2, 3) plus
    ``overview.png`` (rows: corruptions, first example). Images (B, C, H, W) in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(names or CORRUPTIONS)
    x = images[:max_examples].detach().float().cpu()
    mk = mask[:max_examples].cpu() if mask is not None else None
    n = x.shape[0]
    panels = {name: [corrupt(x, name, s, mk, seed) for s in SEVERITIES] for name in names}
    written = []
    for name in names:
        fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n), squeeze=False)
        for i in range(n):
            row = [x[i]] + [p[i] for p in panels[name]]
            for j, img in enumerate(row):
                _show(axes[i][j], img, _column_title(j) if i == 0 else None)
        fig.suptitle(name, fontsize=11)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    fig, axes = plt.subplots(len(names), 4, figsize=(8, 2 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        for j, img in enumerate([x[0]] + [p[0] for p in panels[name]]):
            _show(axes[i][j], img, _column_title(j) if i == 0 else None)
        axes[i][0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    path = out / "overview.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    written.append(path)
    return written
