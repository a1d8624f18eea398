"""SALT teachers: checkpoint layouts in the wild, normalisation conversion, freezing, EMA update."""

from __future__ import annotations

import pytest
import timm
import torch

from usjepa_fast.errors import CheckpointError, UsfastError
from usjepa_fast.models import create, ema_teacher, frozen_teacher

ARCH = "vit_tiny_patch16_224"  # width 192, patch 16


@pytest.fixture(scope="module")
def source_vit() -> torch.nn.Module:
    torch.manual_seed(1)
    # the layout resolve_encoder builds for a raw checkpoint: class token kept, avg pool, no fc_norm
    return timm.create_model(
        ARCH, pretrained=False, img_size=64, num_classes=0, global_pool="avg", fc_norm=False
    ).eval()


def _layouts(sd: dict[str, torch.Tensor]) -> dict[str, object]:
    mae = {
        **sd,
        "mask_token": torch.zeros(1, 1, 192),
        "decoder_embed.weight": torch.zeros(128, 192),
        "decoder_pos_embed": torch.zeros(1, 17, 128),
        "decoder_pred.weight": torch.zeros(768, 128),
    }
    return {
        "plain": sd,
        "model": {"model": sd, "epoch": 3},
        "state_dict": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "ema_state_dict_mae": {"ema_state_dict": mae, "optimizer": {}},  # URFM-style
    }


@pytest.mark.parametrize("layout", ["plain", "model", "state_dict", "ema_state_dict_mae"])
def test_teacher_loads_each_layout(tmp_path, source_vit, layout: str) -> None:
    path = tmp_path / f"{layout}.pth"
    torch.save(_layouts(source_vit.state_dict())[layout], path)
    teacher = frozen_teacher(str(path), ARCH, grid=(4, 4))
    assert teacher.width == 192 and teacher.input_size == 64
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.encoder.training
    x = torch.randn(2, 3, 64, 64)
    teacher.set_input_normalisation(teacher.mean.flatten().tolist(), teacher.std.flatten().tolist())
    tokens = teacher(x)
    assert tokens.shape == (2, 16, 192)
    with torch.no_grad():
        ref = source_vit.forward_features(x)[:, 1:]  # class token dropped
    assert torch.allclose(tokens, ref, atol=1e-5)


def test_teacher_converts_student_normalisation(tmp_path, source_vit) -> None:
    path = tmp_path / "t.pth"
    torch.save(source_vit.state_dict(), path)
    teacher = frozen_teacher(str(path), ARCH, grid=(4, 4))
    raw = torch.rand(1, 3, 64, 64)
    s_mean, s_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    teacher.set_input_normalisation(s_mean, s_std)
    student_in = (raw - 0.5) / 0.25
    t_in = (raw - teacher.mean) / teacher.std
    with torch.no_grad():
        ref = source_vit.forward_features(t_in)[:, 1:]
    assert torch.allclose(teacher(student_in), ref, atol=1e-4)


def test_teacher_resizes_to_match_student_grid(tmp_path, source_vit) -> None:
    path = tmp_path / "t.pth"
    torch.save(source_vit.state_dict(), path)
    teacher = frozen_teacher(str(path), ARCH, grid=(6, 6))  # student 12x12 grid of patch 8 at 96 px
    assert teacher.input_size == 96
    assert teacher(torch.randn(1, 3, 96, 96)).shape == (1, 36, 192)


def test_wrong_checkpoint_lists_missing_keys(tmp_path, source_vit) -> None:
    sd = {k: v for k, v in source_vit.state_dict().items() if not k.startswith("blocks.11.")}
    path = tmp_path / "broken.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match="missing keys: blocks.11"):
        frozen_teacher(str(path), ARCH, grid=(4, 4))


def test_usfast_export_as_teacher_needs_matching_grid(tmp_path) -> None:
    from usjepa_fast.models.frozen import save_export_ready

    s = create("usjepa_vit_tiny", img_size=64, patch_size=16, embed_dim=64, depth=1, num_heads=2)
    info = s.encoder_info("s", (0.5,) * 3, (0.25,) * 3)
    path = save_export_ready(s, info, tmp_path / "student.safetensors")
    teacher = frozen_teacher(str(tmp_path), None, grid=(4, 4))  # run dir resolves to student.safetensors
    assert teacher.width == 64
    teacher.set_input_normalisation((0.5,) * 3, (0.25,) * 3)
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(teacher(x), s.eval().forward_features(x), atol=1e-5)
    with pytest.raises(UsfastError, match="student grid"):
        frozen_teacher(str(path), None, grid=(6, 6))


