"""Built-in synthetic B-mode ultrasound: an UltraBench-format dataset plus short clips.

No public ultrasound may be downloaded or committed here, so usfast simulates its own. The image
formation follows a B-mode scanner, in beam space (depth samples x scan lines):

1. **Tissue**: an echogenicity map (backscatter intensity) and an attenuation map: skin line,
   subcutaneous fat with septa, a fascia line, parenchyma with low-frequency texture, an optional deep
   reflector, and one lesion per abnormal image.
2. **Speckle**: a dense field of random scatterers weighted by sqrt(echogenicity), convolved (FFT)
   with a point-spread function (Gaussian envelope x cosine carrier axially, Gaussian laterally), plus
   electronic noise -> RF lines; envelope detection with the Hilbert transform gives fully developed
   (Rayleigh) speckle.
3. **Attenuation and TGC**: amplitude decays with the depth-integral of the attenuation map along each
   line; time-gain compensation undoes the *nominal* tissue attenuation, imperfectly. Fluid (cyst)
   attenuates less than tissue -> posterior acoustic enhancement; a solid mass attenuates more ->
   acoustic shadow. Both emerge from the physics rather than being painted on.
4. **Log compression** with a random gain and dynamic range, then **scan conversion** into a fan
   (curvilinear probe, virtual apex above the image) or a rectangle (linear probe) on a black canvas.
5. **Display overlays**: burned-in text (preset, depth, gain), a depth ruler, a grey-bar, an
   orientation mark and, on half of the images of *every* class, calipers (so they are no shortcut).

Classes (label order): ``normal`` (no lesion), ``cyst`` (anechoic, sharp wall, posterior
enhancement), ``solid_mass`` (hypoechoic, irregular margin, acoustic shadow), ``hyperechoic_mass``
(bright, smooth). Lesion size/depth/position, gain, dynamic range, geometry and layer thicknesses vary,
so global brightness alone does not separate the classes; the local lesion pattern does.

Clips: the probe drifts laterally over a tissue volume larger than the view, so speckle moves
coherently with the tissue (with partial decorrelation per frame); clip 0 holds a still-probe segment
of identical frames. Written as H.264 ``.mp4`` (yuv420p), plus one VP9 ``.webm`` and one MJPEG ``.avi``
(the codecs DALI decodes on the CPU) when there are at least three clips. Every clip has its true scan
mask beside it as ``<stem>.scanmask.png`` and the manifest ``clips/clips.json``.

DICOM (``dicom=True``, :func:`write_dicom_set`): the way scanners export, with a Sequence of
Ultrasound Regions whose B-mode boxes bound the true scan mask: a JPEG-baseline YBR_FULL_422 cine
loop with an ECG-trace strip (its own, non-B-mode region), an uncompressed MONOCHROME2 cine loop with
a Frame Time Vector and no file extension (found by its ``DICM`` preamble), and a single-frame RGB
dual view (two B-mode panes). All carry the fake patient tags :data:`SYNTH_PATIENT`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import fft as sp_fft
from scipy import ndimage, signal

from usjepa_fast.errors import DataError
from usjepa_fast.fileio import atomic_write_text

log = logging.getLogger("usfast")

CLASSES: tuple[str, ...] = ("normal", "cyst", "solid_mass", "hyperechoic_mass")
SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.15, "test": 0.15}
_PRESETS = ("LEFT BREAST", "RIGHT BREAST", "THYROID", "LIVER", "ABDOMEN", "MSK", "SMALL PARTS")


@dataclass
class SynthSummary:
    """What :func:`synthesize` wrote."""

    out_dir: Path
    ultrabench_dir: Path
    clips_dir: Path
    n_images: int
    n_clips: int
    image_size: int
    classes: tuple[str, ...]
    class_counts: dict[str, int]
    split_counts: dict[str, int]
    clip_files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    dicom_files: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Scan geometry
# --------------------------------------------------------------------------------------------------


@dataclass
class Geometry:
    """Where beam space lands on the ``size x size`` canvas."""

    kind: str  # "fan" or "linear"
    size: int
    # linear: rectangle [top, top+height) x [left, left+width)
    top: float = 0.0
    left: float = 0.0
    height: float = 0.0
    width: float = 0.0
    # fan: apex (cx, apex_y), radii r0..r1, half-angle (rad)
    cx: float = 0.0
    apex_y: float = 0.0
    r0: float = 0.0
    r1: float = 0.0
    half_angle: float = 0.0

    @property
    def depth_px(self) -> float:
        return self.height if self.kind == "linear" else self.r1 - self.r0

    @property
    def lateral_px(self) -> float:
        """Physical lateral extent in pixels (mid-depth arc length for a fan)."""
        if self.kind == "linear":
            return self.width
        return 2 * self.half_angle * 0.5 * (self.r0 + self.r1)

    def right_edge(self) -> float:
        if self.kind == "linear":
            return self.left + self.width
        return self.cx + self.r1 * np.sin(self.half_angle)

    def left_edge(self) -> float:
        if self.kind == "linear":
            return self.left
        return self.cx - self.r1 * np.sin(self.half_angle)

    def top_edge(self) -> float:
        if self.kind == "linear":
            return self.top
        return self.apex_y + self.r0 * np.cos(self.half_angle)

    def bottom_edge(self) -> float:
        return self.top + self.height if self.kind == "linear" else self.apex_y + self.r1

    def beam_coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For every canvas pixel centre: (depth fraction [0,1], lateral fraction [0,1], inside mask)."""
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
        if self.kind == "linear":
            zf = (yy - self.top) / self.height
            xf = (xx - self.left) / self.width
            inside = (zf >= 0) & (zf < 1) & (xf >= 0) & (xf < 1)
        else:
            dy, dx = yy - self.apex_y, xx - self.cx
            r = np.hypot(dy, dx)
            th = np.arctan2(dx, dy)
            zf = (r - self.r0) / (self.r1 - self.r0)
            xf = (th + self.half_angle) / (2 * self.half_angle)
            inside = (zf >= 0) & (zf < 1) & (xf >= 0) & (xf < 1)
        return zf, xf, inside


