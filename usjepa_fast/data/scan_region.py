"""Scan-region masks: where the anatomy is (fan/sector or rectangle) vs black surround, text, calipers, UI.

* :func:`detect_scan_region` finds the region of one frame ``(H, W)`` or a clip ``(T, H, W)``.
  Single frames: a blurred-intensity foreground, opened with a disc wider than text strokes and
  caliper lines so those detach, then the large connected component(s) and their convex hull (fans
  and rectangles are convex up to the shallow arc at a convex probe's skin line; the hull also fills
  anechoic cysts and shadows that are dark but inside the region). Clips: pixels whose values change
  over time are anatomy (burned-in text and UI are static), so the temporal standard deviation and
  maximum are combined with the mean frame before the same steps.
* :func:`detect_clip_region` is the clip rule: frames spread over a clip, blank and dark ones
  (black leads, fades, title cards) dropped, then :func:`detect_scan_region` on the rest.
* :func:`patch_validity` turns a mask into the ViT patch grid that USrc masking and ``--tokens scan``
  need (the coverage rule: a patch counts when at least half of it is region).
* :class:`ScanMaskCache` stores detected masks as PNG in the cache dir so detection runs once.

Which frames of a clip, and the order sidecar > cache > detection, are decided in one place:
``usjepa_fast.data.clips.scan_mask`` (this module never decodes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from usjepa_fast.data.cache import cache_root, entry_name, file_key, publish
from usjepa_fast.errors import DataError

log = logging.getLogger("usfast")

# Bump when the detector (or the clip rule) changes so cached masks are recomputed.
# 2: clip masks from frames spread over the whole clip, blank/dark frames dropped, temporal max added.
DETECTOR_VERSION = 2
_WORK_SIDE = 256  # detection runs at this resolution (long side); the hull is drawn at full size


PATCH_COVERAGE = 0.5  # default share of a patch's pixels that must be region for the patch to count


def _bin_edges(n: int, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g,)`` [lo, hi) source-pixel bins of an adaptive pool of ``n`` pixels onto ``g`` cells."""
    i = torch.arange(g)
    return (i * n) // g, -((-(i + 1) * n) // g)


def coverage_validity(counts: torch.Tensor, area: torch.Tensor, coverage: float = PATCH_COVERAGE) -> torch.Tensor:
    """The coverage rule on box counts: ``counts (..., g, g)`` region pixels of each patch out of
    ``area`` (broadcastable) -> bool ``(..., g, g)``.

    A patch is valid when ``counts >= coverage * area`` (inclusive: exactly half counts at 0.5) and
    ``counts > 0`` (so ``coverage=0`` is the "touches" rule). A region that no patch covers to
    ``coverage`` (a strip thinner than the threshold) keeps the patches it touches instead of none.
    """
    if not 0.0 <= float(coverage) <= 1.0:
        raise ValueError(f"patch coverage must be in [0, 1], got {coverage}")
    touched = counts > 0
    covered = touched & (counts.to(torch.float64) >= float(coverage) * area.to(torch.float64))
    some = covered.flatten(-2).any(-1)[..., None, None]  # (..., 1, 1)
    return torch.where(some, covered, touched)


def patch_validity(
    mask: np.ndarray | torch.Tensor, image_size: int = 224, patch_size: int = 16, coverage: float = PATCH_COVERAGE
) -> torch.BoolTensor:
    """``(H, W)`` bool mask -> ``(S/p, S/p)`` bool grid of the patches that are scan region.

    The mask is mapped onto the model's ``S x S`` grid (the same whole-frame resize as the image):
    each patch covers the source pixels of its adaptive-pool bin; it is valid when at least
    ``coverage`` of them are region (:func:`coverage_validity`; ``coverage=0``: when it touches the
    region). All-False only for an empty mask.
    """
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if m.dim() != 2:
        raise ValueError(f"patch_validity expects a (H, W) mask, got shape {tuple(m.shape)}")
    g = image_size // patch_size
    h, w = m.shape
    integral = F.pad(m.to(torch.int64).cumsum(0).cumsum(1), (1, 0, 1, 0))  # (H+1, W+1)
    r0, r1 = _bin_edges(h, g)
    c0, c1 = _bin_edges(w, g)
    counts = (
        integral[r1[:, None], c1[None]]
        - integral[r0[:, None], c1[None]]
        - integral[r1[:, None], c0[None]]
        + integral[r0[:, None], c0[None]]
    )  # (g, g) region pixels per patch
    area = (r1 - r0)[:, None] * (c1 - c0)[None]  # (g, g) source pixels per patch
    return coverage_validity(counts, area, coverage)


