"""How the trainer builds its teacher from the config: any spec form, teacher.mean/std, EMA precision."""

from __future__ import annotations

import pytest
import torch

from usjepa_fast.errors import UsfastError
from usjepa_fast.train.engine import Trainer


def _trainer(make_cfg, tmp_path, tiny_data, *overrides: str) -> Trainer:
    train, val = tiny_data
    return Trainer(make_cfg(tmp_path / "run", *overrides), train_dataset=train, val_dataset=val)


def test_run_dir_teacher_with_an_agreeing_arch_and_own_normalisation(make_cfg, tmp_path, tiny_data, random_teacher):
    t = _trainer(
        make_cfg,
        tmp_path,
        tiny_data,
        f"teacher.spec={random_teacher.parent}",  # the run directory
        "teacher.arch=vit_tiny_patch16_224",  # what its sidecar says
        "teacher.mean=[0.2, 0.2, 0.2]",
        "teacher.std=[0.3, 0.3, 0.3]",
    )
    assert t.teacher is not None and t.teacher.width == 48 and not t.teacher.is_ema
    assert t.teacher.mean.flatten().tolist() == pytest.approx([0.2] * 3)
    assert t.teacher.std.flatten().tolist() == pytest.approx([0.3] * 3)


def test_contradicting_teacher_arch_is_one_line(make_cfg, tmp_path, tiny_data, random_teacher) -> None:
    with pytest.raises(UsfastError, match="teacher.arch=null") as exc:
        _trainer(make_cfg, tmp_path, tiny_data, f"teacher.spec={random_teacher}", "teacher.arch=vit_base_patch16_224")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_ema_target_encoder_runs_under_run_precision(make_cfg, tmp_path, tiny_data, precision, dtype) -> None:
    t = _trainer(make_cfg, tmp_path, tiny_data, "objective.kind=ema", f"run.precision={precision}")
    assert t.teacher is not None and t.teacher.is_ema and t.teacher.bf16 == (precision == "bf16")
    seen: list[torch.dtype] = []
    t.teacher.encoder.blocks[0].attn.qkv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    images = t.train_dataset[0]["image"][None]
    with t._autocast():  # exactly how train_step / validate call phase 1
        targets = t.targets(images)
    assert seen == [dtype] and targets.dtype == torch.float32
