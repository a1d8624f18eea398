"""Issue 14 for training: up-front validation, resume rules + config history, run-folder lock,
checkpoint before validation, SIGTERM held like SIGINT, periodic log lines without a bar."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import yaml

from usjepa_fast.errors import ConfigError, LockedError, UsfastError
from usjepa_fast.fileio import folder_lock
from usjepa_fast.train import run
from usjepa_fast.train.checkpoint import list_checkpoints
from usjepa_fast.train.config import RESUMABLE_KEYS, load_resume_config, load_train_config, resume_changes

COMMON = ("objective.kind=pixel", "optim.steps=6", "run.ckpt_every=2", "run.val_every=2", "run.log_every=1")


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("optim.steps=0", r"optim.steps=0 is invalid; use an integer >= 1"),
        ("optim.lr=-1", r"optim.lr=-1.0 is invalid; use a number > 0"),
        ("data.val_fraction=1.5", r"data.val_fraction=1.5 is invalid"),
        ("run.log_every=0", r"run.log_every=0 is invalid"),
        ("data.image_size=33", r"not a multiple of model.patch_size"),
    ],
)
def test_config_ranges_are_checked_when_loaded(override, words) -> None:
    with pytest.raises(ConfigError, match=words):
        load_train_config("salt_tiny_cpu", [override])


def test_resume_refuses_changed_keys_and_keeps_a_config_history(make_cfg, tmp_path, tiny_data, caplog) -> None:
    train, val = tiny_data
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="usfast"):
        run(make_cfg(out, *COMMON, "run.stop_after=3"), train_dataset=train, val_dataset=val)
    # progress is off: a timm-style line per log step still goes to the log
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("step 3/6 (50%)  loss ") and "img/s  ETA 0:00:00" in m for m in lines)
    with pytest.raises(UsfastError, match="already holds a run"):  # a fresh run never reuses the folder
        run(make_cfg(out, *COMMON), train_dataset=train, val_dataset=val)
    with pytest.raises(ConfigError, match=r"--resume: optim.lr=0.01 differs from the run's 0.002"):
        run(make_cfg(out, *COMMON, "optim.lr=1e-2"), resume=True, train_dataset=train, val_dataset=val)
    with pytest.raises(ConfigError, match=r"optim.steps=2 is below the \d+ steps"):
        run(make_cfg(out, *COMMON, "optim.steps=2"), resume=True, train_dataset=train, val_dataset=val)
    assert not (out / "config_history").exists()
    # a bare resume: the run's own config.yaml, only the --set given now on top
    cfg = load_resume_config(out, ["optim.steps=8", "run.stop_after=null"])
    changes = resume_changes(yaml.safe_load((out / "config.yaml").read_text()), cfg)
    assert changes == [("optim.steps", 6, 8), ("run.stop_after", 3, None)]
    summary = run(cfg, resume=True, train_dataset=train, val_dataset=val)
    assert summary.step == 8 and summary.finished
    kept = (out / "config_history" / "000.yaml").read_text()
    assert kept.startswith("# config.yaml of this run until step 3") and "optim.steps" in kept.splitlines()[0]
    assert yaml.safe_load(kept)["optim"]["steps"] == 6
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["steps"] == 8
    assert "optim.steps" in RESUMABLE_KEYS and not (out / ".usfast.lock").exists()  # released at the end


def test_missing_run_config_is_one_line(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no config.yaml there"):
        load_resume_config(tmp_path)


def test_a_second_writer_of_a_run_folder_is_refused(make_cfg, tmp_path, tiny_data) -> None:
    train, _ = tiny_data
    with folder_lock(tmp_path / "run", "usfast train"), pytest.raises(LockedError, match="is being written by"):
        run(make_cfg(tmp_path / "run", *COMMON), train_dataset=train)
    assert not list_checkpoints(tmp_path / "run")


def test_run_folder_under_a_file_is_refused_before_building_models(make_cfg, tmp_path, tiny_data) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsfastError, match="is a file, not a folder"):
        run(make_cfg(tmp_path / "f" / "run", *COMMON), train_dataset=tiny_data[0])


def test_sigterm_is_held_during_the_update_like_sigint() -> None:
    from usjepa_fast.cli.main import _raise_terminated
    from usjepa_fast.train.engine import _signals_deferred

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    got = []
    try:
        with _signals_deferred(got.append):
            os.kill(os.getpid(), signal.SIGTERM)
            got.append("still in the block")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert got == ["still in the block", signal.SIGTERM]


def test_a_key_an_older_run_config_lacks_counts_as_its_default() -> None:
    from usjepa_fast.config import to_dict
    from usjepa_fast.train.config import load_train_config, resume_changes

    cfg = load_train_config("salt_tiny_cpu", [])
    stored = to_dict(cfg)
    del stored["data"]["frames_per_visit"]  # a run written before the key existed
    assert resume_changes(stored, cfg) == []
    stored["data"]["frames_per_visit"] = cfg.data.frames_per_visit + 1  # a real change stays refused
    with pytest.raises(ConfigError, match="data.frames_per_visit"):
        resume_changes(stored, cfg)
    stored["data"]["frames_per_visit"] = cfg.data.frames_per_visit
    stored["data"]["mask_cache"] = "beside"  # where masks are cached may change
    assert [k for k, _, _ in resume_changes(stored, cfg)] == ["data.mask_cache"]