def scan_patch_index(
    mask: np.ndarray | torch.Tensor | None,
    image_size: int = 224,
    patch_size: int = 16,
    coverage: float = PATCH_COVERAGE,
) -> torch.Tensor:
    """``(k,)`` int64 flat (raster-order) indices of the scan-region patches of ``mask`` on the model
    grid (:func:`patch_validity`); no mask or an empty one gives every patch (the whole frame)."""
    g = image_size // patch_size
    if mask is None:
        return torch.arange(g * g)
    valid = patch_validity(mask, image_size, patch_size, coverage).flatten()
    return torch.arange(g * g) if not bool(valid.any()) else torch.nonzero(valid).flatten()


def _hull_mask(points_rc: np.ndarray, shape: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    """Fill the convex hull of ``points_rc`` (work-resolution row/col) at full resolution ``shape``."""
    pts = points_rc.astype(np.float64) + 0.5  # pixel centres
    pts = pts * np.array(scale)
    img = Image.new("1", (shape[1], shape[0]), 0)
    try:
        hull = ConvexHull(pts)
        poly = [(float(c), float(r)) for r, c in pts[hull.vertices]]
    except (QhullError, ValueError):  # degenerate (a line): draw the bounding box
        r0, c0 = pts.min(axis=0)
        r1, c1 = pts.max(axis=0)
        poly = [(c0, r0), (c1, r0), (c1, r1), (c0, r1)]
    ImageDraw.Draw(img).polygon(poly, fill=1, outline=1)
    return np.asarray(img, dtype=bool)


def _disc(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def _downsample(stack: np.ndarray) -> tuple[np.ndarray, float]:
    """``(T, H, W)`` -> float32 ``(T, h, w)`` with long side <= _WORK_SIDE (area average)."""
    t, h, w = stack.shape
    factor = max(1, int(np.ceil(max(h, w) / _WORK_SIDE)))
    if factor == 1:
        return stack.astype(np.float32), 1.0
    hh, ww = h // factor, w // factor
    x = stack[:, : hh * factor, : ww * factor].astype(np.float32)
    x = x.reshape(t, hh, factor, ww, factor).mean(axis=(2, 4))
    return x, float(factor)


def _foreground(mean_img: np.ndarray, motion: np.ndarray | None, peak: np.ndarray | None = None) -> np.ndarray:
    """Work-resolution boolean foreground before morphology.

    Intensity: the median-filtered mean frame above the display's background level (estimated, since
    some exports use dark grey rather than black) plus a margin. Clips add motion: deep, attenuated
    anatomy can be almost as dark as the background but still changes from frame to frame, while
    burned-in text and UI never change, so moving pixels are added and static bright ones removed.
    ``peak`` (the temporal max) adds signal that only some frames show.
    """
    side = min(mean_img.shape)
    k = max(3, (side // 48) | 1)  # 5 at the 256-px working size: wider than 1-2 px strokes
    # A median (not a mean) filter: it erases 1-2 px text strokes, caliper and ruler lines outright
    # instead of smearing them into blobs, and keeps the region's edge where it is.
    smooth = ndimage.median_filter(mean_img, size=k)
    background = float(np.percentile(smooth, 2))
    above = smooth[smooth > background + 4.0]
    level = float(np.median(above)) if above.size else background
    fg = smooth > background + max(4.0, 0.1 * (level - background))
    # Dark but textured pixels (shadowed/attenuated tissue at the region's edge, common in tight crops)
    # are anatomy too; the flat display background has no texture. Requiring a level slightly above
    # the background keeps the high-contrast *edge* of the region from growing it outwards.
    mean_sq = ndimage.uniform_filter(mean_img * mean_img, size=k)
    local_mean = ndimage.uniform_filter(mean_img, size=k)
    texture = ndimage.uniform_filter(np.sqrt(np.maximum(mean_sq - local_mean * local_mean, 0.0)), size=k)
    tex_level = float(np.median(texture[fg])) if fg.any() else 0.0
    # (local mean, not median: sparse bright speckle on a near-black deep field has a zero median)
    textured = (texture > max(2.0, 0.25 * tex_level)) & (local_mean > background + 2.0)
    # Text, rulers and calipers are textured too: drop the neighbourhood of thin bright strokes
    # (white top-hat: what a 3x3 grey opening removes), so they cannot bridge into the region.
    tophat = mean_img - ndimage.grey_opening(mean_img, size=(3, 3))
    strokes = tophat > max(20.0, 0.3 * (float(mean_img.max()) - background))
    textured &= ~ndimage.binary_dilation(strokes, structure=_disc(k))
    # The texture window straddling the region's edge sees the edge itself as texture; eroding by
    # half the window takes that outward growth back (dark textured areas worth adding are large).
    fg |= ndimage.binary_erosion(textured, structure=_disc(max(1, k // 2)))
    if motion is None:
        return fg
    if peak is not None:
        # The fan's dark edges drop in and out from frame to frame (contact, attenuation): the mean
        # misses them, the temporal max keeps them. Eroded by 2 px so the max's halo (speckle and codec
        # ringing at the edge) does not grow the region; static UI is removed below as for the mean.
        fg |= ndimage.binary_erosion(_foreground(peak, None), structure=_disc(2))
    mot = ndimage.median_filter(motion, size=k)
    p95 = float(np.percentile(mot, 95))
    moving = mot > max(1.0, 0.08 * p95)
    # Use the temporal evidence only when the probe/anatomy actually moved; a still clip has none.
    if moving.mean() > 0.05:
        static = mot < max(0.5, 0.02 * p95)
        # Block codecs (MJPEG, MPEG-2) flicker in the black pixels next to the region's edge; eroding
        # the motion mask by about one 8x8 block keeps that rim out, while the interior it is needed
        # for (dark, deep anatomy) is large.
        moving = ndimage.binary_erosion(moving, structure=_disc(max(1, side // 64)))
        fg = (fg & ~static) | moving
    return fg


def detect_scan_region(frames: np.ndarray, keep_ratio: float = 0.25) -> np.ndarray:
    """Scan region of a frame ``(H, W)`` or clip ``(T, H, W)`` (uint8/uint16/float gray) -> bool ``(H, W)``.

    ``keep_ratio``: besides the largest component, components at least this fraction of its area are
    kept too (dual-view / side-by-side displays). A frame with no foreground (all black) returns an
    all-False mask; callers treat that as "unknown" and typically fall back to the whole frame.
    """
    arr = np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or min(arr.shape[1:]) < 8:
        raise DataError(f"detect_scan_region expects (H, W) or (T, H, W) with sides >= 8, got shape {arr.shape}")
    h, w = arr.shape[1:]
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating) and float(arr.max(initial=0)) <= 1.0:
        arr = arr * 255.0
    small, _ = _downsample(arr)  # (T, h, w)
    mean_img = small.mean(axis=0)
    motion = small.std(axis=0) if small.shape[0] >= 3 else None
    peak = small.max(axis=0) if motion is not None else None
    fg = _foreground(mean_img, motion, peak)

    side = min(mean_img.shape)
    # Opening radius ~ 2.5% of the side: wider than text strokes, caliper marks and 1-2 px UI lines
    # at typical display sizes, much narrower than any fan or rectangle.
    radius = max(2, int(round(side * 0.025)))
    fg = ndimage.binary_opening(fg, structure=_disc(radius))
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.zeros((h, w), dtype=bool)
    areas = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    largest = float(areas.max())
    # Small components are text/UI; a component must also be a few patches big to count.
    keep = [i + 1 for i, a in enumerate(areas) if a >= keep_ratio * largest and a >= 0.02 * fg.size]
    if not keep:
        keep = [int(np.argmax(areas)) + 1]
    out = np.zeros((h, w), dtype=bool)
    scale = (h / mean_img.shape[0], w / mean_img.shape[1])
    for lab in keep:
        comp = labels == lab
        # Only boundary pixels matter for the hull; they keep Qhull fast on large regions.
        edge = comp & ~ndimage.binary_erosion(comp)
        pts = np.argwhere(edge)
        # Hull from pixel corners, not centres, so a full-frame rectangle maps to the full frame.
        corners = np.concatenate([pts + d for d in ((-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5))])
        out |= _hull_mask(corners, (h, w), scale)
    return out


def usable_frames(frames: np.ndarray) -> np.ndarray:
    """``(T, H, W)`` -> the frames that show the display as it usually is: blank or flat frames (a
    black lead-in, a uniform title card) and frames much darker than the clip's bright frames (fades
    from black, text cards on black) are dropped; they would make static UI look like motion. Returns
    ``(T', H, W)`` with ``T' >= 0``."""
    orig = np.asarray(frames)
    arr = orig
    if arr.ndim != 3 or arr.shape[0] == 0:
        return arr
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.floating) and float(arr.max(initial=0)) <= 1.0:
        arr = arr * 255.0
    flat = arr.reshape(arr.shape[0], -1)
    step = max(1, flat.shape[1] // 65536)  # a strided sample of pixels is plenty for two statistics
    sample = flat[:, ::step].astype(np.float32)
    brightness = sample.mean(axis=1)
    spread = sample.std(axis=1)
    # The clip's usual level: a high percentile, so a lead-in of blank frames (even most of the
    # samples) does not drag it down, yet one flash frame does not set it.
    bright = float(np.percentile(brightness, 75 if len(brightness) < 8 else 90))
    keep = (spread >= 2.0) & (brightness >= 0.5 * bright) & (brightness > 1.0)
    return orig[keep]


def detect_clip_region(frames: np.ndarray) -> np.ndarray:
    """Scan region of a clip from frames ``(T, H, W)`` spread over it -> bool ``(H, W)``.

    Blank and dark frames are dropped first (:func:`usable_frames`); on the rest, the temporal mean and
    standard deviation find the region (:func:`detect_scan_region`). All-False when no frame is usable.
    """
    arr = np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or min(arr.shape[1:]) < 8:
        raise DataError(f"detect_clip_region expects (T, H, W) frames with sides >= 8, got shape {arr.shape}")
    usable = usable_frames(arr)
    if usable.shape[0] == 0:
        return np.zeros(arr.shape[1:], dtype=bool)
    return detect_scan_region(usable)


def sidecar_mask_path(path: str | Path) -> Path:
    """Where a provided scan mask for media ``path`` lives: ``<stem>.scanmask.png`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.scanmask.png")


def save_mask(mask: np.ndarray, path: str | Path) -> None:
    """Write a bool mask as a 1-bit PNG (0/255 when viewed)."""
    import io

    from usjepa_fast.fileio import atomic_write_bytes

    # Encoded in memory, then renamed into place: parallel workers sharing a mask cache never read
    # a half-written PNG.
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).convert("L").save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def load_mask(path: str | Path) -> np.ndarray:
    """Read a mask PNG (any non-zero pixel is inside the region) as bool ``(H, W)``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"scan mask {path} does not exist; fix the path in the dataset JSON or drop the scan_mask field"
        )
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L"))
    except (OSError, ValueError) as exc:
        raise DataError(f"scan mask {path} cannot be read ({exc.__class__.__name__}); re-export it") from None
    return arr > 0


class ScanMaskCache:
    """Detected masks cached as PNGs keyed by (resolved path, size, mtime, detector version).

    Default: ``<cache root>/scan_masks/<stem>-<key>.scanmask.png`` (``data.cache.cache_root``), never
    in the data folder. ``beside=True`` (asked for explicitly, e.g. ``--mask-cache beside``) stores a
    hidden ``.<stem>-<key>.scanmask.png`` next to the media file instead, falling back to the cache dir
    when that folder is read-only.
    """

    def __init__(self, cache_dir: str | Path | None = None, beside: bool = False) -> None:
        self.dir = cache_root(cache_dir) / "scan_masks"
        self.beside = beside
        self.hits = 0
        self.misses = 0

    def _candidates(self, path: Path) -> list[Path]:
        name = entry_name(path, file_key(path, f"v{DETECTOR_VERSION}"), ".scanmask.png")
        cached = self.dir / name
        return [path.with_name(f".{name}"), cached] if self.beside else [cached]

    def get(self, path: str | Path, detect: Callable[[], np.ndarray]) -> np.ndarray:
        """Mask of media ``path``: the cached one, else ``detect()`` (a bool ``(H, W)`` mask), stored.

        ``detect`` only runs on a miss.
        """
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path} does not exist; cannot compute its scan mask")
        candidates = self._candidates(path)
        for c in candidates:
            if c.is_file():
                try:
                    mask = load_mask(c)
                    self.hits += 1
                    return mask
                except DataError:
                    log.debug("ignoring unreadable cached scan mask %s", c)
        self.misses += 1
        mask = np.asarray(detect(), dtype=bool)
        for c in candidates:
            if publish(c, lambda tmp: save_mask(mask, tmp)):
                break
        return mask


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def mask_overlay(gray: np.ndarray, mask: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 picture for checking a mask: the region tinted green with its outline in
    yellow; with ``reference`` (e.g. a true mask) its outline is drawn in magenta."""
    from usjepa_fast.data.media import to_uint8

    g = to_uint8(gray).astype(np.float32)
    rgb = np.stack([g, g, g], axis=-1)
    rgb[mask] = rgb[mask] * 0.75 + np.array([0.0, 60.0, 0.0])
    outline = mask & ~ndimage.binary_erosion(mask, iterations=max(1, min(mask.shape) // 200))
    rgb[outline] = (255, 255, 0)
    if reference is not None:
        ref_outline = reference & ~ndimage.binary_erosion(reference)
        rgb[ref_outline] = (255, 0, 255)
    return np.clip(rgb, 0, 255).astype(np.uint8)
