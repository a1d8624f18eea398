"""Test-side DICOM writing with plain pydicom (independent of usjepa_fast.data.dicom_write) and look-ups
of the pydicom / pydicom-data test files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", minversion="3.0", reason="DICOM tests need the dicom extra (pydicom 3)")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid  # noqa: E402

# Recognisable patient values: none may appear in anything usjepa_fast.data.dicom returns, logs or raises.
PATIENT = {
    "PatientName": "Privacytest^Secretname^Q",
    "PatientID": "PID-SECRET-7731",
    "PatientBirthDate": "19231231",
    "OtherPatientIDs": "OTHER-ID-5512",
    "PatientAddress": "12 Hidden Lane",
}
PATIENT_STRINGS = ("Privacytest", "Secretname", "PID-SECRET-7731", "19231231", "OTHER-ID-5512", "Hidden Lane")


def pydicom_file(name: str) -> Path:
    """A file shipped by pydicom or pydicom-data (never downloaded); skip when it is not installed."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} needs the pydicom-data package (dev extra)")
    return Path(path)


def region(x0, y0, x1, y1, spatial_format=1, data_type=1, delta=0.03) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = spatial_format, data_type, 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = 3
    item.PhysicalDeltaX = item.PhysicalDeltaY = delta
    return item


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    jpeg: bool = False,
    regions: list[Dataset] | None = None,
    patient: bool = True,
    transfer_syntax: str | None = None,
    bot: bool = True,
    **tags,
) -> Path:
    """``pixels``: (H, W) / (T, H, W) gray or (..., 3) RGB; ``jpeg`` encodes frames with Pillow (4:2:2)
    and encapsulates them with (``bot``) or without a Basic Offset Table."""
    ds = Dataset()
    if patient:
        for k, v in PATIENT.items():
            setattr(ds, k, v)
    multi = pixels is not None and (pixels.ndim == 4 or (pixels.ndim == 3 and pixels.shape[-1] != 3))
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1" if multi else "1.2.840.10008.5.1.4.1.1.6.1"
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    ds.Modality = "US"
    if regions:
        ds.SequenceOfUltrasoundRegions = Sequence(regions)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if pixels is not None and not jpeg:
        bits = bits_stored or pixels.dtype.itemsize * 8
        ds.set_pixel_data(pixels, photometric, bits, generate_instance_uid=False)
    elif pixels is not None:
        from PIL import Image

        frames = pixels if multi else pixels[None]
        if frames.ndim == 3:
            frames = np.repeat(frames[..., None], 3, axis=3)
        encoded = []
        for frame in frames:
            buf = io.BytesIO()
            Image.fromarray(frame, mode="RGB").save(buf, format="JPEG", quality=92, subsampling=1)
            encoded.append(buf.getvalue())
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
        ds.Rows, ds.Columns = frames.shape[1:3]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        if multi:
            ds.NumberOfFrames = len(frames)
        ds.PixelData = encapsulate(encoded, has_bot=bot)
        ds["PixelData"].VR = "OB"
    if transfer_syntax:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def cine(n: int = 6, h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth moving gray frames (T, H, W) uint8 that survive JPEG well."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(0, 2 * np.pi)
    return np.stack([(127 + 100 * np.sin(xx / 7.0 + yy / 11.0 + base + 0.4 * t)).astype(np.uint8) for t in range(n)])
