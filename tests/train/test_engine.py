"""The training loop: learning happens, resume is exact, EMA mode, exports, run-dir safety."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file
from support.train import SIZE

from usjepa_fast.errors import ConfigError, UsfastError
from usjepa_fast.train import run
from usjepa_fast.train.checkpoint import list_checkpoints, load_training_state


def _losses(run_dir) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_salt_loss_decreases_and_exports_timm_student(make_cfg, tmp_path, tiny_data, random_teacher) -> None:
    train, val = tiny_data
    cfg = make_cfg(
        tmp_path / "run",
        "objective.kind=salt",
        f"teacher.spec={random_teacher}",
        "optim.steps=40",
        "optim.warmup_steps=4",
        "mask.usrc=true",
        "run.val_every=20",
    )
    summary = run(cfg, train_dataset=train, val_dataset=val)
    assert summary.finished and summary.step == 40
    losses = _losses(cfg_dir := tmp_path / "run")
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, f"SALT loss did not decrease: {first:.4f} -> {last:.4f}"
    assert summary.best_val_loss is not None and (cfg_dir / "best.pt").is_file()
    # export-ready student: timm rebuilds it from the sidecar and gives the same features
    sidecar = json.loads((cfg_dir / "student.json").read_text())
    model = timm.create_model(sidecar["timm_name"], pretrained=False, **sidecar["timm_kwargs"]).eval()
    model.load_state_dict(load_file(str(cfg_dir / "student.safetensors")), strict=True)
    from usjepa_fast.models import create

    student = create("usjepa_vit_tiny", img_size=SIZE, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    student.load_state_dict(load_training_state(list_checkpoints(cfg_dir)[-1][1])["student"])
    x = torch.randn(2, 3, SIZE, SIZE)
    assert torch.allclose(model(x), student.eval().pooled(x), atol=1e-5)
    assert sidecar["width"] == 32 and sidecar["input_size"] == SIZE


def test_resume_reproduces_uninterrupted_run_bitwise(make_cfg, tmp_path, tiny_data) -> None:
    train, val = tiny_data
    common = (
        "objective.kind=pixel",
        "optim.steps=9",
        "optim.grad_accum=2",
        "model.drop_path_rate=0.2",
        "mask.usrc=true",
        "run.val_every=4",
        "run.ckpt_every=3",
        "run.keep_last=2",
    )
    full = make_cfg(tmp_path / "full", *common)
    run(full, train_dataset=train, val_dataset=val)

    part = make_cfg(tmp_path / "part", *common, "run.stop_after=5")
    stopped = run(part, train_dataset=train, val_dataset=val)
    assert stopped.step == 5 and not stopped.finished and stopped.student_path is None
    assert [s for s, _ in list_checkpoints(tmp_path / "part")] == [3, 5]  # keep_last=2
    with pytest.raises(UsfastError, match="--resume"):
        run(make_cfg(tmp_path / "part", *common), train_dataset=train, val_dataset=val)
    resumed = run(make_cfg(tmp_path / "part", *common), resume=True, train_dataset=train, val_dataset=val)
    assert resumed.resumed_from == 5 and resumed.finished

    a = load_training_state(list_checkpoints(tmp_path / "full")[-1][1])
    b = load_training_state(list_checkpoints(tmp_path / "part")[-1][1])
    for part_name in ("student", "predictor"):
        for key, value in a[part_name].items():
            assert torch.equal(value, b[part_name][key]), f"{part_name}.{key} differs after resume"
    assert a["epoch"] == b["epoch"] and a["consumed"] == b["consumed"] and a["best_val"] == b["best_val"]
    # the metrics log of the resumed run has one row per step, like the uninterrupted one
    assert _losses(tmp_path / "full") == _losses(tmp_path / "part")


def test_ema_mode_updates_teacher(make_cfg, tmp_path, tiny_data) -> None:
    train, _ = tiny_data
    cfg = make_cfg(tmp_path / "ema", "objective.kind=ema", "optim.steps=4", "teacher.ema_momentum=[0.9, 1.0]")
    summary = run(cfg, train_dataset=train)
    state = load_training_state(summary.checkpoint)
    teacher, student = state["teacher"], state["student"]
    assert teacher is not None
    rows = [json.loads(line) for line in (tmp_path / "ema" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["momentum"] == pytest.approx(0.9) and rows[-1]["momentum"] == pytest.approx(0.975)
    w = "blocks.0.attn.qkv.weight"
    assert not torch.equal(teacher[w], student[w]), "EMA teacher must lag the student"


def test_salt_without_teacher_is_a_config_error(make_cfg, tmp_path, tiny_data) -> None:
    with pytest.raises(ConfigError, match="teacher.spec"):
        run(make_cfg(tmp_path / "x", "objective.kind=salt"), train_dataset=tiny_data[0])


def test_batch_larger_than_data_is_a_config_error(make_cfg, tmp_path, tiny_data) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        run(make_cfg(tmp_path / "x", "objective.kind=pixel", "data.batch_size=64"), train_dataset=tiny_data[0])


def test_ctrl_c_mid_step_checkpoints_the_step_start(make_cfg, tmp_path, tiny_data, monkeypatch) -> None:
    """A KeyboardInterrupt in the middle of a step (data already drawn) rolls back to the step start."""
    from usjepa_fast.train.engine import Trainer

    train, val = tiny_data
    common = ("objective.kind=pixel", "optim.steps=6", "model.drop_path_rate=0.1", "run.val_every=3")
    run(make_cfg(tmp_path / "full", *common), train_dataset=train, val_dataset=val)

    original = Trainer.train_step
    calls = {"n": 0}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 4:
            self.next_batch()  # the interrupted step already consumed a batch and RNG draws
            torch.randn(100)
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", flaky)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(tmp_path / "part", *common), train_dataset=train, val_dataset=val)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert [s for s, _ in list_checkpoints(tmp_path / "part")] == [3]
    run(make_cfg(tmp_path / "part", *common), resume=True, train_dataset=train, val_dataset=val)
    a = load_training_state(list_checkpoints(tmp_path / "full")[-1][1])
    b = load_training_state(list_checkpoints(tmp_path / "part")[-1][1])
    for key, value in a["student"].items():
        assert torch.equal(value, b["student"][key]), key


def test_pixel_targets_pool_speckle() -> None:
    from usjepa_fast.models.pixel import patchify_gray, pixel_target_dim

    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    full = patchify_gray(img, 4)
    assert full.shape == (2, 4, 16) and pixel_target_dim(4) == 16
    pooled = patchify_gray(img, 4, pool=2)
    assert pooled.shape == (2, 4, 4) and pixel_target_dim(4, 2) == 4
    gray = img.mean(1)
    assert torch.allclose(full[0, 1], gray[0, :4, 4:].reshape(-1))  # patch (0, 1), row-major
    assert torch.allclose(pooled[0, 0, 0], gray[0, :2, :2].mean())


def test_ctrl_c_during_the_update_is_deferred_and_resume_is_exact(
    make_cfg, tmp_path, tiny_data, monkeypatch, request
) -> None:
    """A SIGINT inside optimizer.step(): the update completes, the checkpoint holds the post-step
    state (weights, step and data position together), and a resume does not apply the step twice."""
    import signal

    # A job a non-interactive shell starts in the background inherits SIGINT *ignored* (POSIX), and the
    # trainer rightly leaves an ignored signal ignored; this test is about Python's default handler.
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous_handler))
    train, val = tiny_data
    common = ("objective.kind=pixel", "optim.steps=6", "model.drop_path_rate=0.1", "mask.usrc=true", "run.val_every=3")
    run(make_cfg(tmp_path / "full", *common), train_dataset=train, val_dataset=val)

    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def interrupted_step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # a real Ctrl-C after the weights moved, before the step counter did
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(tmp_path / "part", *common), train_dataset=train, val_dataset=val)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert [s for s, _ in list_checkpoints(tmp_path / "part")] == [4]  # the step that was interrupted, done
    assert [json.loads(r)["step"] for r in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()][-1] == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored
    run(make_cfg(tmp_path / "part", *common), resume=True, train_dataset=train, val_dataset=val)
    a = load_training_state(list_checkpoints(tmp_path / "full")[-1][1])
    b = load_training_state(list_checkpoints(tmp_path / "part")[-1][1])
    assert a["step"] == b["step"] == 6 and (a["epoch"], a["consumed"]) == (b["epoch"], b["consumed"])
    for part_name in ("student", "predictor"):
        for key, value in a[part_name].items():
            assert torch.equal(value, b[part_name][key]), f"{part_name}.{key} differs after resume"
    assert _losses(tmp_path / "full") == _losses(tmp_path / "part")


def test_truncate_mode_trains_on_the_same_draw(make_cfg, tmp_path, tiny_data) -> None:
    """mask.equalize=truncate (today's dense batches) still trains; the logged losses differ from ragged."""
    train, _ = tiny_data
    common = ("objective.kind=pixel", "optim.steps=3", "mask.usrc=true")
    ragged = run(make_cfg(tmp_path / "ragged", *common), train_dataset=train)
    cut = run(make_cfg(tmp_path / "cut", *common, "mask.equalize=truncate"), train_dataset=train)
    assert ragged.finished and cut.finished
    assert _losses(tmp_path / "ragged") != _losses(tmp_path / "cut")


def test_non_finite_loss_is_caught_at_the_log_interval(make_cfg, tmp_path, tiny_data, monkeypatch) -> None:
    from usjepa_fast.train.engine import Trainer

    train, _ = tiny_data
    real_loss = Trainer.loss

    def nan_loss(self, pred, targets, masks):
        return real_loss(self, pred, targets, masks) * float("nan")

    monkeypatch.setattr(Trainer, "loss", nan_loss)
    cfg = make_cfg(tmp_path / "nan", "objective.kind=pixel", "optim.steps=8", "run.log_every=4", "run.ckpt_every=2")
    with pytest.raises(UsfastError, match="loss became nan by step 2"):
        run(cfg, train_dataset=train)  # the first checkpoint step checks before it saves anything
    assert list_checkpoints(tmp_path / "nan") == []
