"""The README's typical-run command lines, run through the CLI at tiny size on the synthetic data.

    usfast train pixel_teacher_vitb16 --set 'data.sources=[...]' --out runs/teacher
    usfast train salt_vitb16_paper --set 'data.sources=[...]' --set teacher.spec=runs/teacher --out runs/salt
    usfast train salt_vitb16_paper ... --set teacher.spec=zoo:URFM=urfm.pth
    usfast embed DATA -e zoo:... -o feats/ ; usfast probe DATA -e zoo:... ; usfast compare -e ... -e zoo:...

Only sizes, steps and speed switches are overridden (``--set``); the recipes' own keys -- notably
``teacher.arch: vit_base_patch16_224`` of ``salt_vitb16_paper`` -- stay as shipped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from usjepa_fast.cli.main import app
from usjepa_fast.errors import UsfastError

# tiny and fast; everything else (objective, masks, teacher.arch, optimiser family) is the recipe's
TINY = [
    "data.image_size=128",
    "data.batch_size=4",
    "data.num_workers=0",
    "model.embed_dim=32",
    "model.depth=1",
    "model.num_heads=2",
    "model.predictor_embed_dim=32",
    "model.predictor_depth=1",
    "model.predictor_num_heads=2",
    "optim.steps=2",
    "optim.warmup_steps=1",
    "run.compile=false",
    "run.precision=fp32",
    "run.progress=false",
    "run.num_threads=1",
    "run.val_every=2",
    "run.ckpt_every=2",
    "run.val_batches=1",
]


def _invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def _train(recipe: str, out: Path, data: Path, *extra: str):
    args = ["train", recipe, "--set", f"data.sources=[{data}]", "--out", str(out)]
    for item in [*TINY, *extra]:
        args += ["--set", item]
    return _invoke(*args)


@pytest.fixture(scope="module")
def data(synth_root) -> Path:
    return synth_root / "ultrabench"


@pytest.fixture(scope="module")
def teacher_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "teacher"
    res = _train("pixel_teacher_vitb16", out, data)
    assert "export-ready student" in res.output
    return out


@pytest.fixture(scope="module")
def salt_run(data, teacher_run, tmp_path_factory) -> Path:
    """``usfast train salt_vitb16_paper --set teacher.spec=runs/teacher`` (the recipe keeps teacher.arch)."""
    out = tmp_path_factory.mktemp("runs") / "salt"
    _train("salt_vitb16_paper", out, data, f"teacher.spec={teacher_run}", "teacher.bf16=false")
    return out


def test_pixel_teacher_then_salt_paper_recipe_with_its_teacher_arch(teacher_run, salt_run) -> None:
    saved = (salt_run / "config.yaml").read_text()
    assert "arch: vit_base_patch16_224" in saved and str(teacher_run) in saved  # the recipe's arch was set
    summary = json.loads((salt_run / "summary.json").read_text())
    assert summary["step"] == 2 and summary["best_val_loss"] is not None
    sidecar = json.loads((salt_run / "student.json").read_text())
    assert sidecar["timm_name"] == "vit_base_patch16_224" and sidecar["width"] == 32


@pytest.fixture(scope="module")
def urfm_checkpoint(tmp_path_factory) -> Path:
    """A ViT-B/16 in URFM's release layout (the encoder under ema_state_dict, MAE decoder keys), random
    fp16 weights built from the shapes alone (no timm init of 86M parameters)."""
    import timm

    with torch.device("meta"):
        vit = timm.create_model(
            "vit_base_patch16_224", pretrained=False, num_classes=0, global_pool="avg", fc_norm=False
        )
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, value in vit.state_dict().items():
        if value.ndim == 1 and "norm" in key and key.endswith("weight"):
            state[key] = torch.ones(value.shape, dtype=torch.float16)
        else:
            state[key] = (torch.randn(value.shape, generator=g) * 0.02).to(torch.float16)
    state["mask_token"] = torch.zeros(1, 1, 768, dtype=torch.float16)
    state["decoder_embed.weight"] = torch.zeros(512, 768, dtype=torch.float16)
    path = tmp_path_factory.mktemp("urfm") / "urfm.pth"
    torch.save({"ema_state_dict": state, "epoch": 400}, path)
    return path


@pytest.mark.slow
def test_salt_with_a_zoo_urfm_teacher(data, urfm_checkpoint, tmp_path, caplog) -> None:
    """``--set teacher.spec=zoo:URFM=urfm.pth``: the zoo entry's layout, normalisation and arch apply."""
    out = tmp_path / "salt_urfm"
    with caplog.at_level(logging.INFO, logger="usfast"):
        _train("salt_vitb16_paper", out, data, f"teacher.spec=zoo:URFM={urfm_checkpoint}", "teacher.bf16=false")
    line = next(
        r.getMessage() for r in caplog.records if r.getMessage().startswith("teacher ") and "width" in r.getMessage()
    )
    assert "width 768" in line and "input 128px" in line and "mean=(0.485, 0.456, 0.406)" in line
    assert "the zoo entry" in line and "zoo:URFM=" in line
    assert json.loads((out / "summary.json").read_text())["step"] == 2


def test_embed_probe_compare_with_zoo_encoders(data, teacher_run, salt_run, tmp_path) -> None:
    student = f"zoo:US-JEPA={salt_run}"  # the zoo's usfast-loader entry over our own run
    res = _invoke(
        "embed", str(data), "-e", student, "-o", str(tmp_path / "feats"), "--backend", "torch", "--device", "cpu"
    )
    assert "index:" in res.output and (tmp_path / "feats" / "index.csv").is_file()

    cache = tmp_path / "cache"
    common = ["--seeds", "0", "--device", "cpu", "--cache", str(cache)]
    res = _invoke("probe", str(data), "-e", student, "--preset", "paper", "--out", str(tmp_path / "probe"), *common)
    assert "US-JEPA" in res.output and "per-class F1" in res.output

    res = _invoke(
        "compare",
        "-e",
        str(salt_run / "student.safetensors"),
        "-e",
        f"zoo:US-JEPA={teacher_run}",
        "-e",
        f"random:{salt_run}@1",
        "--name",
        "SALT",
        "--name",
        "pixel teacher",
        "--name",
        "random init",
        "-d",
        str(data),
        "--arch",
        "vit_base_patch16_224",  # compare's new --arch: agrees with every sidecar here
        "--pool",
        "mean",
        "--out",
        str(tmp_path / "cmp"),
        *common,
    )
    assert all(f"| {row} |" in res.output for row in ("SALT", "pixel teacher", "random init")), res.output
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert {r["encoder"] for r in results["results"]} == {"SALT", "pixel teacher", "random init"}


def test_compare_refuses_a_contradicting_arch_in_one_line(data, salt_run, tmp_path) -> None:
    with pytest.raises(UsfastError, match="arch=vit_small_patch16_224 was given") as exc:
        CliRunner().invoke(
            app,
            [
                "compare",
                "-e",
                str(salt_run),
                "-d",
                str(data),
                "--arch",
                "vit_small_patch16_224",
                "--out",
                str(tmp_path),
            ],
            catch_exceptions=False,
        )
    assert "\n" not in str(exc.value)
