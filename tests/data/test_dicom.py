"""DICOM reading: colour -> gray against independent references, Ultrasound Regions, cine timing and
sampling, lazy decoding, privacy and bad input (usjepa_fast.data.dicom)."""

from __future__ import annotations

import io
import json
import logging
import warnings

import numpy as np
import pytest
from dicom_helpers import PATIENT, PATIENT_STRINGS, cine, pydicom_file, region, write_dicom

from usjepa_fast.data import dicom as ud
from usjepa_fast.data.dicom_regions import UltrasoundRegion, regions_mask
from usjepa_fast.data.video import FrameSampling, VideoDecoder, _Sampler
from usjepa_fast.errors import DataError

pydicom = pytest.importorskip("pydicom", minversion="3.0", reason="DICOM tests need the dicom extra (pydicom 3)")

# ITU-R 601 luma in float32, the arithmetic data.media.to_gray defines (ties round alike)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def luma(rgb: np.ndarray, top: int = 255) -> np.ndarray:
    return np.clip(np.rint(rgb.astype(np.float32) @ LUMA), 0, top)


def raw_pixels(path) -> tuple:
    """The stored bytes of an uncompressed file, read by hand (no pydicom decoding)."""
    ds = pydicom.dcmread(path)
    return ds, bytes(ds.PixelData)


# ------------------------------------------------------------------------------------------------
# detection
# ------------------------------------------------------------------------------------------------


def test_is_dicom_by_extension_or_preamble(tmp_path) -> None:
    src = write_dicom(tmp_path / "a.dcm", cine(1)[0])
    bare = tmp_path / "IM000001"
    bare.write_bytes(src.read_bytes())
    (tmp_path / "notes.txt").write_text("DICM" + "x" * 200)
    (tmp_path / "DICOMDIR").write_bytes(src.read_bytes())
    (tmp_path / "UPPER.DCM").write_bytes(b"")
    assert ud.is_dicom(src) and ud.is_dicom(bare) and ud.is_dicom(tmp_path / "UPPER.DCM")
    assert not ud.is_dicom(tmp_path / "notes.txt")  # 'DICM' but not at byte 128
    assert not ud.is_dicom(tmp_path / "DICOMDIR")  # a directory index, not media
    assert not ud.is_dicom(tmp_path / "missing")
    assert ud.dicom_kind(bare) == "image"


def test_decoder_satisfies_the_video_protocol() -> None:
    assert isinstance(ud.DicomDecoder(), VideoDecoder) and ud.DicomDecoder.name == "dicom"


# ------------------------------------------------------------------------------------------------
# colour -> gray, each against a reference computed without usfast
# ------------------------------------------------------------------------------------------------


def test_rgb_is_luma_and_jpeg2000_matches_its_source() -> None:
    ds, raw = raw_pixels(pydicom_file("US1_UNCR.dcm"))
    assert ds.PhotometricInterpretation == "RGB" and ds.PlanarConfiguration == 0
    ref = luma(np.frombuffer(raw, np.uint8).reshape(ds.Rows, ds.Columns, 3))
    gray = ud.read_dicom_gray(pydicom_file("US1_UNCR.dcm"))
    assert gray.dtype == np.uint8 and gray.shape == (480, 640)
    np.testing.assert_array_equal(gray, ref)
    # lossless JPEG 2000 (YBR_RCT in the header) decodes to exactly the uncompressed original
    np.testing.assert_array_equal(ud.read_dicom_gray(pydicom_file("US1_J2KR.dcm")), gray)
    # lossy JPEG 2000 (YBR_ICT) equals its decoded-and-stored twin US1_UNCI
    ds_i, raw_i = raw_pixels(pydicom_file("US1_UNCI.dcm"))
    ref_i = luma(np.frombuffer(raw_i, np.uint8).reshape(ds_i.Rows, ds_i.Columns, 3))
    np.testing.assert_array_equal(ud.read_dicom_gray(pydicom_file("US1_UNCI.dcm")), ref_i)
    assert np.abs(ud.read_dicom_gray(pydicom_file("US1_J2KI.dcm")).astype(int) - ref_i).max() <= 1


