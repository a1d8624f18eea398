"""The baseline zoo: every paper model listed; uncovered ones refuse clearly; release layouts remap."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch

from usjepa_fast.errors import UsfastError
from usjepa_fast.models.resolve import EncoderSpec, resolve_encoder
from usjepa_fast.models.zoo import ZOO, parse_zoo_spec, remap_state_dict, zoo_table

PAPER_BASELINES = ("DINOv3", "I-JEPA", "UltraSAM", "SAMUS", "EchoCare", "USF-MAE", "USFM", "URFM")
TINY = {"img_size": 32, "num_classes": 0, "class_token": False, "global_pool": "avg", "fc_norm": False}


def test_every_paper_baseline_is_described() -> None:
    for name in PAPER_BASELINES:
        e = ZOO[name]
        assert e.architecture and e.release_format and e.input_size > 0 and len(e.mean) == 3
        if e.supported:
            assert e.timm_name and timm.is_model(e.timm_name), f"{name}: {e.timm_name} unknown to timm"
        else:
            assert e.timm_name is None and "timm" in e.notes
    table = zoo_table()
    assert all(f"| {n} |" in table for n in PAPER_BASELINES)


@pytest.mark.parametrize("name", [n for n in PAPER_BASELINES if not ZOO[n].supported])
def test_uncovered_architectures_refuse_with_a_clear_error(name: str, tmp_path) -> None:
    ckpt = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, ckpt)
    with pytest.raises(UsfastError, match=name):
        resolve_encoder(f"zoo:{name}={ckpt}")


def test_ijepa_release_layout_loads(tmp_path) -> None:
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY)
    target = {f"module.{k}": v.clone() for k, v in src.state_dict().items()}
    ckpt = tmp_path / "IN1K-vit.tiny.pth.tar"
    torch.save(
        {
            "encoder": {k: torch.zeros_like(v) for k, v in target.items()},
            "target_encoder": target,
            "predictor": {"module.mask_token": torch.zeros(1)},
            "epoch": 300,
        },
        ckpt,
    )
    entry = dataclasses.replace(ZOO["I-JEPA"], timm_name="vit_tiny_patch16_224", timm_kwargs=TINY, input_size=32)
    enc = resolve_encoder(EncoderSpec.for_zoo(entry, ckpt))
    # the EMA target encoder (not the online one) was loaded
    key = "blocks.0.attn.qkv.weight"
    torch.testing.assert_close(enc.model.state_dict()[key], src.state_dict()[key])
    assert enc.info.source_hash and enc.info.width == 192
    assert enc(torch.rand(2, 3, 32, 32)).shape == (2, 192)


def test_mae_release_layout_drops_decoder(tmp_path) -> None:
    kwargs = {**TINY, "class_token": True, "global_pool": "avg"}
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    state = dict(src.state_dict())
    state.update(
        {
            "mask_token": torch.zeros(1, 1, 192),
            "decoder_embed.weight": torch.zeros(128, 192),
            "decoder_blocks.0.norm1.weight": torch.zeros(128),
        }
    )
    entry = dataclasses.replace(ZOO["USF-MAE"], timm_name="vit_tiny_patch16_224", timm_kwargs=kwargs, input_size=32)
    remapped = remap_state_dict(entry, {"model": state})
    assert not any(k.startswith(("decoder", "mask_token")) for k in remapped)
    ckpt = tmp_path / "usf_mae.pth"
    torch.save({"model": state}, ckpt)
    assert resolve_encoder(EncoderSpec.for_zoo(entry, ckpt))(torch.rand(1, 3, 32, 32)).shape == (1, 192)


def test_zoo_spec_parsing() -> None:
    assert parse_zoo_spec("zoo:DINOv3=/w/dinov3.pth") == ("DINOv3", "/w/dinov3.pth")
    assert parse_zoo_spec("vit_base_patch16_224") is None
    with pytest.raises(UsfastError):
        parse_zoo_spec("zoo:DINOv3")
    with pytest.raises(UsfastError, match="not in the model zoo"):
        resolve_encoder("zoo:NotAModel=/nonexistent")
