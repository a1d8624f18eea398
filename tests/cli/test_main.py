"""The `usfast` entry point: every subcommand listed, --version, one-line user errors."""

from __future__ import annotations

import subprocess
import sys

from usjepa_fast import __version__
from usjepa_fast.cli.main import COMMAND_MODULES


def _usfast(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "usjepa_fast", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_subcommand_with_a_description() -> None:
    result = _usfast("--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in COMMAND_MODULES:
        row = [line for line in lines if line.strip().strip("│").strip().startswith(name + " ")]
        assert row, f"`usfast --help` does not list {name}:\n{result.stdout}"
        assert len(row[0].strip().strip("│").split()) > 1, f"{name} has no description"


def test_version() -> None:
    result = _usfast("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"usfast {__version__}"


def test_user_error_is_one_line_without_traceback(tmp_path) -> None:
    result = _usfast("train", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("usfast: error:") and "missing.yaml" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
