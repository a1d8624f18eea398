"""The simulator's DICOM (``usfast synth --dicom``): regions match the scan masks, frames and timing
read back, same seed -> same bytes, fake patient tags stay inside the files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dicom_helpers import pydicom  # noqa: F401 - skips this module without pydicom 3
from typer.testing import CliRunner

from usjepa_fast.data import dicom as ud
from usjepa_fast.data import synth
from usjepa_fast.data.dicom_regions import UltrasoundRegion
from usjepa_fast.data.dicom_write import write_us_dicom
from usjepa_fast.data.media import read_image_gray, to_gray
from usjepa_fast.data.video import FrameSampling
from usjepa_fast.errors import DataError

SIZE, FRAMES, FPS = 64, 6, 20


@pytest.fixture(scope="module")
def dicom_dir(tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("synth_dicom")
    paths = synth.write_dicom_set(out, size=SIZE, seed=3, n_frames=FRAMES, fps=FPS)
    return out, paths


def test_three_objects_with_masks_and_manifest(dicom_dir) -> None:
    out, paths = dicom_dir
    assert [p.name for p in paths] == ["cine_000.dcm", "IM_0001", "dual_000.dcm"]
    assert all(ud.is_dicom(p) for p in paths)  # IM_0001 by its DICM preamble
    infos = [ud.read_dicom_info(p) for p in paths]
    assert [(i.kind, i.num_frames, i.photometric, i.timing) for i in infos] == [
        ("video", FRAMES, "YBR_FULL_422", "FrameTime"),
        ("video", FRAMES, "MONOCHROME2", "FrameTimeVector"),
        ("image", 1, "RGB", None),
    ]
    assert infos[0].transfer_syntax_uid == "1.2.840.10008.1.2.4.50" and infos[0].fps == pytest.approx(FPS)
    assert [i.sop_class for i in infos] == ["Ultrasound Multi-frame Image Storage"] * 2 + ["Ultrasound Image Storage"]
    manifest = json.loads((out / "dicom.json").read_text())
    for entry, info in zip(manifest, infos, strict=True):
        assert entry["frames"] == info.num_frames
        assert entry["timestamps"] == pytest.approx(info.timestamps)
        true_mask = read_image_gray(out / entry["scan_mask"]) > 0
        assert true_mask.shape == (info.rows, info.columns)
        mask, source = ud.dicom_scan_region(info)
        assert source == "dicom-regions"
        # every B-mode box is the bounding box of its part of the true mask; the union covers the mask
        assert not (true_mask & ~mask).any()
        for r in info.regions:
            if r.is_bmode:
                part = true_mask[:, r.x0 : r.x1 + 1]
                ys, xs = np.nonzero(part)
                assert (r.y0, r.y1, r.x0 + xs.min(), r.x0 + xs.max()) == (ys.min(), ys.max(), r.x0, r.x1)
    # the JPEG cine's ECG strip is its own region and stays outside the mask
    ecg = [r for r in infos[0].regions if not r.is_bmode]
    assert [r.kind for r in ecg] == ["ECG trace"]
    mask, _ = ud.dicom_scan_region(infos[0])
    assert not mask[ecg[0].y0 :].any()
    # the dual view is one frame whose mask has two panes
    dual_regions = [r for r in infos[2].regions if r.is_bmode]
    assert len(dual_regions) == 2 and dual_regions[0].x1 < dual_regions[1].x0
    assert ud.safe_metadata(infos[2])["pixel_spacing_mm"] == pytest.approx([40.0 / SIZE] * 2)


def test_pixels_read_back(dicom_dir) -> None:
    out, paths = dicom_dir
    # uncompressed cine: exactly the rendered frames (same generator stream as the writer)
    rng = np.random.default_rng([3, 4, 1])
    frames, _, _ = synth.render_clip(rng, 2, SIZE, FRAMES, None, "linear")
    decoded = list(ud.DicomDecoder().frames(paths[1]))
    np.testing.assert_array_equal(np.stack([f.image for f in decoded]), frames)
    # JPEG cine: the image part within JPEG error of the rendered frames, the strip has the trace
    frames, mask, _ = synth.render_clip(np.random.default_rng([3, 4, 0]), 1, SIZE, FRAMES, None, "fan")
    decoded = np.stack([f.image for f in ud.DicomDecoder().frames(paths[0])])
    assert decoded.shape == (FRAMES, SIZE + 16, SIZE)
    assert np.abs(decoded[:, :SIZE].astype(int) - frames).mean() < 2.0
    assert decoded[:, SIZE:].max() > 100  # green trace, as luma
    # dual view RGB: luma of what was written
    dual = pydicom.dcmread(paths[2]).pixel_array
    np.testing.assert_array_equal(ud.read_dicom_gray(paths[2]), to_gray(dual))
    assert dual.shape == (SIZE, 2 * SIZE, 3)


def test_same_seed_same_bytes(tmp_path, dicom_dir) -> None:
    out, paths = dicom_dir
    again = synth.write_dicom_set(tmp_path / "a", size=SIZE, seed=3, n_frames=FRAMES, fps=FPS)
    for a, b in zip(paths, again, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    other = synth.write_dicom_set(tmp_path / "b", size=SIZE, seed=4, n_frames=FRAMES, fps=FPS)
    assert other[0].read_bytes() != paths[0].read_bytes()
    assert ud.read_dicom_info(other[0]).sop_instance_uid != ud.read_dicom_info(paths[0]).sop_instance_uid


def test_patient_tags_are_in_the_files_but_not_in_what_usfast_reads(dicom_dir) -> None:
    _, paths = dicom_dir
    secrets = [synth.SYNTH_PATIENT[k] for k in ("PatientName", "PatientID", "PatientBirthDate")]
    for path in paths:
        data = path.read_bytes()
        assert all(s.encode() in data for s in secrets)
        info = ud.read_dicom_info(path)
        frames = list(ud.DicomDecoder().frames(path, FrameSampling(max_frames=2)))
        blob = repr(info) + json.dumps(ud.safe_metadata(info)) + repr([(f.index, f.timestamp) for f in frames])
        blob += json.dumps(ud.safe_metadata(pydicom.dcmread(path)))
        assert not any(s in blob for s in secrets)
        assert "Jane" not in blob and "USFAST-PID" not in blob


def test_writer_rejects_bad_frames(tmp_path) -> None:
    with pytest.raises(DataError, match="uint8"):
        write_us_dicom(tmp_path / "x.dcm", np.zeros((2, 8, 8), np.float32))
    with pytest.raises(DataError, match="compression"):
        write_us_dicom(tmp_path / "x.dcm", np.zeros((2, 8, 8), np.uint8), compression="rle")
    with pytest.raises(DataError, match="frame_time_vector_ms"):
        write_us_dicom(tmp_path / "x.dcm", np.zeros((3, 8, 8), np.uint8), frame_time_vector_ms=[0, 10])


def test_writer_gray_jpeg_and_regions(tmp_path) -> None:
    frames = np.tile(np.linspace(0, 250, 16, dtype=np.uint8), (3, 12, 1))
    region = UltrasoundRegion(
        2, 1, 13, 10, spatial_format=1, data_type=1, units_x=3, units_y=3, delta_x=0.1, delta_y=0.1
    )
    path = write_us_dicom(tmp_path / "g.dcm", frames, compression="jpeg", regions=[region], cine_rate=12)
    info = ud.read_dicom_info(path)
    assert (info.num_frames, info.timing, info.fps, info.regions) == (3, "CineRate", 12.0, (region,))
    decoded = np.stack([g for _, g in ud.iter_dicom_gray(info)])
    assert np.abs(decoded.astype(int) - frames).max() <= 4


def test_synthesize_and_cli_write_dicom(tmp_path) -> None:
    from usjepa_fast.cli.main import app

    s = synth.synthesize(tmp_path / "lib", n_images=0, n_clips=0, clip_size=64, clip_frames=4, dicom=True)
    assert [p.name for p in s.dicom_files] == ["cine_000.dcm", "IM_0001", "dual_000.dcm"]
    assert ud.read_dicom_info(s.dicom_files[0]).num_frames == 4
    out = tmp_path / "cli"
    args = ["synth", "--out", str(out), "--n-images", "0", "--n-clips", "0", "--size", "64", "--clip-frames", "4"]
    result = CliRunner().invoke(app, [*args, "--dicom"])
    assert result.exit_code == 0, result.output
    assert "dicom:" in result.output and "IM_0001" in result.output
    assert sorted(p.name for p in (out / "dicom").iterdir() if not p.name.endswith(".png")) == [
        "IM_0001",
        "cine_000.dcm",
        "dicom.json",
        "dual_000.dcm",
    ]
    assert (out / "dicom" / "cine_000.dcm").read_bytes() == s.dicom_files[0].read_bytes()  # seed 0 both times
