"""DICOM header: detection, the allow-listed header (:class:`DicomInfo`), frame timing, integrity
checks, the scan region from the Ultrasound Regions and the privacy-safe metadata.

Nothing here decodes pixels (that is :mod:`usjepa_fast.data.dicom`, which re-exports this API).

Privacy by construction: the header is read with an allow-list of tags (``_HEADER_TAGS``); patient
name, ID, birth date and every other identifying element are skipped by the parser and never held in
memory, so they cannot reach a return value, a log line or an error message. :func:`safe_metadata`
is the only header content usfast writes anywhere.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from usjepa_fast.data.dicom_regions import (
    REGION_SOURCE,
    UltrasoundRegion,
    parse_regions,
    pixel_spacing_mm,
    regions_mask,
)
from usjepa_fast.errors import DataError

DICOM_EXTENSIONS: frozenset[str] = frozenset({".dcm", ".dicom"})
INSTALL_HINT = "pip install 'usjepa-fast[dicom]'"

# The only header elements usfast parses (plus the file meta group, which holds no patient data).
_HEADER_TAGS: tuple[str, ...] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "FrameIncrementPointer",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "FrameTime",
    "FrameTimeVector",
    "CineRate",
    "RecommendedDisplayFrameRate",
    "SequenceOfUltrasoundRegions",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
)
_PIXEL_DATA, _FLOAT_PIXEL_DATA, _DOUBLE_PIXEL_DATA = 0x7FE00010, 0x7FE00008, 0x7FE00009
_GRAY = ("MONOCHROME1", "MONOCHROME2")
_SUPPORTED_PHOTOMETRIC = (*_GRAY, "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", "YBR_ICT", "YBR_RCT")
_FRAME_TIME, _FRAME_TIME_VECTOR = 0x00181063, 0x00181065


def is_dicom(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` file, or any other file with ``DICM`` at byte 128 (reads 132 bytes).

    ``DICOMDIR`` (a media directory index, no pixels) is not media.
    """
    path = Path(path)
    if path.name.upper() == "DICOMDIR":
        return False
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dicom_available() -> bool:
    """True when pydicom (3.x) imports."""
    try:
        import pydicom  # noqa: F401
        from pydicom.pixels import get_decoder  # noqa: F401 - pydicom >= 3
    except Exception:  # noqa: BLE001 - any import failure means unavailable
        return False
    return True


@dataclass(frozen=True)
class DicomInfo:
    """What the header says about one DICOM object (no patient data: see the module docstring)."""

    path: Path
    sop_instance_uid: str
    sop_class: str  # SOP Class name, e.g. "Ultrasound Multi-frame Image Storage"
    modality: str
    transfer_syntax_uid: str
    transfer_syntax: str  # its name, e.g. "JPEG Baseline (Process 1)"
    num_frames: int
    rows: int
    columns: int
    photometric: str
    bits_stored: int
    timestamps: tuple[float, ...]  # seconds since frame 0, one per frame, in display (= stored) order
    fps: float  # nominal frame rate; 0.0 when the header has no timing
    timing: str | None  # the attribute the timestamps come from (None: index = seconds, like PyAV)
    regions: tuple[UltrasoundRegion, ...]
    # Decoding state (not part of equality or repr): the allow-listed header, pixel value offset, VR.
    _header: Any = field(default=None, repr=False, compare=False)
    _pixel_offset: int = field(default=0, repr=False, compare=False)
    _pixel_vr: str | None = field(default=None, repr=False, compare=False)
    _extended_offsets: tuple[list[int], list[int]] | None = field(default=None, repr=False, compare=False)

    @property
    def kind(self) -> str:
        """``"video"`` for multi-frame objects (cine loops), else ``"image"``."""
        return "video" if self.num_frames > 1 else "image"


def _require_pydicom(path: Path) -> None:
    if not dicom_available():
        raise DataError(f"reading DICOM {path} needs pydicom 3 and its JPEG plugins; {INSTALL_HINT}")


