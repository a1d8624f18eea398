"""Write ultrasound DICOM (US Image / US Multi-frame Image Storage) from numpy frames.

Used by the simulator (``usfast synth --dicom``) so that tests, the demo and users have DICOM cine
loops written the way scanners write them: uncompressed or JPEG baseline (frames encoded one by one
with Pillow at 4:2:2 and encapsulated with pydicom, YBR_FULL_422, the usual cine export), a Sequence
of Ultrasound Regions, Frame Time / Frame Time Vector / Cine Rate. Output is deterministic: the UIDs
come from ``uid_entropy`` and nothing depends on the clock.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from usjepa_fast.data.dicom_header import INSTALL_HINT, dicom_available
from usjepa_fast.data.dicom_regions import UltrasoundRegion
from usjepa_fast.errors import DataError

_US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
_US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"  # Ultrasound Multi-frame Image Storage
_FIXED_DATE, _FIXED_TIME = "20240101", "120000"  # no clock: same input, same bytes


def region_item(region: UltrasoundRegion):  # -> pydicom Dataset
    """One (0018,6011) item for ``region``."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RegionSpatialFormat = int(region.spatial_format)
    item.RegionDataType = int(region.data_type)
    item.RegionFlags = int(region.flags)
    item.RegionLocationMinX0 = int(region.x0)
    item.RegionLocationMinY0 = int(region.y0)
    item.RegionLocationMaxX1 = int(region.x1)
    item.RegionLocationMaxY1 = int(region.y1)
    item.PhysicalUnitsXDirection = int(region.units_x)
    item.PhysicalUnitsYDirection = int(region.units_y)
    item.PhysicalDeltaX = float(region.delta_x)
    item.PhysicalDeltaY = float(region.delta_y)
    return item


def _jpeg_frames(frames: np.ndarray, quality: int) -> list[bytes]:
    from PIL import Image

    out = []
    for frame in frames:
        buf = io.BytesIO()
        # subsampling=1 is 4:2:2 (h2v1), what YBR_FULL_422 declares; Pillow writes a JFIF (YCbCr) stream.
        Image.fromarray(np.ascontiguousarray(frame), mode="RGB").save(
            buf, format="JPEG", quality=quality, subsampling=1, optimize=False
        )
        out.append(buf.getvalue())
    return out


def write_us_dicom(
    path: str | Path,
    frames: np.ndarray,
    *,
    compression: str = "none",
    regions: Sequence[UltrasoundRegion] = (),
    frame_time_ms: float | None = None,
    frame_time_vector_ms: Sequence[float] | None = None,
    cine_rate: float | None = None,
    patient: Mapping[str, str] | None = None,
    uid_entropy: str = "",
    jpeg_quality: int = 90,
) -> Path:
    """Write ``frames`` ``(T, H, W)`` gray or ``(T, H, W, 3)`` RGB uint8 as one ultrasound DICOM object.

    T > 1 gives US Multi-frame Image Storage (a cine loop), T == 1 US Image Storage. ``compression``:
    ``"none"`` (Explicit VR Little Endian; gray -> MONOCHROME2, RGB -> RGB) or ``"jpeg"`` (JPEG
    baseline, YBR_FULL_422; gray frames are replicated to RGB first, as scanners do). ``patient``:
    DICOM keyword -> value (e.g. ``PatientName``); ``uid_entropy`` seeds the Study/Series/SOP UIDs.
    """
    if not dicom_available():
        raise DataError(f"writing DICOM {path} needs pydicom 3; {INSTALL_HINT}")
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[3] != 3):
        raise DataError(f"cannot write {path}: frames must be (T, H, W) or (T, H, W, 3) uint8, got {frames.shape}")
    if compression not in ("none", "jpeg"):
        raise DataError(f"cannot write {path}: compression={compression!r}; use 'none' or 'jpeg'")
    n = frames.shape[0]
    if frame_time_vector_ms is not None and len(frame_time_vector_ms) != n:
        raise DataError(
            f"cannot write {path}: frame_time_vector_ms has {len(frame_time_vector_ms)} values for {n} frames"
        )
    multiframe = n > 1
    sop_class = _US_MULTIFRAME if multiframe else _US_IMAGE

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=["usfast", uid_entropy, kind])

    ds = Dataset()
    for keyword, value in (patient or {}).items():
        setattr(ds, keyword, value)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid("sop")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.Modality, ds.Manufacturer = "US", "usfast synthetic"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = _FIXED_DATE
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = _FIXED_TIME
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "", "0001"]
    ds.BurnedInAnnotation = "NO"  # the burned-in text is scanner settings, no patient data
    if regions:
        ds.SequenceOfUltrasoundRegions = DicomSequence([region_item(r) for r in regions])
    if multiframe:
        if frame_time_vector_ms is not None:
            ds.FrameTimeVector = [float(v) for v in frame_time_vector_ms]
            ds.FrameIncrementPointer = 0x00181065
        elif frame_time_ms is not None:
            ds.FrameTime = float(frame_time_ms)
            ds.FrameIncrementPointer = 0x00181063
        if cine_rate is not None:
            ds.CineRate = int(round(cine_rate))

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if compression == "none":
        photometric = "MONOCHROME2" if frames.ndim == 3 else "RGB"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.set_pixel_data(frames if multiframe else frames[0], photometric, 8, generate_instance_uid=False)
    else:
        rgb = frames if frames.ndim == 4 else np.repeat(frames[..., None], 3, axis=3)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
        ds.Rows, ds.Columns = int(rgb.shape[1]), int(rgb.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        if multiframe:
            ds.NumberOfFrames = n
        ds.PixelData = encapsulate(_jpeg_frames(rgb, jpeg_quality))
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path