def random_geometry(rng: np.random.Generator, size: int, kind: str | None = None) -> Geometry:
    kind = kind or ("fan" if rng.random() < 0.5 else "linear")
    top = size * rng.uniform(0.08, 0.14)  # room for the burned-in header text
    if kind == "linear":
        width = size * rng.uniform(0.62, 0.8)
        height = size * rng.uniform(0.72, 0.84)
        height = min(height, size * 0.97 - top)
        left = (size - width) / 2 + size * rng.uniform(-0.04, 0.04)
        return Geometry(kind, size, top=top, left=left, height=height, width=width)
    half = np.deg2rad(rng.uniform(24, 36))
    r0 = size * rng.uniform(0.12, 0.3)  # convex-probe radius (virtual apex above the canvas)
    bottom = size * rng.uniform(0.9, 0.96)
    # Apex height: the skin line's outer corners sit at ``top``.
    apex_y = top - r0 * np.cos(half)
    r1 = bottom - apex_y
    # Keep the fan's lateral extent inside the canvas with a margin for the ruler.
    max_half_width = size * 0.42
    if r1 * np.sin(half) > max_half_width:
        half = float(np.arcsin(max_half_width / r1))
        apex_y = top - r0 * np.cos(half)
        r1 = bottom - apex_y
    cx = size / 2 + size * rng.uniform(-0.02, 0.02)
    return Geometry(kind, size, cx=cx, apex_y=apex_y, r0=r0, r1=r1, half_angle=float(half))


# --------------------------------------------------------------------------------------------------
# Tissue model (beam space: nz depth samples x nx lines, coordinates as fractions in [0, 1])
# --------------------------------------------------------------------------------------------------


