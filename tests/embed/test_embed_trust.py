"""Issue 14 for embed: run fingerprint on resume, files.csv, folder lock, commit cadence, interrupts,
exit statuses and options refused before any work."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from usjepa_fast.embed import EmbedOptions, embed_folder, load
from usjepa_fast.embed.fingerprint import FingerprintError
from usjepa_fast.embed.store import read_parts
from usjepa_fast.errors import LockedError, saved_note

REPO = Path(__file__).resolve().parents[2]


def _opts(**kw) -> EmbedOptions:
    return EmbedOptions(**{"batch_size": 8, "progress": False, **kw})


@pytest.fixture()
def clips(synth_root, tmp_path) -> Path:
    import shutil

    d = tmp_path / "clips"
    shutil.copytree(synth_root / "clips", d)
    return d


def _files_csv(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "files.csv", newline="") as fh:
        return {r["path"]: r for r in csv.DictReader(fh)}


def test_other_settings_are_refused_naming_the_fields_and_overwrite_starts_fresh(clips, tmp_path, torch_backend):
    out = tmp_path / "o"
    embed_folder(clips, out, torch_backend, options=_opts(max_frames=2))
    index_before = (out / "index.csv").read_text()
    with pytest.raises(FingerprintError, match=r"sampling\.every_k: 1 -> 2") as info:
        embed_folder(clips, out, torch_backend, options=_opts(max_frames=2, every_k=2))
    assert "--overwrite" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(FingerprintError, match=r"dtype: float16 -> float32"):
        embed_folder(clips, out, torch_backend, options=_opts(max_frames=2, dtype="float32"))
    with pytest.raises(FingerprintError, match=r"clip_pool: false -> true"):
        embed_folder(clips, out, torch_backend, options=_opts(max_frames=2, clip_pool=True))
    assert (out / "index.csv").read_text() == index_before  # nothing was touched
    # same settings: resume (0 to do); commit cadence and batch size are not part of the fingerprint
    s = embed_folder(clips, out, torch_backend, options=_opts(max_frames=2, batch_size=3, commit_every_s=5.0))
    assert s.files_resumed == 3 and s.files_embedded == 0
    s = embed_folder(clips, out, torch_backend, options=_opts(max_frames=2, every_k=2), overwrite=True)
    assert s.files_embedded == 3 and s.files_resumed == 0
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["fields"]["sampling"]["every_k"] == 2
    assert json.loads((out / "embed.json").read_text())["fingerprint"] == fp


def test_folder_without_fingerprint_is_refused(clips, tmp_path, torch_backend) -> None:
    out = tmp_path / "o"
    embed_folder(clips, out, torch_backend, options=_opts(max_frames=1))
    (out / "fingerprint.json").unlink()
    manifest = json.loads((out / "embed.json").read_text())
    manifest.pop("fingerprint")
    (out / "embed.json").write_text(json.dumps(manifest))
    with pytest.raises(FingerprintError, match="without a run fingerprint"):
        embed_folder(clips, out, torch_backend, options=_opts(max_frames=1))


def test_files_csv_lists_ok_partial_and_failed_inputs(clips, tmp_path, torch_backend, caplog) -> None:
    avi = (clips / "clip_002.avi").read_bytes()
    (clips / "short.avi").write_bytes(avi[: int(len(avi) * 0.6)])  # truncated: its header still lists 16
    (clips / "garbage.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "o"
    with caplog.at_level(logging.WARNING, logger="usfast"):
        s = embed_folder(clips, out, torch_backend, options=_opts())
    files = _files_csv(out)
    assert set(files) == {"clip_000.mp4", "clip_001.webm", "clip_002.avi", "short.avi", "garbage.png"}
    assert files["clip_000.mp4"]["status"] == "ok"
    assert files["clip_000.mp4"]["frames_decoded"] == files["clip_000.mp4"]["frames_expected"]
    assert files["garbage.png"]["status"] == "failed" and files["garbage.png"]["reason"]
    assert files["garbage.png"]["index_rows"] == "0"
    short = files["short.avi"]
    assert short["status"] == "partial", short
    assert int(short["frames_decoded"]) < int(short["frames_expected"]) and int(short["index_rows"]) > 0
    assert "short.avi" in s.partial and "decoded only partially" in caplog.text
    manifest = json.loads((out / "embed.json").read_text())
    assert manifest["counts"] == {"ok": 3, "partial": 1, "failed": 1, "pending": 0} and manifest["complete"]
    assert s.outcome == "partial"
    _, rows = load(out)
    assert "garbage.png" not in {r.path for r in rows}  # never substituted by another input


def test_commit_by_time_and_an_interrupt_keeps_the_finished_files(synth_root, tmp_path, torch_backend, monkeypatch):
    from usjepa_fast.embed import store

    ub = synth_root / "ultrabench"
    out = tmp_path / "o"
    calls = {"n": 0}
    add_file = store.PartWriter.add_file

    def interrupted_after_five(self, *args, **kwargs):
        if calls["n"] == 5:
            raise KeyboardInterrupt("Ctrl-C")
        calls["n"] += 1
        return add_file(self, *args, **kwargs)

    monkeypatch.setattr(store.PartWriter, "add_file", interrupted_after_five)
    # rows alone (8192) would commit nothing before the interrupt; the interrupt commits the 5 done
    with pytest.raises(KeyboardInterrupt) as info:
        embed_folder(ub, out, torch_backend, options=_opts(batch_size=4))
    assert sum(len(p.files) for p in read_parts(out)) == 5
    note = saved_note(info.value)
    assert note.startswith("5 file(s)") and "rerun the same command to resume" in note
    manifest = json.loads((out / "embed.json").read_text())
    assert not manifest["complete"] and manifest["counts"]["pending"] == 43
    monkeypatch.setattr(store.PartWriter, "add_file", add_file)
    # a commit every ~0 s: one part per finished file
    s = embed_folder(ub, out, torch_backend, options=_opts(batch_size=4, commit_every_s=1e-6))
    assert s.files_resumed == 5 and s.files_embedded == 43
    assert len(read_parts(out)) == 1 + 43
    assert json.loads((out / "embed.json").read_text())["complete"]


_HOLD = textwrap.dedent(
    """
    import sys, time
    from usjepa_fast.fileio import folder_lock
    lock = folder_lock(sys.argv[1], "usfast embed")
    print("held", flush=True)
    time.sleep(120)
    """
)


def test_a_second_writer_in_another_process_is_refused(clips, tmp_path, torch_backend) -> None:
    out = tmp_path / "o"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=rf"being written by `usfast embed` \(pid {proc.pid}"):
            embed_folder(clips, out, torch_backend, options=_opts(max_frames=1))
        assert not read_parts(out)
    finally:
        proc.kill()
        proc.wait()
    s = embed_folder(clips, out, torch_backend, options=_opts(max_frames=1))  # the dead holder's lock is stale
    assert s.files_embedded == 3 and not (out / ".usfast.lock").exists()


def _cli(*args: str):
    from usjepa_fast.cli.main import app

    return CliRunner().invoke(app, ["embed", *args], catch_exceptions=True)


def _common(clips: Path, out: Path) -> list[str]:
    return [str(clips), "-e", "vit_tiny_patch16_224", "-o", str(out), "--backend", "torch", "--no-progress"]


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--every-k", "0"], "every_k=0 is invalid"),
        (["--skip-redundant", "-3"], "redundancy_threshold=-3.0 is invalid"),
        (["--change-check", "foo"], "change_check='foo' is invalid"),
        (["--pool", "foo"], "--pool='foo' is invalid; use mean | cls"),
        (["--commit-every-s", "0"], "commit_every_s=0.0 is invalid"),
    ],
)
def test_bad_options_are_refused_before_any_work(clips, tmp_path, extra, words) -> None:
    out = tmp_path / "o"
    res = _cli(*_common(clips, out), *extra)
    assert res.exit_code != 0 and words in str(res.exception)
    assert not out.exists()  # nothing opened, nothing written


def test_exit_status_says_partial_and_empty(clips, tmp_path) -> None:
    (clips / "garbage.png").write_bytes(b"\x89PNG not really")
    res = _cli(*_common(clips, tmp_path / "a"), "--max-frames", "1", "--threads", "1")
    assert res.exit_code == 3, res.output
    assert "1 failed" in res.output and "-> exit 3" in res.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"\x89PNG not really")
    res = _cli(*_common(bad, tmp_path / "b"), "--threads", "1")
    assert res.exit_code == 4, res.output
    assert "nothing was embedded -> exit 4" in res.output


def test_output_path_errors_are_one_line(clips, tmp_path) -> None:
    (tmp_path / "f").write_text("x")
    for out, words in ((tmp_path / "f", "exists and is a file"), (tmp_path / "f" / "o", "is a file, not a folder")):
        res = _cli(*_common(clips, out))
        assert res.exit_code != 0 and words in str(res.exception)
    res = _cli(str(clips), "-e", "x", "-o", str(tmp_path / "missing"), "--merge-only")
    assert res.exit_code != 0 and "does not exist" in str(res.exception)


def test_sigterm_commits_finished_files_says_so_and_exits_143(synth_root, tmp_path) -> None:
    """A real ``usfast embed`` process stopped by SIGTERM (a batch scheduler): exit 143, the last line
    says what was saved, and a rerun resumes from it."""
    import shutil
    import signal
    import time

    images = sorted((synth_root / "ultrabench" / "images").rglob("*.png"))
    src = tmp_path / "many"
    src.mkdir()
    for i in range(300):  # long enough that the signal lands mid-run
        shutil.copyfile(images[i % len(images)], src / f"im_{i:04d}.png")
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "usjepa_fast", "embed", str(src), "-e", "vit_tiny_patch16_224", "-o", str(out)]
    cmd += ["--backend", "torch", "--batch-size", "1", "--threads", "1", "--no-progress", "--commit-every-s", "0.01"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list((out / "parts").glob("r000-*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("usfast: interrupted (SIGTERM): ") and "rerun the same command to resume" in last
    done = sum(len(p.files) for p in read_parts(out))
    assert 0 < done < 300 and not (out / ".usfast.lock").exists()
    assert json.loads((out / "embed.json").read_text())["counts"]["pending"] == 300 - done
