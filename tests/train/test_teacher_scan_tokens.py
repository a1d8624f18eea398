"""teacher.tokens=scan: the frozen SALT teacher embeds only the patches USrc draws from."""

from __future__ import annotations

import pytest
import torch

from usjepa_fast.errors import ConfigError
from usjepa_fast.train import run
from usjepa_fast.train.engine import Trainer


def _scan_cfg(make_cfg, tmp_path, random_teacher, *extra, name="run"):
    return make_cfg(
        tmp_path / name, "objective.kind=salt", f"teacher.spec={random_teacher}", "teacher.tokens=scan", *extra
    )


def test_scan_teacher_targets_equal_the_teacher_on_gathered_patches(make_cfg, tmp_path, tiny_data, random_teacher):
    train, val = tiny_data
    cfg = _scan_cfg(make_cfg, tmp_path, random_teacher, "mask.usrc=true", "optim.steps=3")
    trainer = Trainer(cfg, train_dataset=train, val_dataset=val)
    try:
        batch = trainer.next_batch()
        images, valid = batch["image"], batch["valid_patches"]  # (B, 3, S, S), (B, 8, 8): column 0 outside
        targets = trainer.targets(images, valid)  # (B, N, Dt)
        t = trainer.teacher
        x = (images * t.in_std + t.in_mean - t.mean) / t.std
        model = t.encoder.model
        with torch.no_grad():
            tokens = model._pos_embed(model.patch_embed(x))  # (B, N, Dt): no class token
            for i in range(images.shape[0]):
                idx = torch.nonzero(valid[i].flatten()).flatten()
                ref = model.norm(model.blocks(tokens[i : i + 1, idx]))[0]  # the teacher on its scan patches alone
                torch.testing.assert_close(targets[i, idx], ref, atol=1e-5, rtol=1e-5)
                assert not targets[i, ~valid[i].flatten()].any()  # outside: zeros, never a target
        masks = trainer.sample_masks(batch, (0, 0, 0))
        n = valid[0].numel()
        covered = masks.target.to_mask(n).any(1)  # (B, N) every target patch of each image
        assert not (covered & ~valid.flatten(1)).any()  # every target lies where the teacher ran
    finally:
        trainer.close()
    # a fresh run needs a folder of its own (the Trainer above already claimed tmp_path / "run")
    cfg = _scan_cfg(make_cfg, tmp_path, random_teacher, "mask.usrc=true", "optim.steps=3", name="run2")
    summary = run(cfg, train_dataset=train, val_dataset=val)
    assert summary.finished and summary.step == 3


def test_scan_teacher_needs_usrc_and_salt(make_cfg, tmp_path, tiny_data, random_teacher) -> None:
    train, val = tiny_data
    cfg = _scan_cfg(make_cfg, tmp_path, random_teacher, "mask.usrc=false")
    with pytest.raises(ConfigError, match="mask.usrc=true"):
        run(cfg, train_dataset=train, val_dataset=val)
    with pytest.raises(ConfigError, match="teacher.tokens"):
        make_cfg(tmp_path / "bad", "objective.kind=salt", f"teacher.spec={random_teacher}", "teacher.tokens=some")
    ema = make_cfg(tmp_path / "ema", "objective.kind=ema", "teacher.tokens=scan", "mask.usrc=true")
    with pytest.raises(ConfigError, match="objective.kind=salt"):
        run(ema, train_dataset=train, val_dataset=val)