def _smooth_curve(rng: np.random.Generator, n: int, scale: float, corr: float) -> np.ndarray:
    """Smooth random 1-D curve of length n, std ~scale, correlation length ~corr*n samples."""
    raw = rng.standard_normal(n)
    out = sp_fft.irfft(ndimage.fourier_gaussian(sp_fft.rfft(raw), sigma=max(1.0, corr * n), n=n), n=n)
    out = out - out.mean()  # zero-mean before scaling: smoothing keeps the DC term but shrinks the std
    std = out.std() or 1.0
    return out / std * scale


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    """Unit-std Gaussian random field ``(H, W)`` float32, smoothed in the Fourier domain.

    Smooth fields carry no detail finer than sigma, so they are drawn on a grid coarser by up to 4x
    and upsampled bilinearly (periodic), which makes them ~10x cheaper at the same look.
    """
    f = max(1, min(4, int(min(sigma) // 2)))
    small = (-(-shape[0] // f), -(-shape[1] // f))
    spec = sp_fft.rfft2(rng.standard_normal(small, dtype=np.float32))
    field = sp_fft.irfft2(ndimage.fourier_gaussian(spec, sigma=(sigma[0] / f, sigma[1] / f), n=small[1]), s=small)
    if f > 1:
        zoom = (shape[0] / small[0], shape[1] / small[1])
        field = ndimage.zoom(field, zoom, order=1, mode="grid-wrap", grid_mode=True)[: shape[0], : shape[1]]
    field = field.astype(np.float32, copy=False)
    field -= field.mean()
    return field / (field.std() or 1.0)


@dataclass
class Lesion:
    kind: str  # one of CLASSES[1:]
    zc: float  # centre depth fraction
    xc: float  # centre lateral fraction (of the *tissue* width)
    radius_px: float  # mean radius in canvas pixels
    aspect: float  # vertical/horizontal radius ratio
    irregularity: float  # radial modulation amplitude (spiculated solid masses are high)


@dataclass
class TissueParams:
    skin_end: float
    fat_end: float
    fascia_width: float
    fat_echo: float
    parenchyma_echo: float
    texture_strength: float
    deep_reflector: float | None
    attenuation: float  # nepers over the full depth for parenchyma (amplitude, one way x2)
    lesion: Lesion | None


def random_tissue(rng: np.random.Generator, label: int, geom: Geometry) -> TissueParams:
    lesion = None
    if label > 0:
        kind = CLASSES[label]
        depth_px = geom.depth_px
        radius = geom.size * rng.uniform(0.045, 0.11)
        aspect = rng.uniform(0.7, 1.25) if kind != "solid_mass" else rng.uniform(0.8, 1.5)
        r_depth = radius * aspect / depth_px
        zc = rng.uniform(max(0.3, 0.3 + r_depth), max(0.32 + r_depth, 0.75 - r_depth))
        xc = rng.uniform(0.25, 0.75)
        irregular = {"cyst": 0.02, "solid_mass": rng.uniform(0.12, 0.25), "hyperechoic_mass": 0.05}[kind]
        lesion = Lesion(kind, float(zc), float(xc), float(radius), float(aspect), float(irregular))
    skin_end = rng.uniform(0.02, 0.04)
    fat_end = skin_end + rng.uniform(0.06, 0.2)
    return TissueParams(
        skin_end=skin_end,
        fat_end=fat_end,
        fascia_width=rng.uniform(0.008, 0.02),
        fat_echo=rng.uniform(0.3, 0.6),
        parenchyma_echo=1.0,
        texture_strength=rng.uniform(0.15, 0.45),
        deep_reflector=float(rng.uniform(0.82, 0.95)) if rng.random() < 0.4 else None,
        attenuation=rng.uniform(3.0, 5.0),  # ~26-43 dB round trip over the depth
        lesion=lesion,
    )


def tissue_maps(
    rng: np.random.Generator, p: TissueParams, geom: Geometry, nz: int, nx: int, lateral_scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Echogenicity and attenuation maps ``(nz, nx)`` for tissue ``p`` seen through ``geom``.

    ``lateral_scale`` > 1 makes the tissue wider than one view (clips pan over it).
    """
    z = (np.arange(nz) + 0.5) / nz
    zz = z[:, None]
    wave = lambda s, c: _smooth_curve(rng, nx, s, c)[None, :]  # noqa: E731 - local shorthand
    skin = p.skin_end + wave(0.004, 0.2)
    fat = p.fat_end + wave(0.02, 0.15 / lateral_scale)
    fascia_w = p.fascia_width
    echo = np.full((nz, nx), p.parenchyma_echo, dtype=np.float32)
    atten = np.full((nz, nx), p.attenuation, dtype=np.float32)
    # Parenchyma texture: lognormal low-frequency modulation (lobules, vessels) keeps it non-uniform.
    tex = _smooth_field(rng, (nz, nx), (nz * 0.03, nx * 0.03 / lateral_scale))
    echo *= np.exp(p.texture_strength * tex)
    # Fat: hypoechoic lobules with thin bright septa.
    in_fat = (zz >= skin) & (zz < fat)
    septa = np.abs(_smooth_field(rng, (nz, nx), (nz * 0.02, nx * 0.05 / lateral_scale))) < 0.08
    echo = np.where(in_fat, p.fat_echo * (1.0 + 2.5 * septa), echo)
    atten = np.where(in_fat, p.attenuation * 0.6, atten)
    echo = np.where(zz < skin, 2.5, echo)  # skin line: bright
    fascia = (zz >= fat) & (zz < fat + fascia_w)
    echo = np.where(fascia, 4.0, echo)
    if p.deep_reflector is not None:
        d = p.deep_reflector + wave(0.01, 0.3)
        echo = np.where(np.abs(zz - d) < 0.01, 5.0, echo)
    if p.lesion is not None:
        echo, atten = _add_lesion(rng, p.lesion, geom, echo, atten, nz, nx, lateral_scale)
    return echo.astype(np.float32, copy=False), atten.astype(np.float32, copy=False)


def _add_lesion(
    rng: np.random.Generator,
    les: Lesion,
    geom: Geometry,
    echo: np.ndarray,
    atten: np.ndarray,
    nz: int,
    nx: int,
    lateral_scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    # Pixel-space distances so the lesion is round on screen: 1 depth sample = depth_px/nz px,
    # 1 line = lateral_px*lateral_scale/nx px (fan: arc length at mid depth).
    dz_px = geom.depth_px / nz
    dx_px = geom.lateral_px * lateral_scale / nx
    ry = les.radius_px * les.aspect
    rx = les.radius_px
    # Work on the lesion's bounding window only (margin for the irregular outline and the soft edge).
    zc_i, xc_i = les.zc * nz, les.xc * nx
    hz, hx = 1.6 * ry / dz_px, 1.6 * rx / dx_px
    z0, z1 = max(0, int(zc_i - hz)), min(nz, int(np.ceil(zc_i + hz)) + 1)
    x0, x1 = max(0, int(xc_i - hx)), min(nx, int(np.ceil(xc_i + hx)) + 1)
    zi = ((np.arange(z0, z1) + 0.5) - zc_i)[:, None] * dz_px
    xi = ((np.arange(x0, x1) + 0.5) - xc_i)[None, :] * dx_px
    phi = np.arctan2(zi / ry, xi / rx)
    # Irregular margin: radial modulation by a few random harmonics.
    modulation = np.ones_like(phi)
    for k in range(2, 9):
        modulation += les.irregularity / (k**0.5) * rng.standard_normal() * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    rho = np.hypot(zi / ry, xi / rx) / modulation
    inside = rho < 1.0
    edge = np.clip((1.15 - rho) / 0.15, 0.0, 1.0)  # soft margin weight (1 inside, 0 outside)
    base_att = float(np.median(atten))
    win = (slice(z0, z1), slice(x0, x1))
    e, a = echo[win].copy(), atten[win].copy()
    shape = e.shape
    if les.kind == "cyst":
        e = np.where(inside, 1e-5, e)  # anechoic: ~-50 dB, below the electronic noise
        wall = (rho >= 0.97) & (rho < 1.07)
        e = np.where(wall, e * 1.6, e)
        # Fluid barely attenuates: the region behind it is brighter after nominal TGC.
        a = np.where(inside, 0.0, a)
    elif les.kind == "solid_mass":
        inner = np.exp(0.35 * _smooth_field(rng, shape, (nz * 0.01, nx * 0.01)))
        level = rng.uniform(0.25, 0.45)
        e = e * (1 - edge) + level * inner * edge
        a = np.where(inside, base_att * rng.uniform(3.0, 6.0), a)
    elif les.kind == "hyperechoic_mass":
        inner = np.exp(0.25 * _smooth_field(rng, shape, (nz * 0.015, nx * 0.015)))
        level = rng.uniform(3.5, 6.0)
        e = e * (1 - edge) + level * inner * edge
        a = np.where(inside, base_att * rng.uniform(1.0, 1.6), a)
    else:
        raise ValueError(f"unknown lesion kind {les.kind}")
    echo = echo.copy()
    atten = atten.copy()
    echo[win], atten[win] = e, a
    return echo, atten


# --------------------------------------------------------------------------------------------------
# Acquisition: speckle, attenuation, TGC, envelope, log compression
# --------------------------------------------------------------------------------------------------

_WAVELENGTH = 4.0  # carrier period in depth samples (nz = 2 x canvas rows: 2 px per wavelength)


def _psf(sigma_z: float, sigma_x: float) -> np.ndarray:
    hz = int(np.ceil(3 * sigma_z))
    hx = int(np.ceil(3 * sigma_x))
    z = np.arange(-hz, hz + 1)[:, None]
    x = np.arange(-hx, hx + 1)[None, :]
    psf = np.exp(-0.5 * (z / sigma_z) ** 2 - 0.5 * (x / sigma_x) ** 2) * np.cos(2 * np.pi * z / _WAVELENGTH)
    return psf.astype(np.float32)


def rf_lines(rng: np.random.Generator, echo: np.ndarray, psf: np.ndarray, noise_level: float = 0.006) -> np.ndarray:
    """Scatterers weighted by sqrt(echogenicity) convolved with the PSF (+ electronic noise): RF ``(nz, nx)``."""
    scat = rng.standard_normal(echo.shape, dtype=np.float32) * np.sqrt(echo)
    rf = signal.fftconvolve(scat, psf, mode="same")
    ref = float(np.sqrt((psf**2).sum()))
    return rf / np.float32(ref) + np.float32(noise_level) * rng.standard_normal(echo.shape, dtype=np.float32)


def envelope(rf: np.ndarray) -> np.ndarray:
    """Envelope detection: magnitude of the analytic signal along depth, then 2:1 depth averaging.

    The RF grid samples the carrier (2 depth samples per display row); the envelope is band-limited,
    so averaging pairs of samples loses nothing visible and halves the cost of what follows.
    """
    env = np.abs(signal.hilbert(rf, axis=0)).astype(np.float32, copy=False)  # (nz, nx)
    nz = env.shape[0] - env.shape[0] % 2
    return env[:nz].reshape(nz // 2, 2, env.shape[1]).mean(axis=1)  # (nz/2, nx)


def attenuation_gain(atten: np.ndarray, nominal: float, tgc_error: np.ndarray | None = None) -> np.ndarray:
    """Amplitude factor after round-trip attenuation and TGC along each line ``(nz, nx)``.

    ``atten`` is in nepers per full depth; the integral along depth uses the mid-point rule. TGC
    compensates ``nominal`` (the scanner's assumption for tissue), so anything that attenuates
    less/more than tissue brightens/darkens everything behind it.
    """
    nz = atten.shape[0]
    dz = 1.0 / nz
    path = np.cumsum(atten, axis=0, dtype=np.float32) * dz - 0.5 * atten * dz
    depth = ((np.arange(nz, dtype=np.float32) + 0.5) * dz)[:, None]
    log_gain = -path + nominal * depth
    if tgc_error is not None:
        log_gain = log_gain + tgc_error[:, None].astype(np.float32)
    return np.exp(log_gain).astype(np.float32, copy=False)


def log_compress(env: np.ndarray, gain_db: float, dynamic_range_db: float) -> np.ndarray:
    """Envelope (unit = mean tissue amplitude) -> display levels in [0, 1]."""
    db = np.float32(20.0) * np.log10(np.maximum(env, np.float32(1e-6))) + np.float32(gain_db)
    # 0 dB (average tissue) sits ~26 dB below white: mid-grey parenchyma, headroom for specular
    # reflectors, and electronic noise (~-44 dB) lands near black for typical dynamic ranges.
    return np.clip((db - 26.0 + dynamic_range_db) / dynamic_range_db, 0.0, 1.0)


@dataclass
class Acquisition:
    gain_db: float
    dynamic_range_db: float
    sigma_z: float
    sigma_x: float
    tgc_error: np.ndarray
    tgc_nominal: float


def random_acquisition(rng: np.random.Generator, nz: int, tissue: TissueParams) -> Acquisition:
    return Acquisition(
        gain_db=float(rng.uniform(-7, 7)),
        dynamic_range_db=float(rng.uniform(45, 65)),
        sigma_z=float(rng.uniform(1.2, 2.0)),
        sigma_x=float(rng.uniform(0.9, 1.6)),
        tgc_error=_smooth_curve(rng, nz, rng.uniform(0.05, 0.25), 0.2),
        tgc_nominal=tissue.attenuation * rng.uniform(0.85, 1.1),
    )


class ScanConverter:
    """Beam space ``(nz, nx_total)`` -> canvas ``(S, S)`` (0 outside the region); the per-pixel beam
    coordinates are computed once per geometry and reused for every frame of a clip."""

    def __init__(self, geom: Geometry, nz: int, view_lines: int) -> None:
        zf, xf, inside = geom.beam_coords()
        self.inside = inside
        self.rows = (zf[inside] * nz - 0.5).astype(np.float32)
        self.cols = (xf[inside] * view_lines - 0.5).astype(np.float32)
        self.shape = zf.shape

    def __call__(self, beam: np.ndarray, lateral_offset: float = 0.0) -> np.ndarray:
        """``lateral_offset`` (lines, fractional) selects the window a panning probe sees."""
        out = np.zeros(self.shape, dtype=np.float32)
        coords = np.stack([self.rows, self.cols + np.float32(lateral_offset)])
        out[self.inside] = ndimage.map_coordinates(beam, coords, order=1, mode="nearest")
        return out


def scan_convert(beam: np.ndarray, geom: Geometry) -> np.ndarray:
    """Beam-space image ``(nz, nx)`` -> canvas ``(S, S)`` float (0 outside the region)."""
    return ScanConverter(geom, beam.shape[0], beam.shape[1])(beam)


# --------------------------------------------------------------------------------------------------
# Display overlays
# --------------------------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=max(7, size))
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def draw_overlays(
    canvas: np.ndarray, geom: Geometry, rng: np.random.Generator, acq: Acquisition, calipers: list[tuple[float, float]]
) -> np.ndarray:
    """Burn text, ruler, grey bar, orientation mark and calipers into the uint8 canvas ``(S, S)``."""
    s = geom.size
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    fs = max(7, s // 22)
    font = _font(fs)
    white = int(rng.integers(200, 256))
    preset = _PRESETS[int(rng.integers(len(_PRESETS)))]
    draw.text((s * 0.02, s * 0.01), preset, fill=white, font=font)
    depth_cm = rng.uniform(3.0, 12.0)
    draw.text((s * 0.72, s * 0.01), f"{depth_cm:.1f}cm", fill=white, font=font)
    draw.text((s * 0.02, s - fs * 1.4), f"G{50 + acq.gain_db:.0f} DR{acq.dynamic_range_db:.0f}", fill=white, font=font)
    if rng.random() < 0.6:
        draw.text((s * 0.75, s - fs * 1.4), f"{int(rng.integers(12, 40))}Hz", fill=white, font=font)
    # Depth ruler: a thin vertical line with ticks, to the right of the region.
    rx = min(s - 3.0, geom.right_edge() + s * 0.04)
    y0, y1 = geom.top_edge(), geom.bottom_edge()
    draw.line([(rx, y0), (rx, y1)], fill=white, width=1)
    for k in range(6):
        ty = y0 + (y1 - y0) * k / 5
        draw.line([(rx, ty), (rx + s * 0.015, ty)], fill=white, width=1)
    # Orientation mark (a small filled square near the top-left of the region).
    mx, my = geom.left_edge() - s * 0.02, geom.top_edge() + s * 0.01
    if mx > 3:
        draw.rectangle([mx - s * 0.012, my, mx, my + s * 0.012], fill=white)
    # Grey bar on the left on some displays.
    if rng.random() < 0.4:
        bx = max(1.0, geom.left_edge() - s * 0.07)
        if bx > s * 0.015:
            ys = np.linspace(y0 + s * 0.1, y1 - s * 0.1, 32)
            for i in range(len(ys) - 1):
                level = int(255 * i / (len(ys) - 2))
                draw.rectangle([bx - s * 0.012, ys[i], bx, ys[i + 1]], fill=level)
    # Calipers: '+' marks joined by a dotted line (inside the region).
    arm = max(2.0, s * 0.018)
    for cy, cx in calipers:
        draw.line([(cx - arm, cy), (cx + arm, cy)], fill=white, width=1)
        draw.line([(cx, cy - arm), (cx, cy + arm)], fill=white, width=1)
    if len(calipers) == 2:
        (ay, ax), (by, bx2) = calipers
        for t in np.linspace(0.15, 0.85, 8):
            px, py = ax + (bx2 - ax) * t, ay + (by - ay) * t
            draw.point([(px, py)], fill=white)
    return np.asarray(img)


def _canvas_point(geom: Geometry, zf: float, xf: float) -> tuple[float, float]:
    """(depth fraction, lateral fraction) -> canvas (row, col)."""
    if geom.kind == "linear":
        return geom.top + zf * geom.height, geom.left + xf * geom.width
    r = geom.r0 + zf * (geom.r1 - geom.r0)
    th = -geom.half_angle + xf * 2 * geom.half_angle
    return geom.apex_y + r * np.cos(th), geom.cx + r * np.sin(th)


def _caliper_points(rng: np.random.Generator, geom: Geometry, tissue: TissueParams) -> list[tuple[float, float]]:
    if rng.random() >= 0.5:
        return []
    les = tissue.lesion
    if les is not None:
        half = les.radius_px / geom.lateral_px
        pts = [(les.zc, les.xc - half), (les.zc, les.xc + half)]
    else:  # normal images get calipers too (measuring a layer), so calipers are no class cue
        zc, xc, half = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.12)
        pts = [(zc, xc - half), (zc, xc + half)]
    return [_canvas_point(geom, z, min(0.97, max(0.03, x))) for z, x in pts]


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def render_image(
    rng: np.random.Generator, label: int, size: int, geometry: str | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """One synthetic B-mode frame: ``(uint8 (S, S), bool mask (S, S), metadata)``."""
    geom = random_geometry(rng, size, geometry)
    nz, nx = 2 * size, size
    tissue = random_tissue(rng, label, geom)
    acq = random_acquisition(rng, nz, tissue)
    echo, atten = tissue_maps(rng, tissue, geom, nz, nx)
    rf = rf_lines(rng, echo, _psf(acq.sigma_z, acq.sigma_x))  # (nz, nx)
    gain = attenuation_gain(atten, acq.tgc_nominal, acq.tgc_error)
    env = envelope(rf) * gain.reshape(nz // 2, 2, nx).mean(axis=1)  # (nz/2, nx)
    beam = log_compress(env, acq.gain_db, acq.dynamic_range_db)
    converter = ScanConverter(geom, beam.shape[0], beam.shape[1])
    canvas, mask = converter(beam), converter.inside
    frame = np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)
    frame = draw_overlays(frame, geom, rng, acq, _caliper_points(rng, geom, tissue))
    lesion = None
    if tissue.lesion is not None:
        lesion = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(tissue.lesion).items()}
        # Where it landed on screen, for localisation tasks and for checking the physics.
        row, col = _canvas_point(geom, tissue.lesion.zc, tissue.lesion.xc)
        lesion["center_px"] = [round(float(row), 1), round(float(col), 1)]
    meta = {
        "geometry": geom.kind,
        "gain_db": round(acq.gain_db, 2),
        "dynamic_range_db": round(acq.dynamic_range_db, 2),
        "lesion": lesion,
    }
    return frame, mask, meta


def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, compress_level=1)


def _assign_patients(n_images: int, rng: np.random.Generator) -> tuple[list[int], list[int], list[str]]:
    """Labels (balanced), patient index per image (1-3 images per patient, one class per patient), split per patient."""
    per_patient: list[int] = []
    total = 0
    while total < n_images:
        k = int(min(rng.integers(1, 4), n_images - total))
        per_patient.append(k)
        total += k
    n_pat = len(per_patient)
    labels_pat = np.arange(n_pat) % len(CLASSES)
    rng.shuffle(labels_pat)
    # Stratified by class: each class's patients are split 70/15/15 on their own, so small datasets
    # still have every class in validation and test.
    split_of: dict[int, str] = {}
    for c in range(len(CLASSES)):
        members = [int(p) for p in rng.permutation(np.flatnonzero(labels_pat == c))]
        m = len(members)
        n_val = int(round(SPLIT_FRACTIONS["validation"] * m))
        n_test = int(round(SPLIT_FRACTIONS["test"] * m))
        if m >= 3:
            n_val, n_test = max(1, n_val), max(1, n_test)
        for rank, p in enumerate(members):
            split_of[p] = "validation" if rank < n_val else ("test" if rank < n_val + n_test else "train")
    # Tiny datasets: classes with < 3 patients put all in train; still give validation and test one
    # patient each (taken from train), so that every split file can be read.
    for split in ("validation", "test"):
        train_pat = [p for p in range(n_pat) if split_of[p] == "train"]
        if split not in split_of.values() and len(train_pat) > 1:
            split_of[train_pat[int(rng.integers(len(train_pat)))]] = split
    labels, patients, splits = [], [], []
    for p, k in enumerate(per_patient):
        for _ in range(k):
            labels.append(int(labels_pat[p]))
            patients.append(p)
            splits.append(split_of[p])
    return labels, patients, splits


def _image_job(args: tuple[Path, int, int, int, int]) -> tuple[str, dict]:
    """Render and save image ``i`` (runs in a worker process); returns its file name and metadata."""
    out_dir, seed, i, label, image_size = args
    # One generator per image: image i is the same whatever n_images or the worker count is.
    frame, mask, meta = render_image(np.random.default_rng([seed, 2, i]), label, image_size)
    name = f"synth_{i:05d}.png"
    _save_png(frame, out_dir / "images" / name)
    _save_png(mask.astype(np.uint8), out_dir / "masks" / name)  # UltraBench masks are {0, 1}
    return name, meta


def _map(fn, jobs: list, workers: int) -> list:
    """``[fn(j) for j in jobs]``, in order, over ``workers`` processes when that is worth it."""
    if workers <= 1 or len(jobs) < 2:
        return [fn(j) for j in jobs]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(pool.map(fn, jobs, chunksize=max(1, len(jobs) // (4 * workers))))


def write_ultrabench(out_dir: Path, n_images: int, image_size: int, seed: int, workers: int = 1) -> dict[str, int]:
    """Write the UltraBench-format image dataset; returns images per split."""
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    labels, patients, splits = _assign_patients(n_images, np.random.default_rng([seed, 1]))
    jobs = [(out_dir, seed, i, label, image_size) for i, label in enumerate(labels)]
    results = _map(_image_job, jobs, workers)
    records: dict[str, list[dict]] = {k: [] for k in SPLIT_FRACTIONS}
    for (name, meta), label, patient, split in zip(results, labels, patients, splits, strict=True):
        records[split].append(
            {
                "image": f"images/{name}",
                "scan_mask": f"masks/{name}",
                "label": label,
                "class": CLASSES[label],
                "patient": f"p{patient:04d}",
                **meta,
            }
        )
    for split, recs in records.items():
        atomic_write_text(out_dir / f"{split}.json", json.dumps(recs, indent=1))
    atomic_write_text(out_dir / "classes.json", json.dumps(list(CLASSES)))
    return {k: len(v) for k, v in records.items()}


# --------------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------------


def render_clip(
    rng: np.random.Generator,
    label: int,
    size: int,
    n_frames: int,
    frozen: tuple[int, int] | None = None,
    geometry: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """A drifting-probe clip ``(T, S, S)`` uint8, its scan mask ``(S, S)`` and metadata.

    The probe pans laterally over a tissue slab ``lateral_scale`` times wider than the view; speckle is
    computed once on the slab so it moves with the tissue, and a fraction of fresh speckle per frame
    models out-of-plane decorrelation. Frames in ``frozen = (start, stop)`` (exclusive of both ends)
    repeat frame ``start`` exactly (a still probe).
    """
    geom = random_geometry(rng, size, geometry)
    nz, nx = 2 * size, size
    lateral_scale = 1.6
    nx_total = int(nx * lateral_scale)
    tissue = random_tissue(rng, label, geom)
    if tissue.lesion is not None:
        tissue.lesion.xc = float(rng.uniform(0.35, 0.65))  # the pan passes over it
    acq = random_acquisition(rng, nz, tissue)
    echo, atten = tissue_maps(rng, tissue, geom, nz, nx_total, lateral_scale)
    psf = _psf(acq.sigma_z, acq.sigma_x)
    scat_std = np.sqrt(echo)
    base = signal.fftconvolve(rng.standard_normal(echo.shape, dtype=np.float32) * scat_std, psf, mode="same")
    ref = float(np.sqrt((psf**2).sum()))
    gain = attenuation_gain(atten, acq.tgc_nominal, acq.tgc_error)
    gain = gain.reshape(nz // 2, 2, nx_total).mean(axis=1)  # on the envelope grid (nz/2, nx_total)
    converter = ScanConverter(geom, nz // 2, nx)
    # Burned-in UI is static on screen: draw it once, then stamp it onto every frame.
    ui = draw_overlays(np.zeros((size, size), np.uint8), geom, rng, acq, [])
    ui_mask = ui > 0
    max_offset = nx_total - nx - 1
    start = rng.uniform(0, 0.2) * max_offset
    travel = rng.uniform(0.5, 0.8) * max_offset * (1 if rng.random() < 0.5 else -1)
    if travel < 0:
        start = max_offset - start
    decorrelation = 0.15  # share of fresh speckle per frame (out-of-plane motion, breathing)
    _, _, mask = geom.beam_coords()
    frames = np.empty((n_frames, size, size), dtype=np.uint8)
    for t in range(n_frames):
        if frozen is not None and frozen[0] < t < frozen[1]:
            frames[t] = frames[frozen[0]]
            continue
        # Probe position: linear pan plus a small hand tremor; it stands still during ``frozen``.
        tt = t if frozen is None or t < frozen[0] else t - (frozen[1] - frozen[0] - 1)
        span = max(1, n_frames - (0 if frozen is None else frozen[1] - frozen[0] - 1) - 1)
        offset = start + travel * tt / span + rng.normal(0, 0.3)
        offset = float(np.clip(offset, 0, max_offset))
        fresh = signal.fftconvolve(rng.standard_normal(echo.shape, dtype=np.float32) * scat_std, psf, mode="same")
        rf = (np.float32(np.sqrt(1 - decorrelation**2)) * base + np.float32(decorrelation) * fresh) / np.float32(ref)
        rf += np.float32(0.006) * rng.standard_normal(rf.shape, dtype=np.float32)
        beam = log_compress(envelope(rf) * gain, acq.gain_db, acq.dynamic_range_db)  # (nz/2, nx_total)
        frame = np.clip(np.rint(converter(beam, lateral_offset=offset) * 255.0), 0, 255).astype(np.uint8)
        frame[ui_mask] = ui[ui_mask]
        frames[t] = frame
    meta = {"geometry": geom.kind, "label": label, "class": CLASSES[label]}
    return frames, mask, meta


_CLIP_FORMATS = {
    # suffix: (codec, pixel format, encoder options)
    ".mp4": ("libx264", "yuv420p", {"crf": "18", "preset": "veryfast"}),
    ".webm": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"}),
    ".avi": ("mjpeg", "yuvj420p", {"q:v": "3"}),
}


def write_video(frames: np.ndarray, path: Path, fps: int = 15) -> None:
    """Encode gray frames ``(T, H, W)`` uint8 (even H, W) with PyAV; codec chosen by the suffix."""
    import av

    if path.suffix not in _CLIP_FORMATS:
        raise DataError(f"cannot write {path}: use one of {sorted(_CLIP_FORMATS)}")
    codec, pix_fmt, options = _CLIP_FORMATS[path.suffix]
    t, h, w = frames.shape
    # bitexact: no random segment UID or encoder-version string, so the same seed gives the same bytes.
    with av.open(str(path), mode="w", container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.options = dict(options)
        for i in range(t):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="gray")
            # Explicit conversion to the encoder's pixel format (full-range gray -> YUV).
            vf = vf.reformat(format=pix_fmt)
            vf.pts = i
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _clip_job(args: tuple[Path, int, int, int, int, int, str]) -> dict:
    """Render, encode and save clip ``i`` (runs in a worker process); returns its manifest entry."""
    out_dir, seed, i, size, n_frames, fps, suffix = args
    rng = np.random.default_rng([seed, 3, i])
    label = i % len(CLASSES)
    # Clip 0 keeps the probe still for a third of the clip (exact duplicate frames).
    frozen = (n_frames // 3, n_frames // 3 + max(2, n_frames // 3)) if i == 0 else None
    geometry = "fan" if i % 2 == 0 else "linear"
    frames, mask, meta = render_clip(rng, label, size, n_frames, frozen, geometry)
    path = out_dir / f"clip_{i:03d}{suffix}"
    write_video(frames, path, fps=fps)
    _save_png(mask.astype(np.uint8) * 255, out_dir / f"{path.stem}.scanmask.png")
    return {
        "video": path.name,
        "scan_mask": f"{path.stem}.scanmask.png",
        "frames": n_frames,
        "fps": fps,
        # Frames frozen[0]+1 .. frozen[1]-1 repeat frame frozen[0] exactly (before encoding).
        "frozen": list(frozen) if frozen else None,
        **meta,
    }


def write_clips(
    out_dir: Path, n_clips: int, size: int, seed: int, n_frames: int = 32, fps: int = 15, workers: int = 1
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    suffixes = [".mp4"] * n_clips
    if n_clips >= 3:
        suffixes[1], suffixes[2] = ".webm", ".avi"
    jobs = [(out_dir, seed, i, size, n_frames, fps, suffixes[i]) for i in range(n_clips)]
    manifest = _map(_clip_job, jobs, workers)
    atomic_write_text(out_dir / "clips.json", json.dumps(manifest, indent=1))
    return [out_dir / m["video"] for m in manifest]


# --------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------

# Fake but recognisable patient tags: privacy tests assert that none of them leaks into any output.
SYNTH_PATIENT: dict[str, str] = {
    "PatientName": "Synthetic^Jane^Usfast",
    "PatientID": "USFAST-PID-0042",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
}
_DICOM_FOV_CM = 4.0  # nominal field of view across a simulated canvas (sets PhysicalDeltaX/Y)


def _bmode_region(mask: np.ndarray, size: int, x_offset: int = 0):  # -> UltrasoundRegion
    """The B-mode region whose (inclusive) box bounds ``mask``."""
    from usjepa_fast.data.dicom_regions import UNITS_CM, UltrasoundRegion

    ys, xs = np.nonzero(mask)
    delta = _DICOM_FOV_CM / size
    return UltrasoundRegion(
        x0=int(xs.min()) + x_offset,
        y0=int(ys.min()),
        x1=int(xs.max()) + x_offset,
        y1=int(ys.max()),
        spatial_format=1,
        data_type=1,
        units_x=UNITS_CM,
        units_y=UNITS_CM,
        delta_x=delta,
        delta_y=delta,
    )


def _ecg_trace(width: int, height: int, beat_px: float) -> np.ndarray:
    """Row of the trace at each column: a PQRST complex every ``beat_px`` columns."""
    x = np.arange(width, dtype=np.float64)
    phase = (x % beat_px) / beat_px
    bump = lambda c, w, a: a * np.exp(-0.5 * ((phase - c) / w) ** 2)  # noqa: E731 - local shorthand
    level = bump(0.2, 0.03, 0.15) - bump(0.37, 0.01, 0.15) + bump(0.4, 0.012, 1.0) - bump(0.43, 0.01, 0.25)
    level += bump(0.65, 0.05, 0.3)
    return (height * 0.7 - level * height * 0.55).round().astype(int)


def _with_ecg_strip(frames: np.ndarray, strip: int) -> np.ndarray:
    """Gray cine ``(T, S, S)`` -> RGB ``(T, S + strip, S)`` with a green ECG sweep below the image."""
    t, h, w = frames.shape
    out = np.zeros((t, h + strip, w, 3), dtype=np.uint8)
    out[:, :h] = frames[..., None]
    rows = _ecg_trace(w, strip, beat_px=w / 2.3)
    cols = np.arange(w)
    for i in range(t):
        sweep = int(round((i + 1) / t * (w - 1)))
        keep = np.abs(cols - sweep) > 2  # the erase gap that runs with the sweep
        out[i, h + rows[keep], cols[keep]] = (40, 220, 60)
        out[i, h + strip - 2, :, :] = 90  # baseline rule in gray
    return out


def write_dicom_set(
    out_dir: str | Path, size: int = 128, seed: int = 0, n_frames: int = 16, fps: int = 20
) -> list[Path]:
    """Write three ultrasound DICOM objects (see the module docstring) with masks and ``dicom.json``."""
    from usjepa_fast.data.dicom_regions import UltrasoundRegion
    from usjepa_fast.data.dicom_write import write_us_dicom

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = []

    def save(name: str, frames: np.ndarray, mask: np.ndarray, regions: list, **kwargs) -> Path:
        path = write_us_dicom(
            out_dir / name, frames, regions=regions, patient=SYNTH_PATIENT, uid_entropy=f"{seed}/{name}", **kwargs
        )
        _save_png(mask.astype(np.uint8) * 255, out_dir / f"{path.stem}.scanmask.png")
        vector = kwargs.get("frame_time_vector_ms")
        step = kwargs.get("frame_time_ms")
        times = (
            np.cumsum([0.0, *vector[1:]]) / 1000 if vector is not None else np.arange(len(frames)) * (step or 0) / 1000
        )
        manifest.append(
            {
                "file": path.name,
                "scan_mask": f"{path.stem}.scanmask.png",
                "frames": int(len(frames)),
                "timestamps": [round(float(v), 6) for v in times],
                "compression": kwargs.get("compression", "none"),
                "regions": [[r.x0, r.y0, r.x1, r.y1, r.spatial_format, r.data_type] for r in regions],
            }
        )
        return path

    # 1. JPEG-baseline cine loop (fan) with an ECG strip: Frame Time + Cine Rate.
    frames, mask, _ = render_clip(np.random.default_rng([seed, 4, 0]), 1, size, n_frames, None, "fan")
    strip = max(16, size // 5)
    ecg = UltrasoundRegion(0, size, size - 1, size + strip - 1, spatial_format=4, data_type=0x000A, units_x=4)
    full_mask = np.zeros((size + strip, size), dtype=bool)
    full_mask[:size] = mask
    paths = [
        save(
            "cine_000.dcm",
            _with_ecg_strip(frames, strip),
            full_mask,
            [_bmode_region(mask, size), ecg],
            compression="jpeg",
            frame_time_ms=1000.0 / fps,
            cine_rate=fps,
        )
    ]
    # 2. Uncompressed MONOCHROME2 cine loop (linear), variable frame timing, no file extension.
    rng = np.random.default_rng([seed, 4, 1])
    frames, mask, _ = render_clip(rng, 2, size, n_frames, None, "linear")
    vector = [0.0, *np.round(rng.uniform(0.8, 1.2, n_frames - 1) * 1000.0 / fps, 1).tolist()]
    paths.append(save("IM_0001", frames, mask, [_bmode_region(mask, size)], frame_time_vector_ms=vector))
    # 3. Single-frame RGB dual view: two B-mode panes side by side, a coloured logo outside both.
    rng = np.random.default_rng([seed, 4, 2])
    (left, lmask, _), (right, rmask, _) = render_image(rng, 0, size, "fan"), render_image(rng, 3, size, "linear")
    dual = np.repeat(np.concatenate([left, right], axis=1)[..., None], 3, axis=2)
    dual[1 : 1 + size // 16, 1 : 1 + size // 8] = (230, 160, 20)  # vendor logo, amber
    dual_mask = np.concatenate([lmask, rmask], axis=1)
    regions = [_bmode_region(lmask, size), _bmode_region(rmask, size, x_offset=size)]
    paths.append(save("dual_000.dcm", dual[None], dual_mask, regions))
    atomic_write_text(out_dir / "dicom.json", json.dumps(manifest, indent=1))
    return paths


def synthesize(
    out_dir: str | Path,
    n_images: int = 240,
    n_clips: int = 8,
    image_size: int = 256,
    seed: int = 0,
    clip_frames: int = 32,
    clip_size: int | None = None,
    workers: int = 1,
    dicom: bool = False,
) -> SynthSummary:
    """Write ``out_dir/ultrabench/`` (UltraBench format) and ``out_dir/clips/`` (drifting-probe videos),
    and with ``dicom=True`` ``out_dir/dicom/`` (:func:`write_dicom_set`, clip size and frame count).

    Deterministic for a given ``seed`` (whatever ``workers``, the number of processes; 0 = one per
    CPU). ``image_size`` must be even (yuv420p video needs even sides).
    """
    if n_images < 0 or n_clips < 0:
        raise DataError(f"n_images={n_images} and n_clips={n_clips} must be >= 0")
    if image_size < 64 or image_size % 2:
        raise DataError(f"image_size={image_size} must be an even number >= 64")
    clip_size = clip_size or image_size
    if clip_size < 64 or clip_size % 2:
        raise DataError(f"clip_size={clip_size} must be an even number >= 64")
    if clip_frames < 4:
        raise DataError(f"clip_frames={clip_frames} must be >= 4")
    if workers <= 0:
        workers = os.cpu_count() or 1
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    ub, clips = out_dir / "ultrabench", out_dir / "clips"
    ub.mkdir(parents=True, exist_ok=True)
    clips.mkdir(parents=True, exist_ok=True)
    split_counts = (
        write_ultrabench(ub, n_images, image_size, seed, workers) if n_images else {k: 0 for k in SPLIT_FRACTIONS}
    )
    clip_files = write_clips(clips, n_clips, clip_size, seed, n_frames=clip_frames, workers=workers) if n_clips else []
    dicom_files = write_dicom_set(out_dir / "dicom", clip_size, seed, n_frames=clip_frames) if dicom else []
    counts = {c: 0 for c in CLASSES}
    for split in SPLIT_FRACTIONS:
        f = ub / f"{split}.json"
        if f.is_file():
            for rec in json.loads(f.read_text()):
                counts[rec["class"]] += 1
    summary = SynthSummary(
        out_dir=out_dir,
        ultrabench_dir=ub,
        clips_dir=clips,
        n_images=n_images,
        n_clips=n_clips,
        image_size=image_size,
        classes=CLASSES,
        class_counts=counts,
        split_counts=split_counts,
        clip_files=clip_files,
        seconds=time.perf_counter() - t0,
        dicom_files=dicom_files,
    )
    log.info("synthesized %d images and %d clips in %.1fs under %s", n_images, n_clips, summary.seconds, out_dir)
    return summary