def _why(exc: BaseException) -> str:
    """Exception class and its message folded onto one short line (the header holds no patient data)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = text if len(text) <= 240 else text[:237] + "..."
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _read_header(f, path: Path):  # -> pydicom Dataset (allow-listed tags), transfer syntax UID
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    f.seek(128)
    has_magic = f.read(4) == b"DICM"
    f.seek(0)
    try:
        ds = dcmread(f, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS), force=not has_magic)
    except InvalidDicomError:
        raise DataError(f"{path} is not a DICOM file (no DICM preamble); remove it or fix its extension") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for corrupt headers
        raise DataError(
            f"DICOM {path} has a truncated or corrupt header ({_why(exc)}); re-export or remove it"
        ) from None
    if "Rows" not in ds or "Columns" not in ds:
        if not has_magic:
            raise DataError(f"{path} is not a DICOM image; remove it or fix its extension")
        raise DataError(
            f"DICOM {path} has no image pixel module (truncated, or not an image: a report or waveform?); "
            "re-export or remove it"
        )
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not ts:  # no file meta (pre-3.0 style file): the encoding pydicom detected tells the syntax
        implicit, little = ds.original_encoding
        ts = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    return ds, UID(str(ts))


def _locate_pixels(f, path: Path, ts, file_size: int) -> tuple[int, str | None, int]:
    """After the header: check the pixel data element; returns (value offset, VR, value length)."""
    endian = "<" if ts.is_little_endian else ">"
    raw = f.read(8)
    if len(raw) < 8:
        raise DataError(f"DICOM {path} has no pixel data (a report, waveform or directory?); remove it")
    group, elem = struct.unpack(f"{endian}HH", raw[:4])
    tag = group << 16 | elem
    if tag in (_FLOAT_PIXEL_DATA, _DOUBLE_PIXEL_DATA):
        raise DataError(f"DICOM {path} holds float pixel data, which usfast does not read; export integer pixels")
    if tag != _PIXEL_DATA:
        raise DataError(f"DICOM {path} has no pixel data (a report, waveform or directory?); remove it")
    # Trust the bytes over the declared syntax: some writers declare explicit VR and write implicit
    # (pydicom itself switches with a warning); an explicit VR is two upper-case letters.
    if not (raw[4:6].isalpha() and raw[4:6].isupper()):
        vr, length = None, struct.unpack(f"{endian}L", raw[4:8])[0]
    else:
        vr = raw[4:6].decode("ascii", "replace")
        tail = f.read(4)
        if len(tail) < 4:
            raise DataError(f"DICOM {path} is truncated inside the pixel data header; re-export it")
        length = struct.unpack(f"{endian}L", tail)[0]
    return f.tell(), vr, length


def _check_encapsulated(
    f, path: Path, offset: int, file_size: int, num_frames: int
) -> tuple[list[int], list[int]] | None:
    """Walk the fragment item headers (no data read): truncation shows as a missing delimiter.

    Returns an Extended Offset Table ``(offsets, lengths)`` when the file has no frame offsets of its
    own and one fragment per frame (the usual cine export): then pydicom reaches frame i with one seek
    instead of re-walking the fragments from the start for every sampled frame.
    """
    from pydicom.encaps import parse_basic_offsets, parse_fragments

    f.seek(offset)
    try:
        basic = parse_basic_offsets(f)
        n, starts = parse_fragments(f)
    except Exception as exc:  # noqa: BLE001 - malformed item structure
        raise DataError(f"DICOM {path} has corrupt compressed pixel data ({_why(exc)}); re-export it") from None
    end = None
    if n:
        f.seek(starts[-1] + 4)
        length_raw = f.read(4)
        if len(length_raw) == 4:
            end = starts[-1] + 8 + struct.unpack("<L", length_raw)[0]
    delimiter = b""
    if end is not None and end <= file_size:
        f.seek(end)
        delimiter = f.read(4)
    if n < num_frames or delimiter != b"\xfe\xff\xdd\xe0":
        raise DataError(
            f"DICOM {path} is truncated: compressed pixel data ends early ({n} fragments for {num_frames} frames); "
            "re-export or remove it"
        )
    if basic or n != num_frames:
        return None
    lengths = [b - a - 8 for a, b in zip(starts, [*starts[1:], end], strict=True)]
    return [a - starts[0] for a in starts], lengths


def _timing(ds, n: int) -> tuple[tuple[float, ...], float, str | None]:
    """Timestamps (s), nominal fps and the attribute used; the Frame Increment Pointer wins if it names one."""

    def positive(value) -> float | None:
        try:
            v = float(value)
        except (TypeError, ValueError):
            return None
        return v if v > 0 and np.isfinite(v) else None

    def from_vector() -> tuple[tuple[float, ...], float] | None:
        vec = ds.get("FrameTimeVector")
        if vec is None:
            return None
        values = [float(v) for v in (vec if isinstance(vec, Iterable) and not isinstance(vec, str) else [vec])]
        if len(values) == n - 1:  # some writers leave out frame 0's increment (which is 0 by definition)
            values = [0.0, *values]
        if len(values) != n or any(v < 0 or not np.isfinite(v) for v in values[1:]):
            return None
        t = np.cumsum([0.0, *values[1:]]) / 1000.0
        fps = (n - 1) / float(t[-1]) if n > 1 and t[-1] > 0 else 0.0
        return tuple(float(x) for x in t), fps

    def from_rate(fps: float | None) -> tuple[tuple[float, ...], float] | None:
        return (tuple(i / fps for i in range(n)), fps) if fps else None

    frame_time = positive(ds.get("FrameTime"))
    candidates = {
        "FrameTimeVector": from_vector,
        "FrameTime": lambda: from_rate(1000.0 / frame_time if frame_time else None),
        "CineRate": lambda: from_rate(positive(ds.get("CineRate"))),
        "RecommendedDisplayFrameRate": lambda: from_rate(positive(ds.get("RecommendedDisplayFrameRate"))),
    }
    order = list(candidates)
    pointer = ds.get("FrameIncrementPointer")
    if pointer is None or isinstance(pointer, str | bytes):
        pointers: list = []
    else:  # one tag, or a MultiValue of tags (e.g. NM's (0054,0010)\(0054,0020))
        pointers = list(pointer) if isinstance(pointer, Iterable) else [pointer]
    if _FRAME_TIME in pointers:
        order.insert(0, "FrameTime")
    elif _FRAME_TIME_VECTOR in pointers:
        order.insert(0, "FrameTimeVector")
    for name in order:
        try:
            got = candidates[name]()
        except (TypeError, ValueError):  # a malformed timing element: try the next source
            got = None
        if got is not None:
            return got[0], float(got[1]), name
    return tuple(float(i) for i in range(n)), 0.0, None


def read_dicom_info(path: str | Path) -> DicomInfo:
    """Header of a DICOM image or cine loop, and a pixel-data integrity check; decodes nothing.

    Raises :class:`DataError` naming the file when it is missing, empty, not DICOM, truncated, or has
    no (integer) pixel data.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"DICOM {path} does not exist; check the path")
    file_size = path.stat().st_size
    if file_size == 0:
        raise DataError(f"DICOM {path} is empty (0 bytes); re-export or remove it")
    _require_pydicom(path)
    from pydicom.pixels.utils import get_expected_length

    with path.open("rb") as f:
        ds, ts = _read_header(f, path)
        if ts.is_deflated:
            raise DataError(f"DICOM {path} uses the deflated transfer syntax; inflate it first (dcmconv +te)")
        offset, vr, length = _locate_pixels(f, path, ts, file_size)
        try:
            num_frames = max(1, int(ds.get("NumberOfFrames") or 1))
            rows, columns = int(ds.Rows), int(ds.Columns)
            photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
            bits_stored = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
        except (TypeError, ValueError) as exc:
            raise DataError(f"DICOM {path} has an invalid image pixel module ({_why(exc)}); re-export it") from None
        if rows < 1 or columns < 1:
            raise DataError(f"DICOM {path} has an empty image ({rows}x{columns}); remove it")
        if photometric not in _SUPPORTED_PHOTOMETRIC:
            raise DataError(
                f"DICOM {path} has photometric interpretation {photometric}, which usfast does not read "
                f"(supported: {', '.join(_SUPPORTED_PHOTOMETRIC)}); convert it"
            )
        extended = None
        if ts.is_encapsulated:
            extended = _check_encapsulated(f, path, offset, file_size, num_frames)
            if "ExtendedOffsetTable" in ds:
                extended = None  # the file's own table: pydicom reads it from the header
        else:
            try:
                expected = get_expected_length(ds, unit="bytes")
            except Exception as exc:  # noqa: BLE001 - missing/invalid group 0028 elements
                raise DataError(f"DICOM {path} has an invalid image pixel module ({_why(exc)}); re-export it") from None
            available = min(length, file_size - offset) if length != 0xFFFFFFFF else file_size - offset
            if available < expected:
                raise DataError(
                    f"DICOM {path} is truncated: {available} of {expected} pixel bytes; re-export or remove it"
                )
    timestamps, fps, timing = _timing(ds, num_frames)
    return DicomInfo(
        path=path,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        sop_class=_uid_name(ds.get("SOPClassUID")),
        modality=str(ds.get("Modality", "")),
        transfer_syntax_uid=str(ts),
        transfer_syntax=ts.name,
        num_frames=num_frames,
        rows=rows,
        columns=columns,
        photometric=photometric,
        bits_stored=bits_stored,
        timestamps=timestamps,
        fps=fps,
        timing=timing,
        regions=parse_regions(ds.get("SequenceOfUltrasoundRegions")),
        _header=ds,
        _pixel_offset=offset,
        _pixel_vr=vr,
        _extended_offsets=extended,
    )