def test_ema_update_formula() -> None:
    s = create("usjepa_vit_tiny", img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    t = ema_teacher(s, (0.5,) * 3, (0.25,) * 3)
    before = [p.clone() for p in t.encoder.parameters()]
    with torch.no_grad():
        for p in s.parameters():
            p.add_(1.0)
    t.ema_update(s, 0.9)
    for b, tp, sp in zip(before, t.encoder.parameters(), s.parameters(), strict=True):
        assert torch.allclose(tp, 0.9 * b + 0.1 * sp, atol=1e-6)
    assert t(torch.randn(1, 3, 32, 32)).shape == (1, 4, 32)


def _tiny_run(tmp_path, size: int = 64):
    """A run directory as `usfast train pixel_teacher_vitb16` writes it (student named usjepa_vit_base)."""
    from usjepa_fast.models.frozen import save_export_ready

    s = create("usjepa_vit_base", img_size=size, patch_size=16, embed_dim=32, depth=1, num_heads=2).eval()
    save_export_ready(s, s.encoder_info("pixel", (0.4,) * 3, (0.2,) * 3), tmp_path / "run" / "student.safetensors")
    return s, tmp_path / "run"


def test_run_dir_teacher_with_the_recipes_arch(tmp_path) -> None:
    """README typical run: salt_vitb16_paper sets teacher.arch=vit_base_patch16_224; the run dir is read
    through its sidecar (this used to die in timm's pos-embed resampler)."""
    s, run = _tiny_run(tmp_path)
    teacher = frozen_teacher(str(run), "vit_base_patch16_224", grid=(4, 4))
    assert teacher.width == 32 and teacher.mean.flatten().tolist() == pytest.approx([0.4] * 3)
    teacher.set_input_normalisation((0.4,) * 3, (0.2,) * 3)
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(teacher(x), s.forward_features(x), atol=1e-5)
    with pytest.raises(UsfastError, match="arch=vit_small_patch16_224") as exc:
        frozen_teacher(str(run), "vit_small_patch16_224", grid=(4, 4))
    assert "\n" not in str(exc.value)


def test_grid_mismatch_names_the_real_config_key(tmp_path) -> None:
    _, run = _tiny_run(tmp_path)
    with pytest.raises(UsfastError, match=r"set data\.image_size=32 \(model\.patch_size 8\)") as exc:
        frozen_teacher(str(run), None, grid=(6, 6), student_patch=8)
    assert "student.img_size" not in str(exc.value) and "\n" not in str(exc.value)


@pytest.fixture
def tiny_urfm(monkeypatch, tmp_path, source_vit):
    """The zoo's URFM entry shrunk to ViT-Tiny (same layout rules), and a checkpoint in URFM's release layout."""
    import dataclasses

    from usjepa_fast.models.zoo import ZOO

    kwargs = {"num_classes": 0, "global_pool": "avg", "fc_norm": False, "img_size": 64}
    monkeypatch.setitem(
        ZOO, "URFM", dataclasses.replace(ZOO["URFM"], timm_name=ARCH, timm_kwargs=kwargs, input_size=64)
    )
    path = tmp_path / "urfm.pth"
    torch.save(_layouts(source_vit.state_dict())["ema_state_dict_mae"], path)
    return path


def test_normalisation_has_one_source_of_truth(tiny_urfm, caplog) -> None:
    """A raw checkpoint gets timm's default unless teacher.mean/std say otherwise; zoo:URFM gets the zoo's."""
    from usjepa_fast.models.registry import IMAGENET_MEAN, IMAGENET_STD

    raw = frozen_teacher(str(tiny_urfm), ARCH, grid=(4, 4))
    assert raw.mean.flatten().tolist() == pytest.approx([0.5] * 3)  # timm's default for vit_tiny (pretrained=False)
    set_ = frozen_teacher(str(tiny_urfm), ARCH, grid=(4, 4), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert set_.std.flatten().tolist() == pytest.approx(list(IMAGENET_STD))
    with caplog.at_level("INFO", logger="usfast"):
        zoo = frozen_teacher(f"zoo:URFM={tiny_urfm}", ARCH, grid=(4, 4))
    assert zoo.mean.flatten().tolist() == pytest.approx(list(IMAGENET_MEAN))
    line = next(r.getMessage() for r in caplog.records if "normalisation" in r.getMessage())
    assert "mean=(0.485, 0.456, 0.406)" in line and "the zoo entry" in line and "width 192" in line
    # the same weights either way (the zoo's ema_state_dict is what the raw loader picks too)
    x = torch.randn(1, 3, 64, 64)
    zoo.set_input_normalisation(IMAGENET_MEAN, IMAGENET_STD)
    set_.set_input_normalisation(IMAGENET_MEAN, IMAGENET_STD)
    assert torch.allclose(zoo(x), set_(x), atol=1e-5)
    # the registry's URFM teacher is the zoo entry
    from usjepa_fast.models import create as create_model

    reg = create_model("teacher_vit_base_urfm", weights=str(tiny_urfm), grid=(4, 4))
    assert reg.mean.flatten().tolist() == pytest.approx(list(IMAGENET_MEAN))


def test_teacher_resamples_a_zoo_checkpoint_to_the_student_grid(tiny_urfm) -> None:
    teacher = frozen_teacher(f"zoo:URFM={tiny_urfm}", None, grid=(2, 2))
    assert teacher.input_size == 32 and teacher(torch.randn(1, 3, 32, 32)).shape == (1, 4, 192)


def test_runtime_files_cannot_be_teachers(tmp_path) -> None:
    with pytest.raises(UsfastError, match="ONNX / TensorRT file") as exc:
        frozen_teacher(str(tmp_path / "teacher.onnx"), None, grid=(4, 4))
    assert "\n" not in str(exc.value)


def _compute_dtypes(teacher) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    first_linear = next(m for m in teacher.encoder.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize("bf16", [True, False])
def test_ema_target_runs_under_the_given_precision(bf16: bool) -> None:
    """I-JEPA mode: the target encoder follows run.precision (it used to be forced to fp32)."""
    s = create("usjepa_vit_tiny", img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2)
    t = ema_teacher(s, (0.5,) * 3, (0.25,) * 3, bf16=bf16)
    seen = _compute_dtypes(t)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not bf16):  # the caller's autocast does not decide
        out = t(torch.randn(1, 3, 32, 32))
    assert seen == [torch.bfloat16 if bf16 else torch.float32] and out.dtype == torch.float32
