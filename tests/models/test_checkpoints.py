"""Partial loads are refused unless asked for (then counted and reproducible); pickled metadata is inert."""

from __future__ import annotations

import os

import pytest
import timm
import torch

from usjepa_fast.errors import CheckpointError
from usjepa_fast.models.checkpoints import load_state_dict_flexible, read_checkpoint
from usjepa_fast.models.resolve import encoder_from_info, partial_loads, resolve_encoder

TIMM = "vit_tiny_patch16_224"
KW = {"img_size": 32, "num_classes": 0, "global_pool": "avg", "fc_norm": False}


@pytest.fixture(scope="module")
def partial_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    vit = timm.create_model(TIMM, pretrained=False, **KW)
    state = {k: v for k, v in vit.state_dict().items() if not k.startswith("blocks.11.")}
    path = tmp_path_factory.mktemp("partial") / "pruned.pth"
    torch.save({"model": state}, path)
    return path, vit, len(vit.state_dict()) - len(state)


def test_partial_checkpoint_is_refused_by_default(partial_ckpt) -> None:
    path, _, _ = partial_ckpt
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.11\..*--allow-partial") as exc:
        resolve_encoder(path, arch=TIMM, img_size=32)
    assert "\n" not in str(exc.value)


def test_allowed_partial_load_counts_and_is_reproducible(partial_ckpt, caplog) -> None:
    path, vit, n_missing = partial_ckpt
    with caplog.at_level("WARNING", logger="usfast"):
        enc = resolve_encoder(path, arch=TIMM, img_size=32, allow_partial=True)
    assert f"{n_missing} of {len(vit.state_dict())} model tensors missing" in caplog.text
    loaded = enc.model.state_dict()
    torch.testing.assert_close(loaded["blocks.0.attn.qkv.weight"], vit.state_dict()["blocks.0.attn.qkv.weight"])
    assert enc.info.source_hash.endswith("+partial@0")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        first = enc(x)
        torch.testing.assert_close(resolve_encoder(path, arch=TIMM, img_size=32, allow_partial=True)(x), first)
        torch.testing.assert_close(encoder_from_info(enc.info)(x), first)  # re-opened the same way
        other = resolve_encoder(path, arch=TIMM, img_size=32, allow_partial=True, seed=1)
    assert other.info.source_hash.endswith("+partial@1")
    assert not torch.allclose(other(x), first)  # the missing block came from another seeded init


def test_process_default_is_scoped(partial_ckpt) -> None:
    path, _, _ = partial_ckpt
    with partial_loads():
        resolve_encoder(path, arch=TIMM, img_size=32)
    with pytest.raises(CheckpointError, match="missing keys"):
        resolve_encoder(path, arch=TIMM, img_size=32)


def test_nothing_fitting_is_refused_even_when_partial() -> None:
    model = timm.create_model(TIMM, pretrained=False, **KW)
    wide = timm.create_model("vit_small_patch16_224", pretrained=False, **KW).state_dict()
    foreign = {k.replace("blocks", "layers"): v for k, v in wide.items()}
    with pytest.raises(CheckpointError, match="does not fit VisionTransformer"):
        load_state_dict_flexible(model, foreign, allow_partial=True)


class _Dangerous:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _Config:
    def __init__(self) -> None:
        self.lr = 1e-3


def test_pickled_metadata_is_read_as_inert_placeholders(tmp_path) -> None:
    path = tmp_path / "runner.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"cfg": _Config(), "epoch": 3}}, path)
    obj = read_checkpoint(path)
    torch.testing.assert_close(obj["state_dict"]["w"], torch.ones(2))
    assert "unread" in repr(obj["meta"]["cfg"]) and obj["meta"]["epoch"] == 3


def test_pickled_code_is_refused_never_run(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {"hook": _Dangerous(str(marker))}}, path)
    with pytest.raises(CheckpointError, match="pickles a call to .*system, which could run code") as exc:
        read_checkpoint(path)
    assert "\n" not in str(exc.value)
    assert not marker.exists()
