"""End to end on the built-in synthetic data: corpus split, `usfast train` (stage 1 -> stage 2), `usfast masks`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from usjepa_fast.cli.main import app
from usjepa_fast.train.config import DataConfig
from usjepa_fast.train.data import build_pretrain_data

TINY = [
    "data.image_size=64",
    "data.batch_size=4",
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.predictor_embed_dim=32",
    "model.predictor_depth=1",
    "model.predictor_num_heads=2",
    "optim.steps=3",
    "optim.warmup_steps=1",
    "run.progress=false",
    "run.num_threads=1",
    "run.val_every=3",
]


def test_corpus_split_is_disjoint_and_deterministic(synth_root) -> None:
    cfg = DataConfig(sources=[str(synth_root / "ultrabench")], image_size=64, val_fraction=0.1)
    data, data2 = build_pretrain_data(cfg, patch_size=8, seed=0), build_pretrain_data(cfg, patch_size=8, seed=0)
    train, val, sizes = data.train, data.val, data.sizes
    train2, val2 = data2.train, data2.val
    assert set(train.indices).isdisjoint(val.indices)
    assert train.indices == train2.indices and val.indices == val2.indices
    assert len(val) >= 1 and sizes == [len(train)]  # one source: one member, a permutation per epoch
    item = train[0]
    assert item["image"].shape == (3, 64, 64) and item["valid_patches"].shape == (8, 8)


def test_several_sources_give_contiguous_member_sizes_for_the_sampler(synth_root) -> None:
    from usjepa_fast.data.sampler import CorpusSampler

    sources = [str(synth_root / "ultrabench"), str(synth_root / "clips")]
    cfg = DataConfig(sources=sources, image_size=32, val_fraction=0.1, every_k=4, cap=10)
    data = build_pretrain_data(cfg, patch_size=16, seed=0)
    train, sizes = data.train, data.sizes
    assert len(sizes) == 2 and sum(sizes) == len(train)
    members = [train.dataset.locate(i)[0] for i in train.indices]
    assert members == sorted(members) and [members.count(d) for d in (0, 1)] == sizes  # contiguous blocks
    sampler = CorpusSampler(sizes, cfg.cap, seed=0)
    assert sampler.quotas.tolist() == [min(n, 10) for n in sizes]  # min(size, cap) per member


def test_cli_stage1_then_stage2(synth_root, tmp_path) -> None:
    runner = CliRunner()
    src = f"data.sources=[{synth_root / 'ultrabench'}]"
    stage1 = tmp_path / "pixel"
    args = ["train", "pixel_teacher_tiny_cpu", "--out", str(stage1), "--set", src]
    for o in TINY:
        args += ["--set", o]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "export-ready student" in res.output and (stage1 / "student.json").is_file()

    stage2 = tmp_path / "salt"
    args = ["train", "salt_tiny_cpu", "--out", str(stage2), "--set", src, "--set", f"teacher.spec={stage1}"]
    for o in TINY:
        args += ["--set", o]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((stage2 / "summary.json").read_text())
    assert summary["step"] == 3 and summary["best_val_loss"] is not None
    saved = (stage2 / "config.yaml").read_text()
    assert "kind: salt" in saved and str(stage1) in saved
    # a bare resume of the run folder: no --set repeated (teacher.spec comes from its config.yaml)
    res = runner.invoke(app, ["train", "--resume", str(stage2), "--set", "optim.steps=4"])
    assert res.exit_code == 0, res.output
    assert "finished at step 4/4" in res.output and (stage2 / "config_history" / "000.yaml").is_file()
    res = runner.invoke(app, ["train", "--resume", str(stage2), "--set", "optim.lr=1"])
    assert res.exit_code != 0 and "optim.lr=1.0 differs from the run's" in str(res.exception)


def test_cli_bad_override_is_one_line_error(tmp_path) -> None:
    res = CliRunner().invoke(app, ["train", "salt_tiny_cpu", "--set", "optim.nope=1"])
    assert res.exit_code != 0
    assert "optim.nope" in str(res.exception)


@pytest.mark.parametrize("usrc", ["--usrc", "--no-usrc"])
def test_cli_masks_preview(synth_root, tmp_path, usrc: str) -> None:
    out = tmp_path / "preview.png"
    res = CliRunner().invoke(
        app, ["masks", str(synth_root / "ultrabench"), "--out", str(out), "--n", "3", "--image-size", "128", usrc]
    )
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 10_000


def test_pretrain_two_stage_demo_call(synth_root, tmp_path) -> None:
    from usjepa_fast.models.resolve import resolve_encoder
    from usjepa_fast.train import pretrain_two_stage

    tiny = [o for o in TINY if not o.startswith("optim.steps")]
    result = pretrain_two_stage(
        [synth_root / "ultrabench"], tmp_path / "demo", teacher_steps=2, student_steps=2, overrides=tiny, progress=False
    )
    assert result.teacher.finished and result.student.finished
    enc = resolve_encoder(result.student_path)
    assert enc.info.width == 32 and enc.info.input_size == 64
    from usjepa_fast.train.engine import read_run_summary

    stored = read_run_summary(tmp_path / "demo" / "student")  # what summary.json holds, read back
    assert stored is not None and stored.finished and stored.student_path == result.student_path
    assert (stored.step, stored.total_steps, stored.final_loss) == (2, 2, result.student.final_loss)
    assert read_run_summary(tmp_path / "nowhere") is None
