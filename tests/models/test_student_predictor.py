"""Context encoder (gathered tokens, timm compatibility, kernel call site) and predictor; ragged
batches equal running each sample alone, forward and backward; pads get exactly zero gradient."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file

import usjepa_fast.models.kept_tokens as kept_mod  # the attention call site of KernelAttention
from usjepa_fast.errors import UsfastError
from usjepa_fast.kernels import VarlenLayout
from usjepa_fast.masking import RaggedIndex, apply_masks
from usjepa_fast.models import Predictor, create, list_models
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
    real = kept_mod.varlen_attention

    def spy(q, k, v, layout):
        calls.append((tuple(q.shape), layout.lens.tolist()))
        return real(q, k, v, layout)

    monkeypatch.setattr(kept_mod, "varlen_attention", spy)
    s = _student()
    s(torch.randn(1, 3, 64, 64), torch.arange(5)[None])
    assert calls == [((5, 2, 32), [5])] * 2  # packed (T, H, hd): only kept tokens, one call per block
    calls.clear()
    s(torch.randn(2, 3, 64, 64), RaggedIndex(torch.tensor([0, 1, 2, 3, 4, 5, 6]), torch.tensor([[3], [4]])))
    assert calls == [((7, 2, 32), [3, 4])] * 2


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


# -- ragged batches ----------------------------------------------------------------------------


def _ragged(lens_and_idx: list[list[int]], n: int = 16) -> RaggedIndex:
    mask = torch.zeros(len(lens_and_idx), 1, n, dtype=torch.bool)
    for b, keep in enumerate(lens_and_idx):
        mask[b, 0, keep] = True
    return RaggedIndex.from_mask(mask)


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_ragged_student_equals_each_sample_alone_forward_and_backward() -> None:
    s = _student()
    x = torch.randn(3, 3, 64, 64)
    keep = _ragged([list(range(16)), [0, 3, 5, 6, 9, 12, 15], [10]])  # full, 7 tokens, 1 token
    out = s(x, keep)  # (T, D)
    assert out.shape == (24, 64)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    batch_grads = _grads(s)
    s.zero_grad(set_to_none=True)
    start = 0
    for b, seq in enumerate(keep.sequences()):
        solo = s(x[b : b + 1], seq[0][None])[0]  # (K_b, D), the sample alone
        stop = start + len(seq[0])
        torch.testing.assert_close(out[start:stop], solo, rtol=1e-5, atol=1e-5)
        (solo * w[start:stop]).sum().backward()  # gradients accumulate over the solo runs
        start = stop
    solo_grads = _grads(s)
    assert batch_grads.keys() == solo_grads.keys()
    for name, g in batch_grads.items():
        torch.testing.assert_close(g, solo_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_dropped_patches_and_pads_get_exactly_zero_gradient() -> None:
    """Pixels of patches a sample does not keep receive exactly 0 (patch embedding has stride = patch)."""
    s = _student()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    keep = _ragged([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [5, 6]])
    (s(x, keep) ** 2).sum().backward()
    kept_pixels = keep.to_mask(16)[:, 0].view(2, 1, 4, 1, 4, 1).expand(2, 3, 4, 16, 4, 16).reshape(2, 3, 64, 64)
    assert torch.all(x.grad[~kept_pixels] == 0)
    assert torch.all(x.grad[kept_pixels].abs().sum() > 0)
    # The padded form of the same batch, loss over real tokens only (as in training): the pad rows
    # get exactly zero gradient, and whatever they hold does not change the real rows.
    lay = VarlenLayout.from_lens([11, 2])
    packed = torch.randn(13, 64, requires_grad=True)
    padded = lay.pad(packed).detach().requires_grad_()  # (2, 11, 64), rows 2.. of sample 1 are pads
    blk = s.blocks[0].eval()
    real = torch.zeros(2, 11, 1)
    real[0], real[1, :2] = 1.0, 1.0
    (blk(padded, layout=lay) * torch.randn(2, 11, 64) * real).sum().backward()
    assert torch.all(padded.grad[1, 2:] == 0) and padded.grad[1, :2].abs().sum() > 0
    garbage = padded.detach().clone()
    garbage[1, 2:] = 1e3
    torch.testing.assert_close(blk(garbage, layout=lay)[1, :2], blk(padded.detach(), layout=lay)[1, :2])
    # and the padded block computes what the packed block computes on the real rows
    via_padded = lay.unpad(blk(lay.pad(packed), layout=lay))
    torch.testing.assert_close(via_padded, blk(packed, layout=lay), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("per_block", [True, False])
def test_ragged_predictor_equals_each_sample_alone_forward_and_backward(per_block: bool) -> None:
    torch.manual_seed(1)
    p = Predictor(grid=(4, 4), in_dim=24, out_dim=40, embed_dim=32, depth=2, num_heads=2, per_block=per_block)
    p.eval()
    ctx_mask = torch.zeros(3, 1, 16, dtype=torch.bool)
    ctx_mask[0, 0, [0, 1, 2, 4, 5, 6, 8]] = True
    ctx_mask[1, 0, [3, 7]] = True
    ctx_mask[2, 0, :12] = True
    tgt_mask = torch.zeros(3, 2, 16, dtype=torch.bool)
    tgt_mask[0, 0, [10, 11]] = True
    tgt_mask[0, 1, [14, 15, 13]] = True
    tgt_mask[1, 0, [0]] = True
    tgt_mask[1, 1, [8, 9, 12, 13]] = True
    tgt_mask[2, 0, [12, 13, 14]] = True
    tgt_mask[2, 1, [15]] = True
    ctx_idx, tgt_idx = RaggedIndex.from_mask(ctx_mask), RaggedIndex.from_mask(tgt_mask)
    context = torch.randn(ctx_idx.total, 24, requires_grad=True)
    out = p(context, ctx_idx, tgt_idx)  # (Tt, Dt)
    assert out.shape == (tgt_idx.total, 40)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    batch_grads, batch_ctx_grad = _grads(p), context.grad.clone()
    p.zero_grad(set_to_none=True)
    context.grad = None
    c0 = t0 = 0
    for c_seq, t_seqs in zip(ctx_idx.sequences(), tgt_idx.sequences(), strict=True):
        kc, kt = len(c_seq[0]), sum(len(t) for t in t_seqs)
        solo_ctx = RaggedIndex(c_seq[0], torch.tensor([[kc]]))
        solo_tgt = RaggedIndex(torch.cat(t_seqs), torch.tensor([[len(t) for t in t_seqs]]))
        solo = p(context[c0 : c0 + kc], solo_ctx, solo_tgt)
        torch.testing.assert_close(out[t0 : t0 + kt], solo, rtol=1e-5, atol=1e-5)
        (solo * w[t0 : t0 + kt]).sum().backward()
        c0, t0 = c0 + kc, t0 + kt
    torch.testing.assert_close(context.grad, batch_ctx_grad, rtol=1e-4, atol=1e-6)
    for name, g in batch_grads.items():
        torch.testing.assert_close(g, _grads(p)[name], rtol=1e-4, atol=1e-6, msg=name)
    if per_block:  # block 0 of sample 0 must not see block 1's mask tokens
        moved = tgt_mask.clone()
        moved[0, 1] = False
        moved[0, 1, [3, 7, 9]] = True
        other = p(context.detach(), ctx_idx, RaggedIndex.from_mask(moved))
        torch.testing.assert_close(other[:2], out[:2].detach(), rtol=1e-5, atol=1e-6)


def test_packed_drop_path_drops_whole_sequences() -> None:
    s = create("usjepa_vit_tiny", **TINY, drop_path_rate=0.9).train()
    blk = s.blocks[1]
    lay = VarlenLayout.from_lens([5, 3, 8])
    torch.manual_seed(0)
    y = blk._drop_path(blk.drop_path1, torch.ones(16, 4), lay)
    values = [set(y[a:b].flatten().tolist()) for a, b in ((0, 5), (5, 8), (8, 16))]
    assert all(len(v) == 1 for v in values), "a sequence is dropped or kept as a whole"
    assert set().union(*values) <= {0.0, 1.0 / (1.0 - blk.drop_path1.drop_prob)}


def test_plans_built_on_the_host_travel_with_the_masks() -> None:
    """The trainer's mask thread builds layouts and predictor plans; .to(device) moves, not rebuilds, them."""
    import numpy as np

    from usjepa_fast.masking import MaskConfig, MultiBlockMaskCollator

    masks = MultiBlockMaskCollator(MaskConfig(num_target_blocks=2, min_keep=2), (4, 4)).sample(
        3, None, np.random.default_rng(0)
    )
    p = Predictor(grid=(4, 4), in_dim=8, out_dim=8, embed_dim=16, depth=1, num_heads=2)
    plan = p.plan(masks.context, masks.target)
    assert p.plan(masks.context, masks.target) is plan  # memoised
    masks.context.layout(per_sample=True)
    moved = masks.to("meta")
    moved_plan = p.plan(moved.context, moved.target)
    assert moved_plan is not plan and moved_plan.gather.device.type == "meta"
    assert moved.context.layout(per_sample=True).cu_seqlens.device.type == "meta"
