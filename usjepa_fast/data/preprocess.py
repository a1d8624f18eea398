"""US-JEPA preprocessing: gray -> percentile rescale in the scan region -> resize/crop -> 3 channels -> normalise.

Entry points share one definition so training, evaluation and the embedding fast path see
identical pixels:

* :class:`Preprocessor` works per item on numpy input (datasets/DataLoader workers) and also returns
  the resized scan mask and the patch-validity grid that USrc masking needs; it is the reference;
* :func:`preprocess_batch` is torch-only and device-agnostic: a batch of decoded ``uint8`` frames
  ``(B, H, W)`` on any device -> model input ``(B, 3, S, S)``; with frames already on the GPU nothing
  goes back to the host;
* :func:`preprocess_train_batch` is the training geometry (random resized crop + flip) on a padded
  batch of ``uint8`` frames of different sizes (:func:`pad_frames`), on the step's device, so that
  DataLoader workers only read bytes. Given the same crop boxes and flips
  (:func:`train_crop_params` draws them from a generator exactly as :class:`Preprocessor` does) it
  equals the per-item reference.

Percentiles are computed on the integer histogram (``inverted_cdf``: the smallest gray level whose
cumulative fraction reaches q), which is exact for 8/16-bit data and identical in numpy and torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from usjepa_fast.data.scan_region import PATCH_COVERAGE, coverage_validity, patch_validity

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _hist_percentiles(values: np.ndarray, qs: tuple[float, float]) -> tuple[float, float]:
    """Inverted-CDF percentiles of a 1-D integer/float array (integers via an exact histogram)."""
    if np.issubdtype(values.dtype, np.integer) and values.dtype.itemsize <= 2:
        counts = np.bincount(values.astype(np.int64, copy=False))
        cdf = np.cumsum(counts)
        n = cdf[-1]
        out = []
        for q in qs:
            # smallest level v with count(x <= v) >= q/100 * n (at least one sample)
            target = max(q / 100.0 * n, 1.0)
            out.append(float(np.searchsorted(cdf, target - 1e-9 * n, side="left")))
        return out[0], out[1]
    lo, hi = np.percentile(values.astype(np.float64), qs, method="inverted_cdf")
    return float(lo), float(hi)


def percentile_rescale(
    gray: np.ndarray, mask: np.ndarray | None = None, lo: float = 2.0, hi: float = 98.0
) -> np.ndarray:
    """Rescale so the ``lo``-th..``hi``-th percentiles *inside the scan mask* map to 0..1.

    ``gray (H, W)`` of any dtype; ``mask (H, W)`` bool or None (whole image). Returns float32 in
    [0, 1] (values outside the percentile window are clipped). Taking the percentiles inside the
    region makes gain differences between machines disappear while the black surround and bright
    burned-in text cannot stretch the window. A flat region maps to 0.
    """
    if gray.ndim != 2:
        raise ValueError(f"percentile_rescale expects a gray (H, W) image, got shape {gray.shape}")
    values = gray[mask] if mask is not None and mask.any() else gray.reshape(-1)
    p_lo, p_hi = _hist_percentiles(values, (lo, hi))
    out = gray.astype(np.float32)
    if p_hi <= p_lo:
        return np.zeros_like(out)
    out -= p_lo
    out /= p_hi - p_lo
    return np.clip(out, 0.0, 1.0, out=out)


def batch_percentiles(
    frames: torch.Tensor, masks: torch.Tensor | None, lo: float = 2.0, hi: float = 98.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame inverted-CDF percentiles of ``uint8`` frames ``(B, H, W)`` inside ``masks``.

    One ``bincount`` over ``frame_id * 256 + level`` gives every frame's histogram at once, so the
    cost is a single pass over the pixels on any device. Returns ``(lo (B,), hi (B,))`` float32.
    """
    b = frames.shape[0]
    levels = frames.reshape(b, -1).long()  # (B, HW)
    offsets = torch.arange(b, device=frames.device).unsqueeze(1) * 256
    keys = levels + offsets
    if masks is not None:
        m = masks.reshape(b, -1).bool()
        # Frames whose mask is empty fall back to the whole frame (same as percentile_rescale).
        empty = ~m.any(dim=1, keepdim=True)
        m = m | empty
        weights = m.to(torch.float32).reshape(-1)
        hist = torch.bincount(keys.reshape(-1), weights=weights, minlength=b * 256)
    else:
        hist = torch.bincount(keys.reshape(-1), minlength=b * 256).to(torch.float32)
    cdf = hist.reshape(b, 256).cumsum(dim=1)  # (B, 256)
    n = cdf[:, -1:]
    out = []
    for q in (lo, hi):
        target = torch.clamp(q / 100.0 * n, min=1.0) - 1e-9 * n
        out.append(torch.searchsorted(cdf.contiguous(), target.contiguous(), right=False).squeeze(1).to(torch.float32))
    return out[0], out[1]


