"""Context encoder (gathered tokens, timm compatibility, kernel call site) and predictor shapes."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

import usjepa_fast.models.vit as vit_mod
from usjepa_fast.errors import UsfastError
from usjepa_fast.models import Predictor, apply_masks, create, list_models
from usjepa_fast.models.frozen import save_export_ready

TINY = dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2)


def _student():
    return create("usjepa_vit_tiny", **TINY).eval()


def test_gathered_forward_matches_full_when_keeping_all() -> None:
    s = _student()
    x = torch.randn(2, 3, 64, 64)
    all_idx = torch.arange(16).expand(2, -1)
    assert torch.allclose(s(x, all_idx), s(x), atol=1e-6)
    keep = torch.stack([torch.randperm(16)[:7].sort().values for _ in range(2)])
    out = s(x, keep)
    assert out.shape == (2, 7, 64)
    # same encoder on all tokens with dropped keys masked gives the same kept outputs
    keep_mask = torch.zeros(2, 16, dtype=torch.bool).scatter_(1, keep, True)
    masked = s.forward_masked(x, keep_mask)
    assert torch.allclose(apply_masks(masked, keep), out, atol=1e-5)


def test_attention_goes_through_kernel_call_site(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = vit_mod.masked_attention

    def spy(q, k, v, seq_lens=None):
        calls.append(q.shape)
        return real(q, k, v, seq_lens)

    monkeypatch.setattr(vit_mod, "masked_attention", spy)
    s = _student()
    s(torch.randn(1, 3, 64, 64), torch.arange(5)[None])
    assert len(calls) == 2 and calls[0] == (1, 2, 5, 32)  # (B, H, K, hd): only kept tokens


def test_pos_embed_is_fixed_sincos_and_frozen() -> None:
    s = _student()
    assert not s.pos_embed.requires_grad
    assert s.pos_embed.shape == (1, 16, 64)
    names = {n for n, p in s.named_parameters() if p.requires_grad}
    assert "pos_embed" not in names and "patch_embed.proj.weight" in names


def test_export_loads_into_timm_with_same_features(tmp_path) -> None:
    s = _student()
    info = s.encoder_info("t", (0.5,) * 3, (0.25,) * 3)
    path = save_export_ready(s, info, tmp_path / "student.safetensors")
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["timm_kwargs"]["class_token"] is False and sidecar["timm_kwargs"]["global_pool"] == "avg"
    model = timm.create_model(sidecar["timm_name"], pretrained=False, **sidecar["timm_kwargs"]).eval()
    model.load_state_dict(load_file(str(path)), strict=True)
    x = torch.randn(3, 3, 64, 64)
    assert torch.allclose(model(x), s.pooled(x), atol=1e-5)
    assert torch.allclose(model.forward_features(x), s.forward_features(x), atol=1e-5)


@pytest.mark.parametrize("per_block", [True, False])
@pytest.mark.parametrize("teacher_dim", [48, 64, 96])
def test_predictor_outputs_teacher_width(per_block: bool, teacher_dim: int) -> None:
    s = _student()
    p = create(
        "predictor_tiny",
        in_dim=64,
        out_dim=teacher_dim,
        grid=(4, 4),
        embed_dim=32,
        depth=1,
        num_heads=2,
        per_block=per_block,
    )
    x = torch.randn(2, 3, 64, 64)
    ctx_idx = torch.tensor([[0, 1, 2, 4, 5, 6], [8, 9, 10, 12, 13, 14]])
    tgt_idx = torch.tensor([[3, 7, 11, 15], [0, 1, 2, 3]])  # 2 blocks of 2 tokens
    out = p(s(x, ctx_idx), ctx_idx, tgt_idx, num_target_blocks=2)
    assert out.shape == (2, 4, teacher_dim)


def test_per_block_prediction_ignores_other_blocks() -> None:
    p = Predictor(grid=(4, 4), in_dim=16, out_dim=8, embed_dim=16, depth=2, num_heads=2, per_block=True).eval()
    ctx = torch.randn(1, 5, 16)
    ctx_idx = torch.tensor([[0, 1, 2, 4, 5]])
    a = p(ctx, ctx_idx, torch.tensor([[10, 11, 14, 15]]), num_target_blocks=2)
    b = p(ctx, ctx_idx, torch.tensor([[10, 11, 6, 7]]), num_target_blocks=2)
    assert torch.allclose(a[:, :2], b[:, :2], atol=1e-6), "block 0 must not see block 1's mask tokens"
    assert not torch.allclose(a[:, 2:], b[:, 2:])


def test_registry_names_and_errors() -> None:
    names = list_models()
    for n in (
        "usjepa_vit_tiny",
        "usjepa_vit_small",
        "usjepa_vit_base",
        "usjepa_vit_large",
        "predictor_base",
        "teacher_vit_base_urfm",
    ):
        assert n in names
    with pytest.raises(UsfastError, match="unknown model"):
        create("vit_giant_nope")
    with pytest.raises(UsfastError, match="no option"):
        create("usjepa_vit_tiny", bogus=1)
    with pytest.raises(UsfastError, match="in_dim"):
        create("predictor_base")
    with pytest.raises(UsfastError, match="weights"):
        create("teacher_vit_base_urfm", grid=(14, 14))
