"""DICOM ultrasound: header, per-frame pixels as grayscale, scan region from the Ultrasound Regions.

Clinical ultrasound is stored as DICOM: single-frame objects (images) and multi-frame US cine loops
(clips), uncompressed or JPEG / JPEG 2000 compressed, in MONOCHROME, RGB, YBR or palette colour, and
usually with a *Sequence of Ultrasound Regions* (0018,6011) giving each imaging region's box. This
module turns them into what the rest of the data layer uses: gray ``(H, W)`` arrays, :class:`Frame`
streams through the same :class:`~usjepa_fast.data.video.VideoDecoder` protocol as videos, and a
scan mask with the name of its source.

Design points:

- **Privacy by construction.** The header (:mod:`usjepa_fast.data.dicom_header`, re-exported here)
  is read with an allow-list of tags: patient name, ID, birth date and every other identifying
  element are skipped by the parser and never held in memory, so they cannot reach a return value, a
  log line or an error message. :func:`safe_metadata` is the only header content usfast writes.
- **Lazy decoding.** Pixels are decoded one frame at a time from the open file (pydicom 3's
  ``Decoder.iter_array`` on a file handle positioned at the pixel data), so a long cine loop is never
  materialised whole, and frames that sampling drops are never decoded.
- **Colour to gray without garbage.** The decoder reports the colour space it actually returned; YBR
  data gives its Y plane (exactly the ITU-R 601 luma that :func:`data.media.to_gray` computes from
  RGB, without a lossy YBR->RGB round trip), RGB its luma, palette colour goes through its LUT first,
  MONOCHROME1 is inverted.
- **Dual view.** Two B-mode panes side by side stay *one* frame with a two-region mask: the object's
  frame count stays the embedding row count, the panes are often the same instant (live dual / B +
  colour), and USrc masking already draws context and target blocks inside either region through
  ``valid_patches``. Splitting would change frame counts and aspect ratios for no gain.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from usjepa_fast.data.dicom_header import (
    _GRAY,
    DICOM_EXTENSIONS,
    INSTALL_HINT,
    DicomInfo,
    _why,
    dicom_available,
    dicom_kind,
    dicom_scan_region,
    is_dicom,
    read_dicom_info,
    safe_metadata,
)
from usjepa_fast.data.dicom_regions import (
    REGION_DATA_TYPES,
    REGION_SOURCE,
    REGION_SPATIAL_FORMATS,
    UltrasoundRegion,
    parse_regions,
    regions_mask,
)
from usjepa_fast.data.media import to_gray, to_uint8
from usjepa_fast.data.video import Frame, FrameSampling, VideoInfo, _Sampler
from usjepa_fast.errors import DataError

__all__ = [
    "DICOM_EXTENSIONS",
    "INSTALL_HINT",
    "REGION_DATA_TYPES",
    "REGION_SOURCE",
    "REGION_SPATIAL_FORMATS",
    "DicomDecoder",
    "DicomInfo",
    "UltrasoundRegion",
    "dicom_available",
    "dicom_kind",
    "dicom_scan_region",
    "is_dicom",
    "iter_dicom_gray",
    "parse_regions",
    "read_dicom_gray",
    "read_dicom_info",
    "regions_mask",
    "safe_metadata",
]

log = logging.getLogger("usfast")


def _decoder_for(info: DicomInfo):  # -> pydicom.pixels.decoders.base.Decoder
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    ts = UID(info.transfer_syntax_uid)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise DataError(
            f"DICOM {info.path} uses transfer syntax {ts.name} ({ts}), which pydicom cannot decode; "
            "transcode it (e.g. gdcmconv --raw) first"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise DataError(
            f"DICOM {info.path} uses transfer syntax {ts.name} and no decoder for it is installed ({missing}); "
            f"{INSTALL_HINT}"
        )
    return decoder


def _to_full_range(arr: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Stored values of ``bits`` bits -> uint8 (<= 8 bits) or uint16 (more), scaled to the full range."""
    out_bits = 8 if bits <= 8 else 16
    out_dtype = np.uint8 if out_bits == 8 else np.uint16
    vmax = (1 << bits) - 1
    if signed:
        values = np.clip(arr.astype(np.int64) + (1 << (bits - 1)), 0, vmax)
    else:
        if bits == out_bits and arr.dtype.itemsize * 8 == out_bits:
            return arr.astype(out_dtype, copy=False)  # the common case (8-bit US): no arithmetic
        values = arr.astype(np.int64) & vmax  # unused high bits may hold overlay garbage
    if bits == out_bits:
        return values.astype(out_dtype)
    top = (1 << out_bits) - 1
    # Exact rounding of v * top / vmax in integers (the max stored value maps to the max output).
    return ((values.astype(np.uint64) * top + vmax // 2) // vmax).astype(out_dtype)


class _GrayConverter:
    """Per-object colour -> gray mapping; the palette LUT is built once, not per frame."""

    def __init__(self, info: DicomInfo) -> None:
        self.info = info
        ds = info._header
        self.bits = info.bits_stored
        self.signed = int(ds.get("PixelRepresentation") or 0) == 1
        self._palette: np.ndarray | None = None

    def _palette_gray(self, dtype: np.dtype) -> np.ndarray:
        if self._palette is None:
            from pydicom.pixels import apply_color_lut

            bits = int(self.info._header.get("BitsAllocated") or 8)
            index = np.arange(1 << min(bits, 16), dtype=np.uint16 if bits > 8 else np.uint8)[None]
            try:
                rgb = apply_color_lut(index, self.info._header)  # (1, 2^bits, 3|4) uint8/uint16
            except Exception as exc:  # noqa: BLE001 - missing/invalid LUT elements
                raise DataError(
                    f"DICOM {self.info.path} is PALETTE COLOR without a valid palette ({_why(exc)}); re-export it"
                ) from None
            self._palette = to_gray(rgb[..., :3])[0]  # gray value per stored index
        return self._palette

    def __call__(self, arr: np.ndarray, photometric: str) -> np.ndarray:
        if photometric in _GRAY:
            gray = _to_full_range(arr, self.bits, self.signed)
            return np.iinfo(gray.dtype).max - gray if photometric == "MONOCHROME1" else gray
        if photometric == "PALETTE COLOR":
            lut = self._palette_gray(arr.dtype)
            return lut[np.clip(arr.astype(np.int64), 0, len(lut) - 1)]
        if photometric in ("YBR_FULL", "YBR_FULL_422", "YBR_ICT"):
            # Y of full-range YCbCr (and of ICT) is 0.299 R + 0.587 G + 0.114 B: the luma itself.
            return _to_full_range(arr[..., 0], self.bits, False)
        if photometric == "RGB":
            return to_gray(_to_full_range(arr[..., :3], self.bits, False))
        raise DataError(
            f"DICOM {self.info.path}: the decoder returned {photometric} pixels, which usfast cannot convert to "
            "gray; transcode the file (e.g. gdcmconv --raw)"
        )


def iter_dicom_gray(
    path: str | Path | DicomInfo, indices: Iterable[int] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame index, gray (H, W))`` decoding one frame at a time from the file.

    ``indices`` (ascending frame numbers) restricts decoding to those frames; ``None`` = all. Gray is
    uint8 for <= 8 bits stored, else uint16 scaled to the full 16-bit range. A file that breaks part
    way raises :class:`DataError` after the frames decoded so far.
    """
    info = path if isinstance(path, DicomInfo) else read_dicom_info(path)
    wanted = list(range(info.num_frames)) if indices is None else [int(i) for i in indices]
    bad = [i for i in wanted if not 0 <= i < info.num_frames]
    if bad:
        raise DataError(f"DICOM {info.path} has {info.num_frames} frames; frame {bad[0]} does not exist")
    if not wanted:
        return
    from pydicom.pixels import as_pixel_options
    from pydicom.uid import UID

    decoder = _decoder_for(info)
    convert = _GrayConverter(info)
    opts = as_pixel_options(info._header, transfer_syntax_uid=UID(info.transfer_syntax_uid), pixel_keyword="PixelData")
    if info._pixel_vr:
        opts["pixel_vr"] = info._pixel_vr
    if info._extended_offsets is not None:
        opts["extended_offsets"] = info._extended_offsets
    done = 0  # frames of ``wanted`` yielded so far
    plugins = _plugin_order(decoder)
    with info.path.open("rb") as f:
        for attempt, plugin in enumerate(plugins):
            remaining = wanted[done:]
            f.seek(info._pixel_offset)
            # indices=None lets pydicom stream encapsulated frames in one pass (no per-frame fragment search).
            every = remaining == list(range(info.num_frames))
            stream = decoder.iter_array(
                f, indices=None if every else remaining, raw=True, decoding_plugin=plugin, **opts
            )
            try:
                for arr, props in stream:
                    photometric = str(props.get("photometric_interpretation", info.photometric)).upper()
                    yield wanted[done], np.ascontiguousarray(convert(arr, photometric))
                    done += 1
                    if done == len(wanted):
                        return
                return
            except DataError:
                raise
            except Exception as exc:  # noqa: BLE001 - pydicom/plugins raise many types for bad streams
                if attempt + 1 < len(plugins):
                    log.debug("DICOM %s: plugin %s failed (%s); trying the others", info.path, plugin, _why(exc))
                    continue
                raise DataError(
                    f"DICOM {info.path} cannot be decoded at frame {wanted[done]} of {info.num_frames} "
                    f"({_why(exc)}); re-export or remove it"
                ) from None


def _plugin_order(decoder) -> list[str]:
    """Pillow (libjpeg-turbo, ~4x faster than pylibjpeg here) first for 8-bit JPEG, then pydicom's own
    order (``""`` = every available plugin in turn)."""
    from pydicom.uid import JPEGBaseline8Bit

    if JPEGBaseline8Bit == decoder.UID and "pillow" in decoder.available_plugins:
        return ["pillow", ""]
    return [""]


def read_dicom_gray(path: str | Path | DicomInfo, index: int = 0) -> np.ndarray:
    """One frame (default the first; the image of a single-frame object) as gray ``(H, W)``."""
    for _, gray in iter_dicom_gray(path, [index]):
        return gray
    raise DataError(f"DICOM {path} yielded no frame {index}; re-export it")  # pragma: no cover - guarded above


class DicomDecoder:
    """DICOM objects through the :class:`~usjepa_fast.data.video.VideoDecoder` protocol.

    Timestamps come from the header (Frame Time Vector / Frame Time / Cine Rate / Recommended Display
    Frame Rate), so :class:`FrameSampling` is applied before decoding and dropped frames cost nothing.
    A single-frame object is a one-frame clip at t = 0.
    """

    name = "dicom"

    def probe(self, path: str | Path) -> VideoInfo:
        info = read_dicom_info(path)
        codec = _uid_keyword(info.transfer_syntax_uid)
        return VideoInfo(num_frames=info.num_frames, fps=info.fps, width=info.columns, height=info.rows, codec=codec)

    def frames(self, path: str | Path, sampling: FrameSampling | None = None) -> Iterator[Frame]:
        info = read_dicom_info(path)
        sampling = sampling or FrameSampling()
        if sampling.fps is not None and info.timing is None and info.num_frames > 1:
            log.warning("DICOM %s has no frame timing; fps sampling treats frame i as t = i s", info.path)
        keep = _Sampler(sampling).select_indices(list(info.timestamps))
        for index, gray in iter_dicom_gray(info, keep):
            yield Frame(index=index, timestamp=info.timestamps[index], image=to_uint8(gray))


def _uid_keyword(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).keyword or uid
