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


def test_every_entry_is_described() -> None:
    from usjepa_fast.models.layouts import LAYOUTS

    assert set(PAPER_BASELINES) <= set(ZOO)
    for name, e in ZOO.items():
        assert e.architecture and e.release_format and e.input_size > 0 and len(e.mean) == 3
        assert e.layout in (None, "auto", *LAYOUTS), f"{name}: unknown layout {e.layout}"
        if e.branches and e.supported:  # the default branch is the wrapper tried first
            assert e.wrapper_keys[0] == e.branches[0], name
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
    assert parse_zoo_spec("zoo:DINOv3=/w/dinov3.pth") == ("DINOv3", "/w/dinov3.pth", None)
    assert parse_zoo_spec("zoo:V-JEPA:encoder=/w/a=b.pth") == ("V-JEPA", "/w/a=b.pth", "encoder")
    assert parse_zoo_spec("vit_base_patch16_224") is None
    with pytest.raises(UsfastError):
        parse_zoo_spec("zoo:DINOv3")
    with pytest.raises(UsfastError, match="name a branch"):
        parse_zoo_spec("zoo:V-JEPA:=/w.pth")
    with pytest.raises(UsfastError, match="not in the model zoo"):
        resolve_encoder("zoo:NotAModel=/nonexistent")


def test_branch_is_checked_against_the_entry_and_the_file(tmp_path) -> None:
    ckpt = tmp_path / "w.pth"
    torch.save({"target_encoder": {"x": torch.zeros(1)}}, ckpt)
    with pytest.raises(UsfastError, match="V-JEPA has no branch 'teacher'.*target_encoder, encoder"):
        resolve_encoder(f"zoo:V-JEPA:teacher={ckpt}")
    with pytest.raises(UsfastError, match="URFM has no branch"):
        resolve_encoder(f"zoo:URFM:encoder={ckpt}")
    with pytest.raises(UsfastError, match="has no 'encoder' state dict.*target_encoder"):
        remap_state_dict(ZOO["V-JEPA"], torch.load(ckpt), branch="encoder")


def test_table_names_loader_normalisation_and_why_not() -> None:
    table = zoo_table()
    assert "| loader |" in table and "| normalisation |" in table
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert "`vjepa` layout" in rows["V-JEPA"] and "branch target_encoder / encoder" in rows["V-JEPA"]
    assert "`beit` layout" in rows["USFM"] and rows["USFM"].endswith("| yes |")
    assert "ImageNet" in rows["DINOv2"] and "`dinov2` layout" in rows["DINOv2-reg"]
    for name in ("V-JEPA2", "EchoJEPA"):
        assert "| no: " in rows[name] and "RoPE" in rows[name]