def test_ybr_uncompressed_gives_the_y_plane() -> None:
    ds, raw = raw_pixels(pydicom_file("SC_ybr_full_uncompressed.dcm"))
    y = np.frombuffer(raw, np.uint8).reshape(ds.Rows, ds.Columns, 3)[..., 0]
    np.testing.assert_array_equal(ud.read_dicom_gray(pydicom_file("SC_ybr_full_uncompressed.dcm")), y)
    # YBR_FULL_422 stores Y0 Y1 Cb Cr per pair of pixels (PS3.3 C.7.6.3.1.2)
    ds, raw = raw_pixels(pydicom_file("SC_ybr_full_422_uncompressed.dcm"))
    y = np.frombuffer(raw, np.uint8).reshape(ds.Rows, ds.Columns // 2, 4)[..., :2].reshape(ds.Rows, ds.Columns)
    gray = ud.read_dicom_gray(pydicom_file("SC_ybr_full_422_uncompressed.dcm"))
    np.testing.assert_array_equal(gray, y)
    naive = np.frombuffer(raw, np.uint8)[: gray.size].reshape(gray.shape)  # the file read as raw bytes
    assert np.abs(naive.astype(int) - gray).mean() > 20


@pytest.mark.parametrize("name", ["SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm"])
def test_jpeg_ybr_matches_the_rgb_original(name) -> None:
    """dcmtk's JPEG (YBR_FULL / YBR_FULL_422) of SC_rgb.dcm: gray = luma of the uncompressed original."""
    ds, raw = raw_pixels(pydicom_file("SC_rgb.dcm"))
    ref = luma(np.frombuffer(raw, np.uint8).reshape(ds.Rows, ds.Columns, 3))
    gray = ud.read_dicom_gray(pydicom_file(name)).astype(int)
    assert np.abs(gray - ref).max() <= 2 and np.abs(gray - ref).mean() < 0.5


def test_misdeclared_vr_is_read_by_the_bytes() -> None:
    """SC_rgb_jpeg.dcm declares explicit VR but is written implicit (pydicom warns and switches)."""
    path = pydicom_file("SC_rgb_jpeg.dcm")
    with pytest.warns(UserWarning, match="implicit VR"):
        rgb = pydicom.dcmread(path).pixel_array  # pydicom's own YBR -> RGB
    with pytest.warns(UserWarning, match="implicit VR"):  # our header read sees the same
        gray = ud.read_dicom_gray(path).astype(int)
    assert gray.shape == rgb.shape[:2] and np.abs(gray - luma(rgb)).max() <= 2


def test_jpeg_cine_frames_match_an_independent_jpeg_decode() -> None:
    """examples_ybr_color.dcm (US cine, JPEG baseline YBR_FULL_422): each frame's gray is the Y plane of
    its codestream, decoded here by Pillow in YCbCr mode straight from the encapsulated fragments."""
    from PIL import Image
    from pydicom.encaps import generate_frames

    path = pydicom_file("examples_ybr_color.dcm")
    ds = pydicom.dcmread(path)
    codestreams = list(generate_frames(ds.PixelData, number_of_frames=ds.NumberOfFrames))
    frames = list(ud.DicomDecoder().frames(path, FrameSampling(every_k=7)))
    assert [f.index for f in frames] == [0, 7, 14, 21, 28]
    for f in frames:
        with Image.open(io.BytesIO(codestreams[f.index])) as im:
            im.draft("YCbCr", im.size)
            y = np.asarray(im.convert("YCbCr"))[..., 0].astype(int)
        assert np.abs(f.image.astype(int) - y).max() <= 1
        assert f.timestamp == pytest.approx(f.index * 0.033333)


def _expand_segmented(data: np.ndarray) -> np.ndarray:
    """PS3.3 C.7.9.2 segmented palette LUT: discrete (0) and linear (1) segments, written out here."""
    out: list[float] = []
    i = 0
    while i < len(data):
        op, n = int(data[i]), int(data[i + 1])
        if op == 0:
            out.extend(data[i + 2 : i + 2 + n].tolist())
            i += 2 + n
        elif op == 1:
            y0, y1 = out[-1], float(data[i + 2])
            out.extend((y0 + (y1 - y0) * (k + 1) / n) for k in range(n))
            i += 3
        else:
            raise AssertionError(f"segment opcode {op} not used by the test file")
    return np.rint(np.asarray(out)).astype(np.int64)


@pytest.mark.parametrize("name", ["gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"])
def test_palette_color_goes_through_the_segmented_lut(name) -> None:
    path = pydicom_file(name)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR" and ds.BitsStored == 16
    endian = ">" if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2" else "<"
    index = np.frombuffer(bytes(ds.PixelData), f"{endian}u2").reshape(ds.Rows, ds.Columns).astype(np.int64)
    luts = []
    for c in ("Red", "Green", "Blue"):
        lut = _expand_segmented(np.frombuffer(ds[f"Segmented{c}PaletteColorLookupTableData"].value, f"{endian}u2"))
        luts.append(lut[np.clip(index, 0, len(lut) - 1)])
    ref = luma(np.stack(luts, -1), top=65535)
    gray = ud.read_dicom_gray(path)
    assert gray.dtype == np.uint16  # 16-bit palette entries
    assert np.abs(gray.astype(int) - ref).max() <= 1
    assert np.abs((index >> 8) - (gray >> 8).astype(int)).mean() > 5  # the raw indices would be garbage


def test_palette_8bit_lut_and_its_regions() -> None:
    path = pydicom_file("OBXXXX1A.dcm")
    ds = pydicom.dcmread(path)
    index = np.frombuffer(bytes(ds.PixelData), np.uint8).reshape(ds.Rows, ds.Columns)
    channels = [np.frombuffer(ds[f"{c}PaletteColorLookupTableData"].value, "<u2") for c in ("Red", "Green", "Blue")]
    ref = luma(np.stack([ch[index] for ch in channels], -1), top=65535)
    np.testing.assert_array_equal(ud.read_dicom_gray(path), ref)
    # Region 1: B-mode 2D tissue (120,60)-(800,518), X1 one past the last column (clipped);
    # region 2: a waveform (ECG trace, data type 0x0A) strip (176,522)-(743,576): excluded.
    mask, source = ud.dicom_scan_region(path)
    assert source == "dicom-regions" and mask.shape == (600, 800)
    expected = np.zeros((600, 800), bool)
    expected[60:519, 120:800] = True
    np.testing.assert_array_equal(mask, expected)
    kinds = [r.kind for r in ud.read_dicom_info(path).regions]
    assert kinds == ["tissue", "ECG trace"]


def test_monochrome1_is_inverted_and_high_bit_depth_scaled(tmp_path) -> None:
    img = cine(1)[0]
    g1 = ud.read_dicom_gray(write_dicom(tmp_path / "m1.dcm", img, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(g1, 255 - img)
    v12 = (img.astype(np.uint16) * 16 + 7) & 0x0FFF  # 12 bits stored in 16 allocated
    g12 = ud.read_dicom_gray(write_dicom(tmp_path / "m12.dcm", v12, bits_stored=12))
    assert g12.dtype == np.uint16
    np.testing.assert_array_equal(g12, np.rint(v12.astype(np.float64) * 65535 / 4095).astype(np.uint16))
    g12i = ud.read_dicom_gray(write_dicom(tmp_path / "m12i.dcm", v12, photometric="MONOCHROME1", bits_stored=12))
    np.testing.assert_array_equal(g12i, 65535 - g12)
    # signed 16-bit (MR_small): shifted into the unsigned range
    ds, raw = raw_pixels(pydicom_file("MR_small.dcm"))
    signed = np.frombuffer(raw, "<i2").reshape(ds.Rows, ds.Columns)
    np.testing.assert_array_equal(ud.read_dicom_gray(pydicom_file("MR_small.dcm")), (signed.astype(int) + 32768))


# ------------------------------------------------------------------------------------------------
# Ultrasound Regions
# ------------------------------------------------------------------------------------------------


def test_aloka_dual_view_mask_is_the_two_bmode_boxes() -> None:
    """gdcm-US-ALOKA-16: two B-mode panes (32,24)-(335,415) and (336,24)-(639,415), inclusive, and a
    gray bar (data type 0x0D, spatial format 0). One frame, a two-region mask."""
    info = ud.read_dicom_info(pydicom_file("gdcm-US-ALOKA-16.dcm"))
    assert [(r.x0, r.y0, r.x1, r.y1, r.is_bmode) for r in info.regions] == [
        (32, 24, 335, 415, True),
        (336, 24, 639, 415, True),
        (32, 40, 63, 103, False),
    ]
    assert info.regions[2].kind == "gray bar"
    mask, source = ud.dicom_scan_region(info)
    expected = np.zeros((480, 640), bool)
    expected[24:416, 32:336] = True
    expected[24:416, 336:640] = True
    np.testing.assert_array_equal(mask, expected)
    assert source == "dicom-regions" and info.num_frames == 1 and info.kind == "image"
    assert ud.safe_metadata(info)["pixel_spacing_mm"] == pytest.approx([0.382653, 0.382653])


def test_regions_without_bmode_give_no_mask(tmp_path) -> None:
    img = cine(1)[0]
    doppler = region(0, 20, 47, 39, spatial_format=3, data_type=3)  # PW spectral Doppler strip
    mmode = region(0, 0, 47, 19, spatial_format=2, data_type=1)  # M-mode of tissue: not B-mode
    path = write_dicom(tmp_path / "d.dcm", img, regions=[doppler, mmode])
    assert ud.dicom_scan_region(path) == (None, None)
    assert ud.safe_metadata(path)["region_source"] is None
    assert ud.dicom_scan_region(write_dicom(tmp_path / "n.dcm", img)) == (None, None)


def test_regions_mask_clips_and_orders_bounds() -> None:
    regions = [
        UltrasoundRegion(10, 5, 2, 1, spatial_format=1, data_type=1),  # swapped corners
        UltrasoundRegion(30, 8, 99, 99, spatial_format=1, data_type=1),  # past the frame
        UltrasoundRegion(0, 0, 39, 11, spatial_format=1, data_type=2),  # colour flow: not tissue
        UltrasoundRegion(50, 50, 60, 60, spatial_format=1, data_type=1),  # wholly outside
    ]
    mask = regions_mask(regions, (12, 40))
    expected = np.zeros((12, 40), bool)
    expected[1:6, 2:11] = True
    expected[8:12, 30:40] = True
    np.testing.assert_array_equal(mask, expected)
    assert regions_mask(regions[2:], (12, 40)) is None


# ------------------------------------------------------------------------------------------------
# cine loops: timing, sampling, lazy decoding
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "timing", "fps", "times"),
    [
        ({"FrameTime": 40.0, "FrameIncrementPointer": 0x00181063}, "FrameTime", 25.0, [0, 0.04, 0.08]),
        (
            {"FrameTimeVector": [0, 30, 50, 30, 50, 30], "FrameIncrementPointer": 0x00181065},
            "FrameTimeVector",
            5 / 0.19,
            [0, 0.03, 0.08, 0.11, 0.16, 0.19],
        ),
        ({"FrameTimeVector": [30, 50, 30, 50, 30]}, "FrameTimeVector", 5 / 0.19, [0, 0.03, 0.08]),  # n-1 values
        ({"CineRate": 10}, "CineRate", 10.0, [0, 0.1, 0.2]),
        ({"RecommendedDisplayFrameRate": 50}, "RecommendedDisplayFrameRate", 50.0, [0, 0.02, 0.04]),
        # the Frame Increment Pointer names the vector: it wins over Frame Time
        (
            {"FrameTime": 40.0, "FrameTimeVector": [0, 10, 10, 10, 10, 10], "FrameIncrementPointer": 0x00181065},
            "FrameTimeVector",
            100.0,
            [0, 0.01, 0.02],
        ),
        ({"FrameTime": 0.0}, None, 0.0, [0, 1, 2]),  # no usable timing: index = seconds, like PyAV
    ],
)
def test_cine_timing(tmp_path, tags, timing, fps, times) -> None:
    path = write_dicom(tmp_path / "c.dcm", cine(6), **tags)
    info = ud.read_dicom_info(path)
    assert (info.kind, info.num_frames, info.timing) == ("video", 6, timing)
    assert info.fps == pytest.approx(fps)
    assert info.timestamps[: len(times)] == pytest.approx(times)
    probe = ud.DicomDecoder().probe(path)
    assert (probe.num_frames, probe.width, probe.height, probe.codec) == (6, 48, 40, "ExplicitVRLittleEndian")
    assert probe.fps == pytest.approx(fps)


@pytest.mark.parametrize("jpeg", [False, True])
def test_cine_frames_and_sampling(tmp_path, jpeg, monkeypatch) -> None:
    frames = cine(12, seed=3)
    vector = [0, 40, 40, 80, 40, 40, 40, 120, 40, 40, 40, 40]  # variable rate: fps sampling is by time
    path = write_dicom(tmp_path / "c.dcm", frames, jpeg=jpeg, FrameTimeVector=vector, regions=[region(4, 4, 43, 35)])
    decoded = list(ud.DicomDecoder().frames(path))
    assert [f.index for f in decoded] == list(range(12))
    assert [f.timestamp for f in decoded] == pytest.approx(np.cumsum(vector) / 1000)
    for f in decoded:
        assert f.image.dtype == np.uint8 and f.image.shape == (40, 48)
        err = np.abs(f.image.astype(int) - frames[f.index])
        assert (err.max() == 0) if not jpeg else (err.mean() < 1.5)
    timestamps = list(np.cumsum(vector) / 1000)
    calls = []
    original = ud._GrayConverter.__call__
    monkeypatch.setattr(ud._GrayConverter, "__call__", lambda self, a, pi: calls.append(1) or original(self, a, pi))
    for sampling in (
        FrameSampling(every_k=3),
        FrameSampling(fps=10.0),
        FrameSampling(fps=10.0, every_k=2, max_frames=2),
    ):
        calls.clear()
        got = [f.index for f in ud.DicomDecoder().frames(path, sampling)]
        assert got == _Sampler(sampling).select_indices(timestamps)
        assert len(calls) == len(got)  # only the kept frames are decoded
    assert [f.index for f in ud.DicomDecoder().frames(path, FrameSampling(fps=10.0))] == [0, 3, 4, 7, 10]
    assert [i for i, _ in ud.iter_dicom_gray(path, [2, 5])] == [2, 5]
    with pytest.raises(DataError, match="frame 12 does not exist"):
        list(ud.iter_dicom_gray(path, [12]))


def test_sampled_frames_without_an_offset_table(tmp_path) -> None:
    """No Basic Offset Table, one fragment per frame: the reader builds the frame offsets while it
    checks the fragments, and sampled frames equal the same frames of a full decode."""
    path = write_dicom(tmp_path / "nobot.dcm", cine(10, seed=5), jpeg=True, bot=False, CineRate=10)
    info = ud.read_dicom_info(path)
    offsets, lengths = info._extended_offsets
    assert len(offsets) == len(lengths) == 10 and offsets[0] == 0 and all(n > 0 for n in lengths)
    full = {f.index: f.image for f in ud.DicomDecoder().frames(path)}
    sampled = list(ud.DicomDecoder().frames(path, FrameSampling(every_k=4)))
    assert [f.index for f in sampled] == [0, 4, 8]
    for f in sampled:
        np.testing.assert_array_equal(f.image, full[f.index])
    assert ud.read_dicom_info(write_dicom(tmp_path / "bot.dcm", cine(3), jpeg=True))._extended_offsets is None


def test_single_frame_is_a_one_frame_clip(tmp_path) -> None:
    path = write_dicom(tmp_path / "s.dcm", cine(1)[0])
    (frame,) = ud.DicomDecoder().frames(path, FrameSampling(fps=5.0))
    assert (frame.index, frame.timestamp) == (0, 0.0)
    assert ud.DicomDecoder().probe(path).num_frames == 1


# ------------------------------------------------------------------------------------------------
# privacy
# ------------------------------------------------------------------------------------------------


def _bad_versions(tmp_path, good) -> list:
    data = good.read_bytes()
    truncated = tmp_path / "trunc.dcm"
    truncated.write_bytes(data[: len(data) - 500])
    no_pixels = write_dicom(tmp_path / "nopix.dcm", None, Rows=8, Columns=8)
    return [truncated, no_pixels]


def test_patient_tags_never_leave_the_reader(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    good = write_dicom(tmp_path / "p.dcm", cine(5), jpeg=True, FrameTime=50.0, regions=[region(2, 2, 40, 30)])
    assert all(s.encode() in good.read_bytes() for s in PATIENT_STRINGS[:3])  # the file does carry them
    texts = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = ud.read_dicom_info(good)
        texts += [repr(info), json.dumps(ud.safe_metadata(info)), json.dumps(ud.safe_metadata(good))]
        texts.append(repr(ud.DicomDecoder().probe(good)))
        texts += [repr((f.index, f.timestamp)) for f in ud.DicomDecoder().frames(good, FrameSampling(fps=2.0))]
        texts.append(repr(ud.dicom_scan_region(info)[1]))
        for bad in _bad_versions(tmp_path, good):
            with pytest.raises(DataError) as err:
                list(ud.DicomDecoder().frames(bad))
            texts.append(str(err.value))
    texts += [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    blob = "\n".join(texts)
    for secret in PATIENT_STRINGS:
        assert secret not in blob
    # privacy by construction: the parsed header never held the patient elements
    assert not any(k in info._header for k in PATIENT)
    assert set(ud.safe_metadata(info)) == {
        "sop_instance_uid",
        "num_frames",
        "rows",
        "columns",
        "region_source",
        "modality",
        "transfer_syntax",
        "pixel_spacing_mm",
    }


def test_safe_metadata_of_a_full_dataset_keeps_only_the_allow_list(tmp_path) -> None:
    ds = pydicom.dcmread(write_dicom(tmp_path / "p.dcm", cine(3), regions=[region(1, 1, 30, 30, delta=0.05)]))
    assert ds.PatientName == PATIENT["PatientName"]
    meta = ud.safe_metadata(ds)
    assert meta == {
        "sop_instance_uid": ds.SOPInstanceUID,
        "num_frames": 3,
        "rows": 40,
        "columns": 48,
        "region_source": "dicom-regions",
        "modality": "US",
        "transfer_syntax": "Explicit VR Little Endian",
        "pixel_spacing_mm": [0.5, 0.5],
    }


# ------------------------------------------------------------------------------------------------
# bad input: one-line DataError naming the file
# ------------------------------------------------------------------------------------------------


def _one_line_error(path, fn, match: str) -> str:
    with pytest.raises(DataError, match=match) as err:
        fn(path)
    text = str(err.value)
    assert "\n" not in text and str(path) in text
    return text


def test_bad_files_raise_one_line_data_errors(tmp_path) -> None:
    read = ud.read_dicom_info
    _one_line_error(tmp_path / "missing.dcm", read, "does not exist")
    (tmp_path / "empty.dcm").write_bytes(b"")
    _one_line_error(tmp_path / "empty.dcm", read, "empty")
    (tmp_path / "text.dcm").write_text("not a dicom file at all\n" * 20)
    _one_line_error(tmp_path / "text.dcm", read, "not a DICOM")
    _one_line_error(write_dicom(tmp_path / "nopix.dcm", None, Rows=8, Columns=8), read, "no pixel data")
    # native pixel data cut short
    good = write_dicom(tmp_path / "native.dcm", cine(4))
    (tmp_path / "native_cut.dcm").write_bytes(good.read_bytes()[:-100])
    _one_line_error(tmp_path / "native_cut.dcm", read, "truncated")
    # compressed cine cut inside its fragments, and cut inside the header
    jpeg = write_dicom(tmp_path / "jpeg.dcm", cine(4), jpeg=True)
    data = jpeg.read_bytes()
    (tmp_path / "jpeg_cut.dcm").write_bytes(data[: len(data) - 300])
    _one_line_error(tmp_path / "jpeg_cut.dcm", read, "truncated")
    (tmp_path / "head_cut.dcm").write_bytes(data[:200])
    _one_line_error(tmp_path / "head_cut.dcm", read, "truncated|corrupt|no pixel data")


def test_corrupt_frame_fails_after_the_good_ones(tmp_path) -> None:
    """A damaged codestream in frame 2 (item structure intact): frames 0-1 come out, then a DataError."""
    from pydicom.encaps import encapsulate, generate_frames

    path = write_dicom(tmp_path / "j.dcm", cine(4), jpeg=True)
    ds = pydicom.dcmread(path)
    streams = list(generate_frames(ds.PixelData, number_of_frames=4))
    streams[2] = b"\xff\xd8" + bytes(len(streams[2]) - 2)
    ds.PixelData = encapsulate(streams)
    ds.save_as(path)
    seen = []
    with pytest.raises(DataError, match=r"frame 2 of 4") as err:
        for f in ud.DicomDecoder().frames(path):
            seen.append(f.index)
    assert seen == [0, 1] and str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_decoder_plugins_name_the_extra(tmp_path, monkeypatch) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGBaseline8Bit

    path = write_dicom(tmp_path / "j.dcm", cine(3), jpeg=True)
    ud.read_dicom_info(path)  # the header is fine without any plugin
    monkeypatch.setattr(get_decoder(JPEGBaseline8Bit), "_available", {})
    text = _one_line_error(path, lambda p: list(ud.DicomDecoder().frames(p)), "no decoder")
    assert ud.INSTALL_HINT in text and "pip install 'usjepa-fast[dicom]'" in text


def test_transfer_syntax_pydicom_cannot_decode(tmp_path) -> None:
    # MPEG-4 AVC/H.264 High Profile: encapsulated, and pydicom has no decoder for it at all
    path = write_dicom(tmp_path / "h264.dcm", cine(3), jpeg=True, transfer_syntax="1.2.840.10008.1.2.4.102")
    _one_line_error(path, lambda p: list(ud.DicomDecoder().frames(p)), "pydicom cannot decode")


def test_without_pydicom_the_error_names_the_extra(tmp_path, monkeypatch) -> None:
    path = write_dicom(tmp_path / "a.dcm", cine(1)[0])
    from usjepa_fast.data import dicom_header

    monkeypatch.setattr(dicom_header, "dicom_available", lambda: False)
    assert ud.is_dicom(path)  # detection needs no pydicom
    text = _one_line_error(path, ud.read_dicom_info, "needs pydicom")
    assert ud.INSTALL_HINT in text
