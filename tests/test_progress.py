"""Progress: tqdm on a terminal only; periodic one-line log records elsewhere (batch schedulers)."""

from __future__ import annotations

import io
import logging

import pytest

from usjepa_fast import progress as progress_mod
from usjepa_fast.config import check_choice, check_int, check_number
from usjepa_fast.errors import ConfigError


def test_log_lines_instead_of_a_carriage_return_stream(monkeypatch, caplog) -> None:
    monkeypatch.setattr(progress_mod.sys, "stderr", io.StringIO())  # not a terminal (a log file)
    monkeypatch.setenv("USFAST_PROGRESS_S", "0")
    with caplog.at_level(logging.INFO, logger="usfast"):
        bar = progress_mod.progress(4, "embed", "file")
        assert isinstance(bar, progress_mod.LogProgress)
        bar.set_postfix_str("12.0 frames/s")
        bar.update(1)
        bar.update(1)
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("embed: 1/4 files (25%)") and "frames/s" in lines[0] and "ETA" in lines[0]
    assert all("\r" not in line for line in lines) and lines[-1].endswith("(done)")
    assert progress_mod.progress(4, "x", enabled=False) is None


def test_eta_format() -> None:
    assert progress_mod.format_eta(3725) == "1:02:05"
    assert progress_mod.format_eta(float("inf")) == "?"


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: check_int(0, "every_k", 1), r"every_k=0 is invalid; use an integer >= 1"),
        (lambda: check_int(True, "n", 1), r"n=True is invalid"),
        (lambda: check_int(9, "n", 1, 4), r"an integer in \[1, 4\]"),
        (lambda: check_number(-3.0, "skip", 0, lo_open=True), r"skip=-3.0 is invalid; use a number > 0"),
        (lambda: check_number(float("nan"), "x", 0), r"x=nan is invalid"),
        (lambda: check_choice("foo", "pool", ("mean", "cls")), r"pool='foo' is invalid; use mean \| cls"),
    ],
)
def test_shared_validators_name_key_value_and_range(call, words) -> None:
    with pytest.raises(ConfigError, match=words):
        call()
