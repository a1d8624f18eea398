"""The trainer's precision rule: run.precision auto / fp32 / bf16 -> bf16 autocast or not, and the
frozen teacher following it when teacher.bf16 is unset (null)."""

from __future__ import annotations

import math

import pytest

from usjepa_fast.train.engine import Trainer


@pytest.mark.parametrize(
    ("precision", "pays", "want"),
    [("auto", True, True), ("auto", False, False), ("fp32", True, False), ("bf16", False, True)],
)
def test_precision_rule_and_teacher_follows_it(
    make_cfg, tmp_path, tiny_data, random_teacher, monkeypatch, precision, pays, want
) -> None:
    from usjepa_fast.train import engine

    monkeypatch.setattr(engine, "bf16_training_pays", lambda device: (pays, "test"))
    cfg = make_cfg(
        tmp_path / "run",
        "objective.kind=salt",
        f"teacher.spec={random_teacher}",
        f"run.precision={precision}",
        "teacher.bf16=null",
    )
    t = Trainer(cfg, train_dataset=tiny_data[0], val_dataset=tiny_data[1])
    assert t.use_bf16 is want and t.teacher.bf16 is want
    assert math.isfinite(t.train_step()["loss"])


def test_explicit_teacher_bf16_wins(make_cfg, tmp_path, tiny_data, random_teacher) -> None:
    cfg = make_cfg(tmp_path / "run", "objective.kind=salt", f"teacher.spec={random_teacher}", "teacher.bf16=true")
    t = Trainer(cfg, train_dataset=tiny_data[0], val_dataset=tiny_data[1])
    assert not t.use_bf16 and t.teacher.bf16  # tiny_cfg sets run.precision=fp32


def test_fp16_and_int8_are_not_training_precisions(make_cfg, tmp_path) -> None:
    from usjepa_fast.errors import ConfigError

    for bad in ("fp16", "int8"):
        with pytest.raises(ConfigError, match="run.precision"):
            make_cfg(tmp_path, f"run.precision={bad}")


def test_training_rule_on_this_machine() -> None:
    from usjepa_fast.hardware import bf16_training_pays, cpu_caps

    pays, why = bf16_training_pays("cpu")
    assert not pays and why  # measured slower on AVX512-BF16 and on AMX-BF16 CPUs
    assert ("measured slower" in why) == cpu_caps().bf16_native
