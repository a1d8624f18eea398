"""Frozen encoders and the flexible checkpoint loader, on checkpoints built here in each layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from usjepa_fast.errors import CheckpointError, UsfastError
from usjepa_fast.models.checkpoints import load_state_dict_flexible
from usjepa_fast.models.frozen import read_sidecar, save_export_ready
from usjepa_fast.models.resolve import resolve_encoder

ARCH = "vit_tiny_patch16_224"
SIZE = 32


@pytest.fixture(scope="module")
def reference():
    enc = resolve_encoder(ARCH, img_size=SIZE, seed=3)
    x = torch.randn(2, 3, SIZE, SIZE)
    return enc, x, enc(x)


def _mae_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(state)
    out["mask_token"] = torch.zeros(1, 1, 192)
    out["decoder_embed.weight"] = torch.zeros(128, 192)
    out["decoder_blocks.0.norm1.weight"] = torch.zeros(128)
    out["decoder_pred.weight"] = torch.zeros(768, 128)
    return out


LAYOUTS = {
    "plain": lambda s: s,
    "model": lambda s: {"model": s, "epoch": 10},
    "state_dict_ddp": lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
    "ema_state_dict_mae": lambda s: {"ema_state_dict": _mae_keys(s), "optimizer": {"lr": 1.0}},
    "compiled": lambda s: {f"_orig_mod.{k}": v for k, v in s.items()},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_checkpoint_layouts_load_to_identical_features(tmp_path: Path, reference, layout: str) -> None:
    enc, x, expected = reference
    path = tmp_path / f"{layout}.pth"
    torch.save(LAYOUTS[layout](enc.model.state_dict()), path)
    loaded = resolve_encoder(path, arch=ARCH, img_size=SIZE)
    torch.testing.assert_close(loaded(x), expected)
    assert loaded.info.source_hash and not loaded.info.source_hash.startswith("random")


def test_safetensors_plain_checkpoint(tmp_path: Path, reference) -> None:
    enc, x, expected = reference
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in enc.model.state_dict().items()}, str(path))
    torch.testing.assert_close(resolve_encoder(path, arch=ARCH, img_size=SIZE)(x), expected)


def test_pos_embed_resampled_for_other_input_size(tmp_path: Path, reference) -> None:
    enc, _, _ = reference
    path = tmp_path / "small_grid.pth"
    torch.save(enc.model.state_dict(), path)
    bigger = resolve_encoder(path, arch=ARCH, img_size=SIZE * 2)
    assert bigger(torch.randn(1, 3, SIZE * 2, SIZE * 2)).shape == (1, 192)


def test_wrong_architecture_lists_keys(tmp_path: Path, reference) -> None:
    enc, _, _ = reference
    path = tmp_path / "tiny.pth"
    torch.save(enc.model.state_dict(), path)
    with pytest.raises(CheckpointError, match="shape mismatch: .*patch_embed"):
        resolve_encoder(path, arch="vit_small_patch16_224", img_size=SIZE)
    broken = dict(enc.model.state_dict())
    broken.pop("norm.weight")
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys: norm.weight.*unexpected keys: extra.weight"):
        load_state_dict_flexible(enc.model, broken)


def test_bad_files_give_one_line_errors(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="could not be read"):
        resolve_encoder(truncated, arch=ARCH)
    with pytest.raises(CheckpointError, match="no usfast sidecar"):
        torch.save({}, tmp_path / "x.pt")
        resolve_encoder(tmp_path / "x.pt")
    with pytest.raises(UsfastError, match="neither an existing file nor a timm model"):
        resolve_encoder("no_such_model_or_file")
    with pytest.raises(UsfastError, match="open_backend"):
        resolve_encoder(tmp_path / "model.onnx")


def test_export_ready_roundtrip_keeps_declared_normalisation(tmp_path: Path, reference) -> None:
    enc, x, expected = reference
    info = enc.info
    info_custom = type(info)(**{**info.__dict__, "mean": (0.2, 0.2, 0.2), "std": (0.3, 0.3, 0.3)})
    path = save_export_ready(enc.model, info_custom, tmp_path / "student")
    sidecar = read_sidecar(path.with_suffix(".json"))
    assert sidecar.mean == (0.2, 0.2, 0.2) and len(sidecar.source_hash) == 64
    loaded = resolve_encoder(path)
    torch.testing.assert_close(loaded(x), expected)
    assert loaded.info.mean == (0.2, 0.2, 0.2)
    # a run directory resolves to its student.safetensors
    torch.testing.assert_close(resolve_encoder(tmp_path)(x), expected)


def test_pooling_and_frozen_state(reference) -> None:
    enc, x, pooled = reference
    tokens = enc.forward_tokens(x)
    assert tokens.shape == (2, (SIZE // 16) ** 2, 192)
    torch.testing.assert_close(pooled, tokens.mean(1))
    enc.train()
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    cls = resolve_encoder(ARCH, img_size=SIZE, pool="cls", seed=3)
    assert cls.info.pool == "cls" and cls(x).shape == (2, 192)