def _rescale_resize_normalise(
    x: torch.Tensor,
    p_lo: torch.Tensor,
    p_hi: torch.Tensor,
    image_size: int,
    mean: torch.Tensor,
    std: torch.Tensor,
) -> torch.Tensor:
    """``x (B, 1, H, W)`` float gray levels -> ``(B, 3, S, S)`` normalised model input."""
    x = _rescale(x, p_lo, p_hi)
    if x.shape[-2:] != (image_size, image_size):
        # antialias: ultrasound frames are often 3-4x the model size; without it speckle aliases.
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp_(0.0, 1.0)
    return _normalise(x, mean, std)


def _rescale(x: torch.Tensor, p_lo: torch.Tensor, p_hi: torch.Tensor) -> torch.Tensor:
    """``x (B, 1, H, W)`` gray levels -> [0, 1] by each frame's percentile window (flat region -> 0)."""
    flat = (p_hi <= p_lo).view(-1, 1, 1, 1)  # a flat region maps to 0, as in percentile_rescale
    x = ((x - p_lo.view(-1, 1, 1, 1)) / (p_hi - p_lo).clamp(min=1e-12).view(-1, 1, 1, 1)).clamp_(0.0, 1.0)
    return x.masked_fill(flat, 0.0)


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(B, 1, S, S)`` in [0, 1] -> ``(B, 3, S, S)``: gray replicated, as the RGB-pretrained models expect."""
    x = x.expand(-1, 3, -1, -1)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def preprocess_batch(
    frames: torch.Tensor,
    masks: torch.Tensor | None,
    image_size: int,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    lo: float = 2.0,
    hi: float = 98.0,
) -> torch.Tensor:
    """Decoded ``uint8`` frames ``(B, H, W)`` (+ scan masks ``(B, H, W)`` bool or None) -> ``(B, 3, S, S)``
    float32 normalised; evaluation geometry (whole frame resized to ``S x S``), torch-only, on the
    frames' device."""
    if frames.dim() != 3:
        raise ValueError(f"preprocess_batch expects (B, H, W) frames, got shape {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"preprocess_batch expects uint8 frames, got {frames.dtype}")
    p_lo, p_hi = batch_percentiles(frames, masks, lo, hi)
    dev = frames.device
    x = frames.unsqueeze(1).to(torch.float32)  # (B, 1, H, W)
    return _rescale_resize_normalise(
        x,
        p_lo,
        p_hi,
        image_size,
        torch.tensor(mean, dtype=torch.float32, device=dev),
        torch.tensor(std, dtype=torch.float32, device=dev),
    )


def resize_mask(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Scan masks ``(H, W)`` or ``(B, H, W)`` bool -> ``(S, S)`` / ``(B, S, S)`` bool by nearest neighbour
    on the model grid: the ``scan_mask`` the evaluation :class:`Preprocessor` returns, on any device."""
    m = masks.to(torch.float32)
    squeeze = m.dim() == 2
    m = m[None, None] if squeeze else m[:, None]
    out = F.interpolate(m, size=(size, size), mode="nearest")[:, 0] > 0.5  # (B, S, S)
    return out[0] if squeeze else out


@dataclass
class PreprocessConfig:
    """How a gray frame becomes a model input."""

    image_size: int = 224  # model input side S (the model declares it)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # normalisation the model declares
    std: tuple[float, float, float] = IMAGENET_STD
    train: bool = False  # random resized crop + flip (pretraining); False = whole frame resized
    crop_scale: tuple[float, float] = (0.3, 1.0)  # area fraction range of the training crop
    hflip: bool = True  # random horizontal flip in training (probe geometry is left/right symmetric)
    patch_size: int = 16  # ViT patch side: valid_patches is (S/patch, S/patch)
    percentile_lo: float = 2.0  # intensity window: these percentiles inside the scan region -> [0, 1]
    percentile_hi: float = 98.0
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)  # aspect-ratio range of the training crop
    # share of a patch's pixels that must be scan region for valid_patches (USrc); 0.5: a border patch
    # that is mostly black surround is not anatomy (the old rule, any pixel, is 0)
    patch_coverage: float = PATCH_COVERAGE


def eval_config(info: Any) -> PreprocessConfig:
    """Evaluation preprocessing for an encoder that declares ``input_size``, ``mean``, ``std`` (and
    optionally ``patch_size``): what probes and embedding feed it. A size that is not a multiple of the
    patch gets a 1-px validity grid (evaluation needs no patch grid)."""
    size = int(info.input_size)
    patch = int(getattr(info, "patch_size", 16) or 16)
    return PreprocessConfig(
        image_size=size,
        mean=tuple(float(v) for v in info.mean),
        std=tuple(float(v) for v in info.std),
        train=False,
        patch_size=patch if size % patch == 0 else 1,
    )


def _random_crop_box(
    h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float], gen: torch.Generator | None
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, height, width), with a torch generator."""
    area = h * w
    log_r = (np.log(ratio[0]), np.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(3, generator=gen).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = float(np.exp(log_r[0] + (log_r[1] - log_r[0]) * u[1]))
        cw = int(round(np.sqrt(target * aspect)))
        ch = int(round(np.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
            return top, left, ch, cw
    # Fallback: central crop with the aspect clamped into range.
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class Preprocessor:
    """Per-item preprocessing. ``__call__(gray (H, W), scan_mask (H, W) bool | None, generator)`` ->
    ``dict(image=(3, S, S) float32, scan_mask=(S, S) bool, valid_patches=(S/p, S/p) bool)``.

    Without a scan mask the whole frame counts as the region. In training mode the crop/flip are drawn
    from ``generator`` (or torch's global RNG) and applied identically to image and mask.
    """

    def __init__(self, cfg: PreprocessConfig | None = None) -> None:
        self.cfg = cfg or PreprocessConfig()
        if self.cfg.image_size % self.cfg.patch_size:
            raise ValueError(f"image_size {self.cfg.image_size} must be a multiple of patch_size {self.cfg.patch_size}")
        self._mean = torch.tensor(self.cfg.mean, dtype=torch.float32)
        self._std = torch.tensor(self.cfg.std, dtype=torch.float32)

    def __call__(
        self, gray: np.ndarray, scan_mask: np.ndarray | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if gray.ndim == 3:  # tolerate (H, W, C) input from user code
            from usjepa_fast.data.media import to_gray

            gray = to_gray(gray)
        h, w = gray.shape
        mask = np.ones((h, w), dtype=bool) if scan_mask is None else scan_mask.astype(bool, copy=False)
        if mask.shape != gray.shape:
            raise ValueError(f"scan mask shape {mask.shape} != image shape {gray.shape}")
        values = gray[mask] if mask.any() else gray.reshape(-1)
        p_lo, p_hi = _hist_percentiles(values, (cfg.percentile_lo, cfg.percentile_hi))

        x = torch.from_numpy(gray.astype(np.float32, copy=False))  # (H, W) raw levels
        m = torch.from_numpy(np.ascontiguousarray(mask))
        if cfg.train:
            top, left, ch, cw = _random_crop_box(h, w, cfg.crop_scale, cfg.crop_ratio, generator)
            x = x[top : top + ch, left : left + cw]
            m = m[top : top + ch, left : left + cw]
            if cfg.hflip and float(torch.rand(1, generator=generator)) < 0.5:
                x = x.flip(-1)
                m = m.flip(-1)
        image = _rescale_resize_normalise(
            x[None, None],
            torch.tensor([p_lo]),
            torch.tensor([p_hi]),
            cfg.image_size,
            self._mean,
            self._std,
        )[0]  # (3, S, S)
        s = cfg.image_size
        m_small = resize_mask(m, s)  # (S, S)
        valid = patch_validity(m.numpy(), s, cfg.patch_size, cfg.patch_coverage)  # (S/p, S/p)
        if not bool(valid.any()):
            # A training crop can miss the region entirely (tiny fan, aggressive crop scale); then no
            # patch is anatomy-only and USrc would have nothing to sample, so fall back to all patches.
            valid = torch.ones_like(valid)
        return {"image": image.contiguous(), "scan_mask": m_small, "valid_patches": valid}


# --------------------------------------------------------------------------------------------------
# Training preprocessing on a batch (the step's device): CPU workers only read uint8 bytes.
# --------------------------------------------------------------------------------------------------


def pad_frames(
    frames: list[np.ndarray | torch.Tensor], masks: list[np.ndarray | torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gray ``uint8`` frames ``(h_i, w_i)`` (+ bool masks of the same shapes, or None = whole frame) ->
    ``frames (B, Hm, Wm)`` uint8, ``masks (B, Hm, Wm)`` bool, ``sizes (B, 2)`` int64 ``[h, w]``: each
    frame top-left on a zero canvas as large as the largest; the padding is outside every mask."""
    if not frames:
        raise ValueError("pad_frames needs at least one frame")
    shapes = [tuple(f.shape) for f in frames]
    if any(len(sh) != 2 for sh in shapes):
        raise ValueError(f"pad_frames expects gray (h, w) frames, got shapes {shapes[:4]}")
    hm, wm = max(sh[0] for sh in shapes), max(sh[1] for sh in shapes)
    # numpy slice copies are plain memcpy (torch's strided uint8 copy is several times slower on CPU)
    out = np.zeros((len(frames), hm, wm), dtype=np.uint8)
    out_masks = np.zeros((len(frames), hm, wm), dtype=bool)
    for i, f in enumerate(frames):
        h, w = shapes[i]
        out[i, :h, :w] = np.asarray(f)
        if masks is None:
            out_masks[i, :h, :w] = True
        else:
            if tuple(masks[i].shape) != (h, w):
                raise ValueError(f"mask {i} is {tuple(masks[i].shape)} but its frame is {(h, w)}")
            out_masks[i, :h, :w] = np.asarray(masks[i])
    return torch.from_numpy(out), torch.from_numpy(out_masks), torch.tensor(shapes, dtype=torch.int64)


def train_crop_params(
    sizes: torch.Tensor, cfg: PreprocessConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random resized crop boxes ``(B, 4)`` int64 ``[top, left, h, w]`` and flips ``(B,)`` bool for frames
    of ``sizes (B, 2)``: item by item, the same draws (box, then flip) as :class:`Preprocessor` in
    training mode makes from ``generator``, so both give the same distribution (and, from one
    generator state, the same crops)."""
    boxes, flips = [], []
    for h, w in sizes.tolist():
        boxes.append(_random_crop_box(int(h), int(w), cfg.crop_scale, cfg.crop_ratio, generator))
        flips.append(bool(cfg.hflip and float(torch.rand(1, generator=generator)) < 0.5))
    return torch.tensor(boxes, dtype=torch.int64), torch.tensor(flips, dtype=torch.bool)


def _aa_weights(start: torch.Tensor, length: torch.Tensor, out: int, canvas: int, flip: torch.Tensor) -> torch.Tensor:
    """``(B, out, canvas)`` resampling matrices: row ``i`` of item ``b`` holds PyTorch's antialiased
    bilinear weights (``F.interpolate(..., antialias=True)``: a triangle filter stretched by the scale
    when downsampling, renormalised at the edges) of output pixel ``i`` over the input span
    ``start[b] : start[b] + length[b]`` of the canvas, read backwards where ``flip[b]``."""
    dev = start.device
    length_f = length.to(torch.float32).view(-1, 1, 1)
    scale = length_f / out  # input pixels per output pixel
    support = torch.clamp(scale, min=1.0)  # the filter's half-width in input pixels
    centre = scale * (torch.arange(out, device=dev, dtype=torch.float32).view(1, -1, 1) + 0.5)  # crop coords
    k = torch.arange(canvas, device=dev).view(1, 1, -1) - start.view(-1, 1, 1)  # canvas -> crop coords
    local = torch.where(flip.view(-1, 1, 1), length.view(-1, 1, 1) - 1 - k, k).to(torch.float32)
    w = torch.clamp(1.0 - torch.abs(local + 0.5 - centre) / support, min=0.0)
    w = w * ((k >= 0) & (k < length.view(-1, 1, 1)))
    return w / w.sum(dim=-1, keepdim=True).clamp(min=1e-12)


def _nearest_index(start: torch.Tensor, length: torch.Tensor, out: int, flip: torch.Tensor) -> torch.Tensor:
    """``(B, out)`` canvas indices of ``F.interpolate(mode="nearest")`` over each (flipped) span."""
    i = torch.arange(out, device=start.device, dtype=torch.float32).view(1, -1)
    src = torch.floor(i * (length.to(torch.float32).view(-1, 1) / out)).to(torch.int64)
    src = torch.minimum(src, length.view(-1, 1) - 1)
    src = torch.where(flip.view(-1, 1), length.view(-1, 1) - 1 - src, src)
    return start.view(-1, 1) + src


def _bin_edges(
    start: torch.Tensor, length: torch.Tensor, g: int, flip: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, g)`` canvas [lo, hi) of adaptive-pool bins (``floor(i n / g)`` .. ``ceil((i+1) n / g)``)
    over each span; flipped spans are binned on the flipped axis."""
    i = torch.arange(g, device=start.device).view(1, -1)
    n = length.view(-1, 1)
    lo, hi = (i * n) // g, -((-(i + 1) * n) // g)
    lo, hi = torch.where(flip.view(-1, 1), n - hi, lo), torch.where(flip.view(-1, 1), n - lo, hi)
    return start.view(-1, 1) + lo, start.view(-1, 1) + hi


def preprocess_train_batch(
    frames: torch.Tensor,
    masks: torch.Tensor | None,
    sizes: torch.Tensor,
    cfg: PreprocessConfig,
    *,
    boxes: torch.Tensor | None = None,
    flips: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Training preprocessing of a padded batch (:func:`pad_frames`) on the frames' device.

    ``frames (B, Hm, Wm)`` uint8, ``masks (B, Hm, Wm)`` bool or None (whole frame), ``sizes (B, 2)``
    ``[h, w]`` of each frame; ``boxes``/``flips`` from :func:`train_crop_params` (drawn from
    ``generator`` when None; with ``cfg.train`` False the whole frame, unflipped). Returns
    ``dict(image (B, 3, S, S) float32, scan_mask (B, S, S) bool, valid_patches (B, S/p, S/p) bool)``:
    what :class:`Preprocessor` returns item by item for the same boxes and flips (percentiles inside
    the region of the whole frame, then crop, flip, antialiased resize, normalise).
    """
    if frames.dim() != 3 or frames.dtype != torch.uint8:
        raise ValueError(
            f"preprocess_train_batch expects (B, H, W) uint8 frames, got {tuple(frames.shape)} {frames.dtype}"
        )
    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"image_size {cfg.image_size} must be a multiple of patch_size {cfg.patch_size}")
    b, hm, wm = frames.shape
    dev = frames.device
    sizes = sizes.to(dev)
    h, w = sizes[:, 0], sizes[:, 1]
    inside = (torch.arange(hm, device=dev).view(1, -1, 1) < h.view(-1, 1, 1)) & (
        torch.arange(wm, device=dev).view(1, 1, -1) < w.view(-1, 1, 1)
    )  # (B, Hm, Wm): the frame, not its padding
    region = inside if masks is None else masks.to(dev).bool() & inside
    # Percentiles of an empty region: the whole frame (percentile_rescale's rule); the mask stays empty.
    window = torch.where(region.flatten(1).any(dim=1).view(-1, 1, 1), region, inside)
    if boxes is None or flips is None:
        if cfg.train:
            boxes, flips = train_crop_params(sizes.cpu(), cfg, generator)
        else:
            boxes = torch.stack([torch.zeros_like(h), torch.zeros_like(w), h, w], dim=1)
            flips = torch.zeros(b, dtype=torch.bool)
    boxes, flips = boxes.to(dev), flips.to(dev)
    top, left, ch, cw = boxes.unbind(dim=1)
    s = cfg.image_size

    p_lo, p_hi = batch_percentiles(frames, window, cfg.percentile_lo, cfg.percentile_hi)
    x = _rescale(frames.unsqueeze(1).to(torch.float32), p_lo, p_hi)[:, 0]  # (B, Hm, Wm) in [0, 1]
    rows = _aa_weights(top, ch, s, hm, torch.zeros_like(flips))  # (B, S, Hm)
    cols = _aa_weights(left, cw, s, wm, flips)  # (B, S, Wm)
    x = torch.bmm(torch.bmm(rows, x), cols.transpose(1, 2)).clamp_(0.0, 1.0)  # (B, S, S)
    mean = torch.tensor(cfg.mean, dtype=torch.float32, device=dev)
    std = torch.tensor(cfg.std, dtype=torch.float32, device=dev)
    image = _normalise(x.unsqueeze(1), mean, std)

    ri = _nearest_index(top, ch, s, torch.zeros_like(flips))  # (B, S)
    ci = _nearest_index(left, cw, s, flips)  # (B, S)
    bi = torch.arange(b, device=dev).view(-1, 1, 1)
    scan = region[bi, ri.view(b, s, 1), ci.view(b, 1, s)]  # (B, S, S)

    g = s // cfg.patch_size
    integral = F.pad(region.to(torch.int32).cumsum(1).cumsum(2), (1, 0, 1, 0))  # (B, Hm+1, Wm+1)
    r0, r1 = _bin_edges(top, ch, g, torch.zeros_like(flips))  # (B, g)
    c0, c1 = _bin_edges(left, cw, g, flips)
    bg = torch.arange(b, device=dev).view(-1, 1, 1)

    def corner(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return integral[bg, r.view(b, g, 1), c.view(b, 1, g)]

    counts = corner(r1, c1) - corner(r0, c1) - corner(r1, c0) + corner(r0, c0)  # (B, g, g) region pixels
    area = (r1 - r0).view(b, g, 1) * (c1 - c0).view(b, 1, g)  # (B, g, g) source pixels per patch
    valid = coverage_validity(counts, area, cfg.patch_coverage)
    # A crop that misses the region: every patch valid, as in Preprocessor (USrc needs somewhere to draw).
    valid = torch.where(valid.flatten(1).any(dim=1).view(-1, 1, 1), valid, torch.ones_like(valid))
    return {"image": image.contiguous(), "scan_mask": scan, "valid_patches": valid}
