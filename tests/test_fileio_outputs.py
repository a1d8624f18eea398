"""Output-path checks and exclusive folder locks (issue 14): one-line refusals, real second processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from usjepa_fast.errors import LockedError, OutputPathError, UsfastError
from usjepa_fast.fileio import check_output_dir, check_output_file, folder_lock

REPO = Path(__file__).resolve().parents[1]


def test_output_folder_checks_are_one_line_and_name_the_path(tmp_path) -> None:
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"  # created later
    assert not (tmp_path / "new").exists()  # a check writes nothing
    cases = {
        a_file: "exists and is a file",
        a_file / "sub": "is a file, not a folder",  # a path under a file
    }
    for path, words in cases.items():
        with pytest.raises(OutputPathError, match=words) as info:
            check_output_dir(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
        assert isinstance(info.value, UsfastError)
    with pytest.raises(OutputPathError, match="does not exist"):
        check_output_dir(tmp_path / "missing", must_exist=True)


def test_output_file_checks(tmp_path) -> None:
    assert check_output_file(tmp_path / "a" / "b.json") == tmp_path / "a" / "b.json"
    with pytest.raises(OutputPathError, match="is a folder"):
        check_output_file(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_output_file(tmp_path / "f" / "report.json")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="not writable"):
            check_output_dir(ro)
        with pytest.raises(OutputPathError, match="not writable"):
            check_output_dir(ro / "sub")
    finally:
        ro.chmod(0o755)


def test_lock_is_exclusive_within_a_process_and_released(tmp_path) -> None:
    with folder_lock(tmp_path / "out", "usfast test") as lock:
        holder = json.loads(lock.path.read_text())
        assert holder["pid"] == os.getpid() and holder["purpose"] == "usfast test"
        with pytest.raises(LockedError, match="is being written by `usfast test`") as info:
            folder_lock(tmp_path / "out", "usfast other")
        assert "\n" not in str(info.value)
    assert not lock.path.exists()
    folder_lock(tmp_path / "out", "usfast again").release()  # free again


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from usjepa_fast.fileio import folder_lock
    lock = folder_lock(sys.argv[1], "usfast holder")
    print("held", flush=True)
    time.sleep(120)
    """
)


def _start_holder(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_is_refused_and_a_killed_holder_is_taken_over(tmp_path, caplog) -> None:
    out = tmp_path / "out"
    proc = _start_holder(out)
    try:
        with pytest.raises(LockedError, match=rf"pid {proc.pid}"):
            folder_lock(out, "usfast test")
    finally:
        proc.send_signal(signal.SIGKILL)  # leaves its lock file behind
        proc.wait()
    assert (out / ".usfast.lock").is_file()
    with caplog.at_level(logging.WARNING, logger="usfast"):
        lock = folder_lock(out, "usfast test")
    assert "stale lock" in caplog.text and f"process {proc.pid} is no longer running" in caplog.text
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    lock.release()


def test_lock_of_another_host_is_refused_with_the_path_to_delete(tmp_path) -> None:
    tmp_path.joinpath(".usfast.lock").write_text(
        json.dumps({"pid": 1, "host": "elsewhere", "start": "", "purpose": "usfast train", "since": "x"})
    )
    with pytest.raises(LockedError, match=r"if it is gone, delete .*\.usfast\.lock"):
        folder_lock(tmp_path, "usfast test")


def test_recycled_pid_is_not_taken_for_the_holder(tmp_path) -> None:
    # a live pid (ours' parent) but another start time: the recorded holder is gone
    tmp_path.joinpath(".usfast.lock").write_text(
        json.dumps(
            {
                "pid": os.getppid(),
                "host": os.uname().nodename,
                "start": "1",
                "purpose": "usfast train",
                "since": time.strftime("%Y"),
            }
        )
    )
    folder_lock(tmp_path, "usfast test").release()
