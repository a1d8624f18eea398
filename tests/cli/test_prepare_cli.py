"""`usfast prepare`: a corpus from the command line, unreadable inputs listed, rerun = resume."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from usjepa_fast.cli.main import app
from usjepa_fast.data.prepared import PreparedCorpus

runner = CliRunner()


def test_prepare_command_lists_unreadable_and_resumes(synth_root: Path, tmp_path: Path) -> None:
    src = tmp_path / "clips"
    src.mkdir()
    for f in sorted((synth_root / "clips").glob("clip_00[01].*")):
        shutil.copy2(f, src / f.name)
    (src / "bad.avi").write_bytes(b"RIFF" + b"\x00" * 300)
    out = tmp_path / "corpus"
    args = ["prepare", str(src), "-o", str(out), "--storage-size", "64", "--every-k", "2", "--shard-frames", "5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        "prepared 16 frames" in result.stdout
        and "clips[videos]: 16 frames from 3 inputs (1 unreadable)" in result.stdout
    )
    assert "1 unreadable input(s)" in result.stderr and "bad.avi" in result.stderr
    assert len(PreparedCorpus(out)) == 16
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "0 of 3 jobs run now in" in again.stdout and "nothing to do" in again.stdout
    other = runner.invoke(app, [*args[:-2], "--storage-size", "native"])
    assert other.exit_code != 0 and "other options" in str(other.exception)
    bad = runner.invoke(app, ["prepare", str(src), "-o", str(tmp_path / "x"), "--storage-size", "big"])
    assert bad.exit_code != 0 and "--storage-size" in str(bad.exception)
    bad = runner.invoke(app, ["prepare", str(src), "-o", str(tmp_path / "y"), "--mask-cache", "nearby"])
    assert bad.exit_code != 0 and "mask_cache" in str(bad.exception) and not (tmp_path / "y").exists()
