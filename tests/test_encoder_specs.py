"""Every encoder spec form x every command that takes an encoder: it works, or it is refused in one line.

Commands, at their library entry points: the SALT teacher (``models.teacher.frozen_teacher``, what
``usfast train`` builds), ``usfast embed`` (``embed.backends.open_backend``, what ``embed_folder``
opens), ``usfast export`` (``export.export_onnx``) and ``usfast probe`` / ``robustness`` /
``compare`` (``probe.features.open_encoder``, the one call all three make). The CLI runs of the
README's command lines are in ``tests/cli/test_readme_flows.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch

from usjepa_fast.errors import UsfastError
from usjepa_fast.export.tensorrt import tensorrt_available

SIZE = 64  # every file-backed form here is a 64-px, patch-16 encoder: a 4x4 token grid
TIMM = "vit_tiny_patch16_224"
FORMS = ("timm", "random", "usfast_file", "run_dir", "checkpoint", "zoo", "onnx", "engine")
COMMANDS = ("teacher", "embed", "export", "probe")
# (form, command) pairs that must be refused, and why
REFUSED = {
    ("onnx", "teacher"): "ONNX / TensorRT file",
    ("engine", "teacher"): "ONNX / TensorRT file",
    ("onnx", "export"): "ONNX file",
    ("engine", "export"): "TensorRT file",
    ("engine", "embed"): "TensorRT",
    ("engine", "probe"): "TensorRT",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from usjepa_fast.export import export_onnx
    from usjepa_fast.models import create
    from usjepa_fast.models.frozen import save_export_ready

    root = tmp_path_factory.mktemp("specs")
    torch.manual_seed(0)
    student = create("usjepa_vit_tiny", img_size=SIZE, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    st = save_export_ready(student, student.encoder_info("student", (0.4,) * 3, (0.2,) * 3), root / "run" / "student")
    vit = timm.create_model(TIMM, pretrained=False, img_size=SIZE, num_classes=0, global_pool="avg", fc_norm=False)
    ckpt = root / "foreign.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in vit.state_dict().items()}}, ckpt)
    urfm = root / "urfm.pth"  # URFM's release layout: the encoder under ema_state_dict, MAE decoder keys
    torch.save({"ema_state_dict": {**vit.state_dict(), "mask_token": torch.zeros(1, 1, 192)}}, urfm)
    onnx = export_onnx(str(st), root / "onnx" / "student.onnx", exporter="torchscript").onnx_path
    engine = root / "engine" / "student.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"not a real engine")
    (engine.with_suffix(".json")).write_text(onnx.with_suffix(".json").read_text())
    return {"student": st, "ckpt": ckpt, "urfm": urfm, "onnx": onnx, "engine": engine}


@pytest.fixture(autouse=True)
def tiny_urfm(monkeypatch):
    """The zoo's URFM entry at ViT-Tiny size: same loader, layout rules and normalisation, tiny weights."""
    from usjepa_fast.models.zoo import ZOO

    kwargs = {**ZOO["URFM"].timm_kwargs, "img_size": SIZE}
    monkeypatch.setitem(ZOO, "URFM", dataclasses.replace(ZOO["URFM"], timm_name=TIMM, timm_kwargs=kwargs))


def _spec(form: str, files: dict[str, Path]) -> tuple[str, str | None]:
    """(spec, arch) as a user would pass them."""
    return {
        "timm": (TIMM, None),
        "random": (f"random:{files['student'].parent}@1", None),
        "usfast_file": (str(files["student"]), None),
        "run_dir": (str(files["student"].parent), None),
        "checkpoint": (str(files["ckpt"]), TIMM),
        "zoo": (f"zoo:URFM={files['urfm']}", None),
        "onnx": (str(files["onnx"]), None),
        "engine": (str(files["engine"]), None),
    }[form]


def _run(command: str, spec: str, arch: str | None, tmp_path: Path) -> int:
    """Open ``spec`` the way ``command`` does and use it once; returns the feature width."""
    if command == "teacher":
        from usjepa_fast.models.teacher import frozen_teacher

        teacher = frozen_teacher(spec, arch, grid=(4, 4))
        tokens = teacher(torch.randn(2, 3, SIZE, SIZE))
        assert tokens.shape[:2] == (2, 16)
        return int(tokens.shape[-1])
    if command == "export":
        from usjepa_fast.export import export_onnx

        # img_size only rebuilds the forms whose size is not their own (a timm name); others keep theirs
        res = export_onnx(spec, tmp_path / "out.onnx", arch=arch, img_size=SIZE, exporter="torchscript")
        assert res.parity.cosine_min > 0.9999 and res.info.input_size == SIZE
        return int(res.info.width)
    if command == "embed":
        from usjepa_fast.embed.backends import open_backend

        backend = "auto" if Path(spec).suffix in (".onnx", ".engine") else "torch"
        fn = open_backend(spec, backend=backend, device="cpu", arch=arch, img_size=SIZE if spec == TIMM else None)
    else:
        from usjepa_fast.probe.features import open_encoder

        fn = open_encoder(spec, arch=arch, device="cpu")
    s = int(fn.info.input_size)
    x = torch.rand(2, 3, s, s)
    out = fn(x)
    assert out.shape == (2, fn.info.width) and torch.isfinite(out).all()
    return int(out.shape[-1])


WIDTH = {"timm": 192, "checkpoint": 192, "zoo": 192}  # the tiny student is 32 wide


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("form", FORMS)
def test_every_form_in_every_command(form: str, command: str, files, tmp_path) -> None:
    spec, arch = _spec(form, files)
    refusal = REFUSED.get((form, command))
    if refusal is not None and form == "engine" and command in ("embed", "probe") and tensorrt_available():
        pytest.skip("TensorRT is installed: the fake engine would fail to deserialise instead")
    if refusal is None:
        assert _run(command, spec, arch, tmp_path) == WIDTH.get(form, 32)
        return
    with pytest.raises(UsfastError, match=refusal) as exc:
        _run(command, spec, arch, tmp_path)
    assert "\n" not in str(exc.value), str(exc.value)


@pytest.mark.parametrize("command", COMMANDS)
def test_contradicting_arch_is_refused_in_every_command(command: str, files, tmp_path) -> None:
    spec = str(files["student"].parent)  # its sidecar says vit_tiny_patch16_224
    with pytest.raises(UsfastError, match="arch=vit_base_patch16_224 was given") as exc:
        _run(command, spec, "vit_base_patch16_224", tmp_path)
    assert "\n" not in str(exc.value)
