"""The DICOM *Sequence of Ultrasound Regions* (0018,6011) -> regions and a scan mask.

Each item of the sequence (US Region Calibration module, PS3.3 C.8.5.5) describes one rectangle of
the frame: its spatial format (2D image, M-mode, spectral Doppler, waveform, graphics), what the
pixels show (tissue, colour flow, Doppler, ECG, a grey bar ...) and the physical size of a pixel.
The scan region of a frame is the union of its **B-mode** rectangles: 2D spatial format with tissue
data. Doppler strips, M-mode sweeps, ECG/physiological traces and colour/grey bars are excluded.

Bounds (0018,6018)-(0018,601E) are *inclusive* pixel coordinates; boxes past the frame (seen in real
files) are clipped. This is pure numpy: the parsed items may come from any pydicom Dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

REGION_SOURCE = "dicom-regions"

# (0018,6012) Region Spatial Format
REGION_SPATIAL_FORMATS: dict[int, str] = {
    0x0000: "none",
    0x0001: "2D",
    0x0002: "M-mode",
    0x0003: "spectral",
    0x0004: "waveform",
    0x0005: "graphics",
}
# (0018,6014) Region Data Type
REGION_DATA_TYPES: dict[int, str] = {
    0x0000: "none",
    0x0001: "tissue",
    0x0002: "color flow",
    0x0003: "PW spectral Doppler",
    0x0004: "CW spectral Doppler",
    0x0005: "Doppler mean trace",
    0x0006: "Doppler mode trace",
    0x0007: "Doppler max trace",
    0x0008: "volume trace",
    0x000A: "ECG trace",
    0x000B: "pulse trace",
    0x000C: "phonocardiogram trace",
    0x000D: "gray bar",
    0x000E: "color bar",
    0x000F: "integrated backscatter",
    0x0010: "area trace",
    0x0011: "d(area)/dt",
    0x0012: "other physiological input",
}
SPATIAL_2D, DATA_TISSUE = 0x0001, 0x0001
# (0018,6024)/(0018,6026) Physical Units X/Y Direction: 3 = cm (the only length unit).
UNITS_CM = 0x0003


@dataclass(frozen=True)
class UltrasoundRegion:
    """One item of the Ultrasound Regions sequence."""

    x0: int  # (0018,6018) Region Location Min X0, inclusive
    y0: int  # (0018,601A) Region Location Min Y0, inclusive
    x1: int  # (0018,601C) Region Location Max X1, inclusive
    y1: int  # (0018,601E) Region Location Max Y1, inclusive
    spatial_format: int  # (0018,6012), see REGION_SPATIAL_FORMATS
    data_type: int  # (0018,6014), see REGION_DATA_TYPES
    flags: int = 0  # (0018,6016) bit 0: high priority; bits 1-2: scaling protection / Doppler scale type
    units_x: int = 0  # (0018,6024) Physical Units X Direction (3 = cm)
    units_y: int = 0  # (0018,6026)
    delta_x: float = 0.0  # (0018,602C) physical width of one pixel, in units_x
    delta_y: float = 0.0  # (0018,602E)

    @property
    def is_bmode(self) -> bool:
        """A 2D tissue (B-mode) image region: what the scan mask is made of."""
        return self.spatial_format == SPATIAL_2D and self.data_type == DATA_TISSUE

    @property
    def kind(self) -> str:
        return REGION_DATA_TYPES.get(self.data_type, f"unknown data type {self.data_type:#06x}")

    @property
    def pixel_spacing_mm(self) -> tuple[float, float] | None:
        """``(row spacing, column spacing)`` in mm when both directions are in cm, else None."""
        if self.units_x == UNITS_CM and self.units_y == UNITS_CM and self.delta_x > 0 and self.delta_y > 0:
            return (float(self.delta_y) * 10.0, float(self.delta_x) * 10.0)
        return None


def _int(item: Any, keyword: str, default: int = 0) -> int:
    value = item.get(keyword) if hasattr(item, "get") else None
    try:
        return int(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default


def _float(item: Any, keyword: str) -> float:
    value = item.get(keyword) if hasattr(item, "get") else None
    try:
        v = float(value) if value is not None and value != "" else 0.0
    except (TypeError, ValueError):
        return 0.0
    return v if np.isfinite(v) else 0.0


def parse_regions(sequence: Iterable[Any] | None) -> tuple[UltrasoundRegion, ...]:
    """Items of (0018,6011) (pydicom Datasets or dicts with the DICOM keywords) -> regions.

    Items without the four location elements are skipped (they cannot bound anything).
    """
    if not sequence:
        return ()
    out = []
    for item in sequence:
        keys = ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")
        if not all(item.get(k) is not None for k in keys):
            continue
        out.append(
            UltrasoundRegion(
                x0=_int(item, keys[0]),
                y0=_int(item, keys[1]),
                x1=_int(item, keys[2]),
                y1=_int(item, keys[3]),
                spatial_format=_int(item, "RegionSpatialFormat"),
                data_type=_int(item, "RegionDataType"),
                flags=_int(item, "RegionFlags"),
                units_x=_int(item, "PhysicalUnitsXDirection"),
                units_y=_int(item, "PhysicalUnitsYDirection"),
                delta_x=_float(item, "PhysicalDeltaX"),
                delta_y=_float(item, "PhysicalDeltaY"),
            )
        )
    return tuple(out)


def regions_mask(regions: Sequence[UltrasoundRegion], shape: tuple[int, int]) -> np.ndarray | None:
    """Union of the B-mode region boxes as a bool mask ``shape`` (clipped to the frame); None if empty."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    for r in regions:
        if not r.is_bmode:
            continue
        x0, x1 = max(0, min(r.x0, r.x1)), min(w - 1, max(r.x0, r.x1))
        y0, y1 = max(0, min(r.y0, r.y1)), min(h - 1, max(r.y0, r.y1))
        if x0 <= x1 and y0 <= y1:
            mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask if mask.any() else None


def pixel_spacing_mm(regions: Sequence[UltrasoundRegion]) -> list[float] | None:
    """``[row, column]`` pixel spacing (mm) of the first B-mode region calibrated in cm, else None."""
    for r in regions:
        if r.is_bmode and r.pixel_spacing_mm is not None:
            return [round(v, 6) for v in r.pixel_spacing_mm]
    return None
