"""Issue 13 done-when: ``embed_folder`` over the pydicom-data ultrasound files plus the simulator's cine
loops embeds every frame, takes the ALOKA file's mask from its regions sequence, and writes no patient
tag into any output, log or cache file name."""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", minversion="3.0", reason="DICOM embed needs the dicom extra (pydicom 3)")

from usjepa_fast.embed import EmbedOptions, embed_folder, load  # noqa: E402

REAL = ("US1_UNCR.dcm", "US1_J2KR.dcm", "US1_J2KI.dcm", "US1_UNCI.dcm", "gdcm-US-ALOKA-16.dcm")


def _patient_strings(paths: list[Path]) -> set[str]:
    """Every patient name / ID / birth date part (3+ characters) written in ``paths``' headers."""
    out: set[str] = set()
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        for tag in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs"):
            value = str(ds.get(tag, "") or "")
            out.update(part for part in value.replace("^", " ").split() if len(part) >= 3)
    return out


@pytest.fixture()
def dicom_folder(tmp_path) -> Path:
    from pydicom.data import get_testdata_file

    from usjepa_fast.data.synth import write_dicom_set

    root = tmp_path / "dicom"
    root.mkdir()
    for name in REAL:
        path = get_testdata_file(name, download=False)
        if path is None:
            pytest.skip(f"{name} needs the pydicom-data package (dev extra)")
        shutil.copy2(path, root / name)
    write_dicom_set(root / "synth", size=64, seed=3, n_frames=5)  # JPEG cine, extensionless cine, dual view
    return root


def test_dicom_folder_embeds_every_frame_with_regions_and_no_patient_tags(
    dicom_folder, tmp_path, torch_backend, caplog, monkeypatch
) -> None:
    from usjepa_fast.data.clips import find_scan_mask
    from usjepa_fast.data.dicom import read_dicom_info
    from usjepa_fast.data.synth import SYNTH_PATIENT
    from usjepa_fast.embed.sources import list_sources, source_mask

    cache = tmp_path / "cache"
    monkeypatch.setenv("USFAST_CACHE_DIR", str(cache))
    files = sorted(p for p in dicom_folder.rglob("*") if p.is_file() and not p.name.endswith((".png", ".json")))
    expected = {p.relative_to(dicom_folder).as_posix(): read_dicom_info(p).num_frames for p in files}
    assert expected["synth/cine_000.dcm"] == expected["synth/IM_0001"] == 5  # the multi-frame cines
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG, logger="usfast"):
        summary = embed_folder(dicom_folder, out, torch_backend, options=EmbedOptions(batch_size=8, progress=False))
    assert summary.files_failed == 0 and summary.files_embedded == len(files)
    X, rows = load(out)
    assert Counter(r.path for r in rows) == expected  # row counts equal frame counts
    assert X.shape[0] == sum(expected.values()) and np.isfinite(X).all()
    for path, n in expected.items():
        assert [r.frame_index for r in rows if r.path == path] == list(range(n))

    # the ALOKA file's mask: its two B-mode region boxes (inclusive), not a detection
    aloka = next(s for s in list_sources(dicom_folder) if s.path.name == "gdcm-US-ALOKA-16.dcm")
    boxes = np.zeros((480, 640), bool)
    for r in read_dicom_info(aloka.path).regions:
        if r.is_bmode:
            boxes[r.y0 : r.y1 + 1, r.x0 : r.x1 + 1] = True
    assert boxes.sum() < boxes.size
    np.testing.assert_array_equal(source_mask(aloka, np.zeros((480, 640), np.uint8)), boxes)
    assert find_scan_mask(aloka.path)[1] == "dicom-regions"

    secrets = _patient_strings(files) | {v for k, v in SYNTH_PATIENT.items() if k != "PatientSex"}
    # a real file's patient "name" that is also part of its file name (US1) is the user's path, not a leak
    secrets = {s for s in secrets if s != "Anonymized" and not any(s in p.as_posix() for p in files)}
    assert SYNTH_PATIENT["PatientID"] in secrets
    written = [p for p in out.rglob("*") if p.is_file()] + [p for p in cache.rglob("*") if p.is_file()]
    for p in written:
        data = p.read_bytes()
        for s in secrets:
            assert s.encode() not in data and s not in p.name, (s, p)
    for s in secrets:
        assert s not in caplog.text


def test_find_sources_lists_problems_and_only_safe_dicom_metadata(dicom_folder, tmp_path) -> None:
    from usjepa_fast.data.synth import SYNTH_PATIENT
    from usjepa_fast.embed.sources import DICOM_META_FIELDS, find_sources

    (dicom_folder / "gone.dcm").symlink_to(tmp_path / "deleted.dcm")
    (dicom_folder / "empty.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 8)  # a header with nothing in it
    sources, problems = find_sources(dicom_folder)
    assert set(problems) == {"gone.dcm", "empty.dcm"} and "dangling" in problems["gone.dcm"]
    by_rel = {s.rel: s for s in sources}
    aloka = by_rel["gdcm-US-ALOKA-16.dcm"]
    assert tuple(aloka.meta) == DICOM_META_FIELDS and aloka.meta["region_source"] == "dicom-regions"
    assert aloka.meta["rows"] == 480 and aloka.meta["columns"] == 640
    assert aloka.meta["sop_instance_uid"] == str(pydicom.dcmread(aloka.path, stop_before_pixels=True).SOPInstanceUID)
    assert by_rel["synth/cine_000.dcm"].kind == "video" and by_rel["synth/dual_000.dcm"].kind == "image"
    text = repr([s.meta for s in sources])
    assert not any(v in text for k, v in SYNTH_PATIENT.items() if k != "PatientSex")
