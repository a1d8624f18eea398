"""Help renders flags as flags (no `<bool>` after a switch) and every subcommand shows an example."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from usjepa_fast.cli.main import COMMAND_MODULES, app

COMMANDS = [m for m in COMMAND_MODULES]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_an_example_and_plain_flags(command: str) -> None:
    res = CliRunner().invoke(app, [command, "--help"], terminal_width=120)
    assert res.exit_code == 0, res.output
    assert "Example" in res.output and f"usfast {command}" in res.output.split("Example", 1)[1]
    assert "<bool>" not in res.output  # typer 0.29's rich panel printed `--resume <bool>`
    assert "╭" not in res.output  # click's plain layout: readable in a log file too
