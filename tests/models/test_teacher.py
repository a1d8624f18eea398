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
