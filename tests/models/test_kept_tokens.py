"""Kept-token forwards (models.kept_tokens): a ragged batch equals each frame's gathered tokens run by hand."""

from __future__ import annotations

import pytest
import timm
import torch

from usjepa_fast.errors import UsfastError
from usjepa_fast.masking import RaggedIndex
from usjepa_fast.models.frozen import EncoderInfo, FrozenEncoder
from usjepa_fast.models.kept_tokens import (
    embed_tokens,
    forward_kept,
    forward_kept_padded,
    kept_token_support,
    pad_keep,
    unpad_keep,
)

SIZE, PATCH = 32, 8  # 4x4 grid: 16 patches
N = (SIZE // PATCH) ** 2


def _vit(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    kw = {"img_size": SIZE, "patch_size": PATCH, "embed_dim": 32, "depth": 2, "num_heads": 2, **kw}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **kw).eval()


def _frozen(model: torch.nn.Module, pool: str) -> FrozenEncoder:
    info = EncoderInfo(
        "tiny",
        SIZE,
        (0.5,) * 3,
        (0.5,) * 3,
        pool,
        model.embed_dim,
        patch_size=PATCH,
        num_prefix_tokens=model.num_prefix_tokens,
    )
    return FrozenEncoder(model, info)


def _by_hand(model: torch.nn.Module, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """One frame alone: every token embedded, the prefix + kept patches gathered, timm's own blocks."""
    p = model.num_prefix_tokens
    tokens = model._pos_embed(model.patch_embed(x[None]))  # (1, P + N, D)
    seq = torch.cat([tokens[:, :p], tokens[:, p + idx]], dim=1)
    return model.norm(model.blocks(seq))[0]  # (P + k, D)


KEEPS = [torch.tensor([0, 1, 2, 5, 6, 9]), torch.arange(N), torch.tensor([15]), torch.tensor([3, 7, 11, 12, 13])]


@pytest.mark.parametrize(
    "kw", [{}, {"class_token": False, "global_pool": "avg"}, {"reg_tokens": 2}], ids=["cls", "nocls", "reg"]
)
def test_packed_kept_forward_equals_gathered_tokens_by_hand(kw) -> None:
    model = _vit(**kw)
    x = torch.randn(len(KEEPS), 3, SIZE, SIZE)
    keep = RaggedIndex(torch.cat(KEEPS), torch.tensor([len(k) for k in KEEPS]))
    with torch.no_grad():
        out = forward_kept(model, x, keep)
        p = model.num_prefix_tokens
        rows = out.tokens.split([len(k) for k in KEEPS])
        for i, idx in enumerate(KEEPS):
            ref = _by_hand(model, x[i], idx)
            torch.testing.assert_close(rows[i], ref[p:], atol=1e-5, rtol=1e-5)
            if p:
                torch.testing.assert_close(out.prefix[i], ref[:p], atol=1e-5, rtol=1e-5)
        assert (out.prefix is None) == (p == 0)
        # padded (the ONNX form) equals packed
        seq, valid = forward_kept_padded(model, x, pad_keep(keep))
        assert valid.sum(1).tolist() == [len(k) for k in KEEPS]
        for i, idx in enumerate(KEEPS):
            torch.testing.assert_close(seq[i, p : p + len(idx)], rows[i], atol=1e-5, rtol=1e-5)


def test_keeping_every_patch_is_the_dense_forward() -> None:
    model = _vit()
    x = torch.randn(2, 3, SIZE, SIZE)
    keep = RaggedIndex(torch.arange(N).repeat(2), torch.tensor([N, N]))
    with torch.no_grad():
        out = forward_kept(model, x, keep)
        dense = model.forward_features(x)  # (B, 1 + N, D)
    torch.testing.assert_close(out.tokens.view(2, N, -1), dense[:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.prefix, dense[:, :1], atol=1e-5, rtol=1e-5)
    assert embed_tokens(model, x).shape == (2, 1 + N, 32)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_frozen_encoder_pools_over_kept_tokens(pool: str) -> None:
    model = _vit()
    enc = _frozen(model, pool)
    x = torch.randn(2, 3, SIZE, SIZE)
    keeps = KEEPS[:2]
    keep = RaggedIndex(torch.cat(keeps), torch.tensor([len(k) for k in keeps]))
    with torch.no_grad():
        got = enc(x, keep)
        ref = torch.stack(
            [
                (_by_hand(model, x[i], k)[1:].mean(0) if pool == "mean" else _by_hand(model, x[i], k)[0])
                for i, k in enumerate(keeps)
            ]
        )
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(enc(x, pad_keep(keep)), got, atol=1e-5, rtol=1e-5)  # padded form
        # keeping every patch reproduces the whole-frame features
        full = RaggedIndex(torch.arange(N).repeat(2), torch.tensor([N, N]))
        torch.testing.assert_close(enc(x, full), enc(x), atol=1e-5, rtol=1e-5)


def test_pad_and_unpad_roundtrip() -> None:
    keep = RaggedIndex(torch.cat(KEEPS), torch.tensor([len(k) for k in KEEPS]))
    padded = pad_keep(keep)
    assert padded.shape == (4, N) and padded.dtype == torch.int64
    assert padded[2].tolist() == [15] + [-1] * (N - 1)
    back = unpad_keep(padded)
    assert back.idx.tolist() == keep.idx.tolist() and back.sample_lens.tolist() == keep.sample_lens.tolist()
    assert pad_keep(keep, width=20).shape == (4, 20)


def test_models_that_cannot_run_kept_tokens_say_why() -> None:
    assert kept_token_support(_vit()) is None
    conv = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    reason = kept_token_support(conv)
    assert reason is not None and "ResNet" in reason and "\n" not in reason
    info = EncoderInfo("resnet", SIZE, (0.5,) * 3, (0.5,) * 3, "mean", conv.num_features)
    with pytest.raises(UsfastError, match="--tokens all"):
        FrozenEncoder(conv, info)(torch.randn(1, 3, SIZE, SIZE), RaggedIndex(torch.arange(4), torch.tensor([4])))
    nocls = _frozen(_vit(class_token=False, global_pool="avg"), "cls")
    assert "class token" in nocls.keep_unsupported