def _uid_name(uid) -> str:
    from pydicom.uid import UID

    return UID(str(uid)).name if uid else ""


def dicom_kind(path: str | Path) -> str:
    """``"video"`` for a multi-frame object (a cine loop), ``"image"`` for a single frame (header only)."""
    return read_dicom_info(path).kind


def dicom_scan_region(src: str | Path | DicomInfo) -> tuple[np.ndarray | None, str | None]:
    """``(mask (H, W) bool, "dicom-regions")`` from the B-mode Ultrasound Regions, or ``(None, None)``
    when the header has none (the caller then detects the region from the pixels)."""
    info = src if isinstance(src, DicomInfo) else read_dicom_info(src)
    mask = regions_mask(info.regions, (info.rows, info.columns))
    if mask is None:
        return None, None
    return mask, REGION_SOURCE


def safe_metadata(src: Any) -> dict:
    """The header fields usfast may write anywhere: path-independent and non-identifying.

    ``src``: a :class:`DicomInfo`, a path, or a pydicom ``Dataset`` (only the allow-listed fields are
    read from it, whatever else it holds).
    """
    if isinstance(src, str | Path):
        src = read_dicom_info(src)
    if isinstance(src, DicomInfo):
        regions, rows, columns = src.regions, src.rows, src.columns
        uid, frames, modality, ts_name = src.sop_instance_uid, src.num_frames, src.modality, src.transfer_syntax
    else:  # a pydicom Dataset
        regions = parse_regions(src.get("SequenceOfUltrasoundRegions"))
        rows, columns = int(src.get("Rows") or 0), int(src.get("Columns") or 0)
        uid, modality = str(src.get("SOPInstanceUID", "")), str(src.get("Modality", ""))
        frames = max(1, int(src.get("NumberOfFrames") or 1))
        meta = getattr(src, "file_meta", None)
        ts = meta.get("TransferSyntaxUID") if meta is not None else None
        ts_name = _uid_name(ts)
    has_region = rows > 0 and columns > 0 and regions_mask(regions, (rows, columns)) is not None
    return {
        "sop_instance_uid": uid,
        "num_frames": frames,
        "rows": rows,
        "columns": columns,
        "region_source": REGION_SOURCE if has_region else None,
        "modality": modality,
        "transfer_syntax": ts_name,
        "pixel_spacing_mm": pixel_spacing_mm(regions),
    }
