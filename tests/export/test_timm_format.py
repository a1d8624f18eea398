"""``usfast export --format timm``: a folder timm loads by itself (no usfast on the path) with usfast's features."""

from __future__ import annotations

import dataclasses
import json
import site
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

from usjepa_fast.errors import CheckpointError, UsfastError
from usjepa_fast.export import ExportParityError, export_timm
from usjepa_fast.export.timm_format import load_timm_dir
from usjepa_fast.models import create
from usjepa_fast.models.frozen import save_export_ready
from usjepa_fast.models.resolve import EncoderSpec, resolve_encoder
from usjepa_fast.models.zoo import ZOO

SIZE = 32
TINY = {"embed_dim": 24, "depth": 2, "num_heads": 2, "num_classes": 0}


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A usfast SALT student (no class token, mean pool) with its own normalisation."""
    torch.manual_seed(0)
    s = create("usjepa_vit_small", img_size=SIZE, patch_size=16, embed_dim=32, depth=2, num_heads=2)
    root = tmp_path_factory.mktemp("run")
    return save_export_ready(s, s.encoder_info("salt-student", (0.31,) * 3, (0.22,) * 3), root / "student")


# The child process: python -I -S (no PYTHONPATH, no user site, no .pth files, so no editable
# install of usfast) with only the interpreter's site-packages directories on sys.path.
CHILD = r"""
import sys
sys.path.extend(sys.argv[3:])
try:
    import usjepa_fast
except ImportError:
    pass
else:
    raise SystemExit("usjepa_fast is importable in the child: " + usjepa_fast.__file__)
import timm, torch
model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
x = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save({"pooled": model(x), "cfg": dict(model.pretrained_cfg)}, sys.argv[2] + ".out")
"""


def test_student_folder_loads_in_timm_without_usfast(student, tmp_path) -> None:
    res = export_timm(str(student), tmp_path / "salt_timm")
    assert sorted(p.name for p in res.out_dir.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads(res.config_path.read_text())
    assert cfg["architecture"] == "vit_small_patch16_224" and cfg["num_classes"] == 0
    assert cfg["global_pool"] == "avg" and cfg["model_args"]["class_token"] is False
    assert cfg["model_args"]["img_size"] == SIZE and cfg["num_features"] == 32
    pre = cfg["pretrained_cfg"]
    assert pre["input_size"] == [3, SIZE, SIZE] and pre["mean"] == [0.31] * 3 and pre["std"] == [0.22] * 3
    assert pre["interpolation"] == "bilinear" and pre["crop_pct"] == 1.0
    assert cfg["usfast"]["pool"] == "mean" and cfg["usfast"]["parity"]["cosine_min"] > 0.99999

    x = torch.rand(3, 3, SIZE, SIZE)
    torch.save(x, tmp_path / "x.pt")
    paths = [p for p in site.getsitepackages() if Path(p).is_dir()]
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CHILD, str(res.out_dir), str(tmp_path / "x.pt"), *paths],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = torch.load(tmp_path / "x.pt.out")
    assert list(out["cfg"]["mean"]) == [0.31] * 3 and tuple(out["cfg"]["input_size"]) == (3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(out["pooled"], resolve_encoder(str(student))(x), rtol=1e-5, atol=1e-5)


def _zoo_variant(name: str, timm_name: str, **kwargs):
    entry = ZOO[name]
    return dataclasses.replace(entry, timm_name=timm_name, timm_kwargs={**entry.timm_kwargs, **kwargs}, input_size=SIZE)


@pytest.mark.parametrize(
    ("name", "timm_name", "pool"),
    [
        ("USFM", "beit_base_patch16_224", None),  # fc_norm after mean pooling
        ("DINOv2", "vit_small_patch16_224", None),  # class token
        ("DINOv2", "vit_small_patch16_224", "mean"),  # pooling changed from the entry's: model_args follow
    ],
)
def test_field_encoders_keep_their_pooling_in_timm(name, timm_name, pool, tmp_path) -> None:
    kwargs = {**TINY, "img_size": SIZE, "patch_size": 16}
    native = timm.create_model(timm_name, pretrained=False, **kwargs)
    ckpt = tmp_path / "w.pth"
    torch.save({"model": native.state_dict()}, ckpt)
    entry = _zoo_variant(name, timm_name, **kwargs)
    enc = resolve_encoder(EncoderSpec.for_zoo(entry, ckpt), pool=pool)
    res = export_timm(enc, tmp_path / "out")
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(load_timm_dir(res.out_dir)(x), enc(x), rtol=1e-5, atol=1e-5)
    assert json.loads(res.config_path.read_text())["usfast"]["pool"] == enc.info.pool


def test_refusals_write_nothing(student, tmp_path) -> None:
    with pytest.raises(UsfastError, match="pass --out DIR"):
        export_timm(str(student), tmp_path / "model.onnx")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UsfastError, match="already holds notes.txt"):
        export_timm(str(student), busy)
    with pytest.raises(ExportParityError, match="nothing written"):
        export_timm(str(student), tmp_path / "strict", tolerance=(-1.0, 2.0))  # an impossible tolerance
    assert not (tmp_path / "strict").exists() and not list(tmp_path.glob(".strict.tmp-*"))


def test_export_over_an_earlier_export(student, tmp_path) -> None:
    out = tmp_path / "t"
    export_timm(str(student), out)
    first = (out / "model.safetensors").read_bytes()
    res = export_timm(f"random:{student}@3", out)
    assert (out / "model.safetensors").read_bytes() != first
    assert json.loads(res.config_path.read_text())["usfast"]["source"].startswith("random:")


def _cli(*args: str):
    from usjepa_fast.cli.main import app

    return CliRunner().invoke(app, list(args))


def test_cli_format_timm_and_allow_partial(tmp_path) -> None:
    torch.manual_seed(1)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=SIZE, num_classes=0)
    pruned = {k: v for k, v in vit.state_dict().items() if not k.startswith("blocks.11.")}
    ckpt = tmp_path / "pruned.pth"
    torch.save({"state_dict": pruned}, ckpt)
    args = ["export", str(ckpt), "--arch", "vit_tiny_patch16_224", "--img-size", str(SIZE), "--format", "timm"]
    refused = _cli(*args, "--out", str(tmp_path / "a"))
    assert isinstance(refused.exception, CheckpointError) and "--allow-partial" in str(refused.exception)
    done = _cli(*args, "--out", str(tmp_path / "b"), "--allow-partial")
    assert done.exit_code == 0, done.output
    assert "model.safetensors + config.json" in done.output and "local-dir:" in done.output
    again = _cli(*args, "--out", str(tmp_path / "c"))  # the flag held for one command only
    assert isinstance(again.exception, CheckpointError)
    bad = _cli(*args, "--out", str(tmp_path / "d"), "--allow-partial", "--tokens")
    assert isinstance(bad.exception, UsfastError) and "--format timm writes the fp32 encoder;" in str(bad.exception)
