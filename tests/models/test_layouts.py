"""Release layouts of the field's checkpoints load and give the features of the same weights in timm.

Each test builds a tiny timm model with random weights, writes its state dict re-keyed into the
authors' release layout (key names, nesting, prefixes and tensor shapes of facebookresearch/ijepa,
facebookresearch/jepa, facebookresearch/dinov2, openmedlab/USFM, CAMMA-public/UltraSam's mmengine
files), loads that file through usfast and compares features with the timm model. Where the release
computes something timm does not (V-JEPA's tubelet and 3-D position table, DINOv2's on-the-fly
position interpolation), the reference is that computation written out here from the release code.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import timm
import torch
import torch.nn.functional as F

from usjepa_fast.errors import CheckpointError, UsfastError
from usjepa_fast.models.layouts import LAYOUTS, detect_layout, sniff_layout
from usjepa_fast.models.resolve import EncoderSpec, resolve_encoder
from usjepa_fast.models.zoo import ZOO

TINY = {"embed_dim": 24, "depth": 2, "num_heads": 2, "num_classes": 0}


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def _variant(name: str, timm_name: str, input_size: int, **kwargs) -> object:
    """The zoo entry ``name`` (same layout, wrappers, prefixes, pooling) at tiny width."""
    entry = ZOO[name]
    return dataclasses.replace(
        entry, timm_name=timm_name, timm_kwargs={**entry.timm_kwargs, **kwargs}, input_size=input_size
    )


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# I-JEPA: {'encoder', 'predictor', 'target_encoder', 'opt', ...}, DDP 'module.' prefixes

IJEPA_KW = {**TINY, "img_size": 32, "patch_size": 16}


def test_ijepa_target_encoder_by_default_encoder_by_branch(tmp_path) -> None:
    target = _randomize(timm.create_model("vit_huge_patch14_gap_224", **IJEPA_KW), 1)
    online = _randomize(timm.create_model("vit_huge_patch14_gap_224", **IJEPA_KW), 2)
    ckpt = tmp_path / "IN1K-vit.h.14-300e.pth.tar"
    torch.save(
        {
            "encoder": {f"module.{k}": v for k, v in online.state_dict().items()},
            "predictor": {"module.mask_token": torch.zeros(1, 1, 12), "module.predictor_embed.weight": torch.ones(12)},
            "target_encoder": {f"module.{k}": v for k, v in target.state_dict().items()},
            "opt": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
            "scaler": None,
            "epoch": 300,
            "loss": 0.1,
            "batch_size": 2048,
            "world_size": 16,
            "lr": 1e-3,
        },
        ckpt,
    )
    entry = _variant("I-JEPA", "vit_huge_patch14_gap_224", 32, **IJEPA_KW)
    x = torch.rand(2, 3, 32, 32)
    enc = resolve_encoder(EncoderSpec.for_zoo(entry, ckpt))
    with torch.no_grad():
        _close(enc(x), target(x))
        _close(resolve_encoder(EncoderSpec.for_zoo(entry, ckpt, branch="encoder"))(x), online(x))
    with pytest.raises(UsfastError, match="no branch 'student'"):
        EncoderSpec.for_zoo(entry, ckpt, branch="student")


# ----------------------------------------------------------------------------------------------
# V-JEPA: {'encoder', 'predictor', 'target_encoder'}, 'module.backbone.' prefixes, 3-D patch embedding

VJEPA_KW = {**TINY, "img_size": 32, "patch_size": 16, "class_token": False, "global_pool": "avg", "fc_norm": False}
FRAMES = 8  # temporal positions of the pretraining clip: 16 frames / tubelet 2


def _vjepa_encoder(vit: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """``vit``'s weights as V-JEPA's VisionTransformer(num_frames=16, tubelet_size=2) state dict."""
    g = torch.Generator().manual_seed(seed)
    sd = dict(vit.state_dict())
    w2 = sd["patch_embed.proj.weight"]  # (D, C, p, p)
    first = torch.randn(w2.shape, generator=g)
    sd["patch_embed.proj.weight"] = torch.stack([first, w2 - first], dim=2)  # (D, C, 2, p, p), sums to w2
    pos = sd["pos_embed"]  # (1, g*g, D)
    table = torch.randn(1, FRAMES, pos.shape[1], pos.shape[2], generator=g)  # the 3-D sincos table
    delta = torch.randn(pos.shape, generator=g)
    # V-JEPA's trilinear rule for one tubelet lands halfway between temporal slices 3 and 4
    table[:, FRAMES // 2 - 1], table[:, FRAMES // 2] = pos + delta, pos - delta
    sd["pos_embed"] = table.reshape(1, -1, pos.shape[2])
    return {f"module.backbone.{k}": v for k, v in sd.items()}


def _vjepa_checkpoint(path, target: dict, online: dict) -> None:
    torch.save(
        {
            "encoder": online,
            "predictor": {"module.backbone.mask_tokens.0": torch.zeros(1, 1, 12)},
            "opt": {"state": {}, "param_groups": []},
            "scaler": None,
            "target_encoder": target,
            "epoch": 300,
            "loss": 0.2,
            "batch_size": 24,
            "world_size": 128,
            "lr": 6e-4,
        },
        path,
    )


def _vjepa_reference(enc: dict[str, torch.Tensor], blocks_from: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """V-JEPA's own forward (src/models/vision_transformer.py) on one tubelet: the frame repeated twice."""
    sd = {k.removeprefix("module.backbone."): v for k, v in enc.items()}
    w3, bias, table = sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], sd["pos_embed"]
    tubelet, patch, dim = w3.shape[2], w3.shape[-1], w3.shape[0]
    clip = x.unsqueeze(2).repeat(1, 1, tubelet, 1, 1)  # (B, C, T, H, W)
    tokens = F.conv3d(clip, w3, bias, stride=(tubelet, patch, patch)).flatten(2).transpose(1, 2)
    n_t, side = FRAMES, 32 // patch  # the pretraining grid
    t, h, w = clip.shape[2] // tubelet, x.shape[-2] // patch, x.shape[-1] // patch
    pos = F.interpolate(
        table.reshape(1, n_t, side, side, dim).permute(0, 4, 1, 2, 3),
        scale_factor=(t / n_t, h / side, w / side),
        mode="trilinear",
    )
    tokens = tokens + pos.permute(0, 2, 3, 4, 1).reshape(1, -1, dim)
    for blk in blocks_from.blocks:  # V-JEPA's Block is timm's pre-norm block: these hold the same weights
        tokens = blk(tokens)
    return blocks_from.norm(tokens)


def test_vjepa_one_frame_is_one_tubelet(tmp_path) -> None:
    target = _randomize(timm.create_model("vit_small_patch16_224", **VJEPA_KW), 3)
    online = _randomize(timm.create_model("vit_small_patch16_224", **VJEPA_KW), 4)
    t_sd, o_sd = _vjepa_encoder(target, 5), _vjepa_encoder(online, 6)
    ckpt = tmp_path / "vitl16.pth.tar"
    _vjepa_checkpoint(ckpt, t_sd, o_sd)
    entry = _variant("V-JEPA", "vit_small_patch16_224", 32, img_size=32, patch_size=16, **TINY)
    enc = resolve_encoder(EncoderSpec.for_zoo(entry, ckpt))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        _close(enc(x), target(x))  # the same weights loaded natively in timm
        _close(enc.forward_tokens(x), _vjepa_reference(t_sd, target, x))  # V-JEPA's own computation
        _close(resolve_encoder(EncoderSpec.for_zoo(entry, ckpt, branch="encoder"))(x), online(x))
    assert enc.info.source.startswith("zoo:V-JEPA=")
    assert EncoderSpec.for_zoo(entry, ckpt, branch="encoder").text.startswith("zoo:V-JEPA:encoder=")
    # another input size: the 3-D table goes through V-JEPA's interpolation to the new grid
    big = resolve_encoder(EncoderSpec.for_zoo(entry, ckpt), img_size=48)
    x48 = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        _close(big.forward_tokens(x48), _vjepa_reference(t_sd, target, x48))


def test_vjepa2_rope_is_refused_with_the_reason(tmp_path) -> None:
    vit = _randomize(timm.create_model("vit_small_patch16_224", **VJEPA_KW), 7)
    enc = {k: v for k, v in _vjepa_encoder(vit, 8).items() if not k.endswith("pos_embed")}  # RoPE: no table
    ckpt = tmp_path / "vitl.pt"
    _vjepa_checkpoint(ckpt, enc, enc)
    entry = _variant("V-JEPA", "vit_small_patch16_224", 32, img_size=32, patch_size=16, **TINY)
    with pytest.raises(CheckpointError, match="V-JEPA 2 / EchoJEPA.*RoPE") as exc:
        resolve_encoder(EncoderSpec.for_zoo(entry, ckpt))
    assert "\n" not in str(exc.value)
    for name in ("V-JEPA2", "EchoJEPA"):
        with pytest.raises(UsfastError, match="RoPE"):
            resolve_encoder(f"zoo:{name}={ckpt}")


def test_vjepa_into_a_class_token_model_says_what_to_use(tmp_path) -> None:
    vit = _randomize(timm.create_model("vit_small_patch16_224", **VJEPA_KW), 9)
    ckpt = tmp_path / "vitl16.pth.tar"
    _vjepa_checkpoint(ckpt, _vjepa_encoder(vit, 10), _vjepa_encoder(vit, 11))
    with pytest.raises(CheckpointError, match="no class token.*zoo:V-JEPA"):
        resolve_encoder(ckpt, arch="vit_small_patch16_224", img_size=32)


# ----------------------------------------------------------------------------------------------
# DINOv2: hub state dicts (mask_token (1, D), register_tokens), teacher checkpoints, chunked blocks

DINO_KW = {**TINY, "img_size": 28, "patch_size": 14}


def _dinov2_reference(sd: dict[str, torch.Tensor], blocks_from, x: torch.Tensor, registers: bool) -> torch.Tensor:
    """DINOv2's prepare_tokens_with_masks + blocks + norm (dinov2/models/vision_transformer.py)."""
    w, b = sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"]
    patch = w.shape[-1]
    tokens = F.conv2d(x, w, b, stride=patch).flatten(2).transpose(1, 2)
    tokens = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), tokens], dim=1)
    pos = sd["pos_embed"]
    m, w0 = int((pos.shape[1] - 1) ** 0.5), x.shape[-1] // patch
    if m != w0:  # interpolate_pos_encoding: hub register models by size + antialias, others offset 0.1
        grid = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if registers:
            grid = F.interpolate(grid, size=(w0, w0), mode="bicubic", antialias=True)
        else:
            grid = F.interpolate(grid, scale_factor=((w0 + 0.1) / m,) * 2, mode="bicubic", antialias=False)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, w0 * w0, -1)], dim=1)
    tokens = tokens + pos
    if registers:
        tokens = torch.cat([tokens[:, :1], sd["register_tokens"].expand(x.shape[0], -1, -1), tokens[:, 1:]], dim=1)
    for blk in blocks_from.blocks:  # DINOv2's block (LayerScale, MLP) is timm's: same weights
        tokens = blk(tokens)
    return blocks_from.norm(tokens)


def test_dinov2_hub_weights_at_their_grid_and_resampled_by_dinov2s_rule(tmp_path) -> None:
    src = _randomize(timm.create_model("vit_small_patch14_dinov2", **{**DINO_KW, "img_size": 42}), 12)
    hub = {**src.state_dict(), "mask_token": torch.zeros(1, 24)}  # dinov2_vits14_pretrain.pth: plain, 3x3 grid
    ckpt = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(hub, ckpt)
    entry = _variant("DINOv2", "vit_small_patch14_dinov2", 28, **DINO_KW)
    at_src = resolve_encoder(EncoderSpec.for_zoo(entry, ckpt), img_size=42)
    x42 = torch.rand(2, 3, 42, 42)
    with torch.no_grad():
        _close(at_src(x42), src(x42))  # cls pooling, the weights' own grid
        enc = resolve_encoder(EncoderSpec.for_zoo(entry, ckpt))  # 28 px: 2x2 grid, DINOv2's interpolation
        x = torch.rand(2, 3, 28, 28)
        _close(enc.model.forward_features(x), _dinov2_reference(hub, src, x, registers=False))
    assert enc.info.pool == "cls" and enc.info.num_prefix_tokens == 1


def test_dinov2_registers_from_a_chunked_teacher_checkpoint(tmp_path) -> None:
    vit = _randomize(timm.create_model("vit_small_patch14_reg4_dinov2", **DINO_KW), 13)
    other = _randomize(timm.create_model("vit_small_patch14_reg4_dinov2", **DINO_KW), 14)

    def release(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
        """DINOv2 (num_register_tokens=4, block_chunks=2) state: registers apart, pos-embed on cls."""
        sd = dict(model.state_dict())
        p0 = torch.randn(1, 1, 24, generator=torch.Generator().manual_seed(seed))
        out = {
            "cls_token": sd.pop("cls_token") - p0,  # timm folds the class position into the class token
            "pos_embed": torch.cat([p0, sd.pop("pos_embed")], dim=1),
            "register_tokens": sd.pop("reg_token"),
            "mask_token": torch.zeros(1, 24),
        }
        for key, value in sd.items():  # chunk c holds blocks c*depth/chunks.. under their global index
            out[re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{m[1]}.{m[1]}.", key)] = value
        return out

    teacher, student = release(vit, 15), release(other, 16)
    ckpt = tmp_path / "teacher_checkpoint.pth"
    heads = {"dino_head.mlp.0.weight": torch.zeros(8, 24), "ibot_head.last_layer.weight_g": torch.ones(8, 1)}
    torch.save(
        {
            "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **heads},
            "student": {**{f"backbone.{k}": v for k, v in student.items()}, **heads},
        },
        ckpt,
    )
    assert any(k.startswith("blocks.1.1.") for k in teacher)
    entry = _variant("DINOv2-reg", "vit_small_patch14_reg4_dinov2", 28, **DINO_KW)
    enc = resolve_encoder(EncoderSpec.for_zoo(entry, ckpt))
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        _close(enc(x), vit(x))
        _close(enc.model.forward_features(x), _dinov2_reference(teacher, vit, x, registers=True))
        _close(resolve_encoder(EncoderSpec.for_zoo(entry, ckpt, branch="student"))(x), other(x))
    assert enc.info.num_prefix_tokens == 5  # class + 4 registers: patch tokens start after them


# ----------------------------------------------------------------------------------------------
# USFM (unilm BEiT code): q_bias/v_bias, gamma_1/2, relative position bias (shared or per block)

BEIT_KW = {**TINY, "img_size": 32, "patch_size": 16}


def _usfm_relative_position_index(window: tuple[int, int]) -> torch.Tensor:
    """USFM's RelativePositionBias index buffer (usdsgen/modules/backbone/vision_transformer.py)."""
    coords = torch.stack(torch.meshgrid([torch.arange(window[0]), torch.arange(window[1])], indexing="ij"))
    flat = torch.flatten(coords, 1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window[0] - 1
    rel[:, :, 1] += window[1] - 1
    rel[:, :, 0] *= 2 * window[1] - 1
    n = (2 * window[0] - 1) * (2 * window[1] - 1) + 3
    index = torch.zeros(size=(window[0] * window[1] + 1,) * 2, dtype=rel.dtype)
    index[1:, 1:] = rel.sum(-1)
    index[0, 0:], index[0:, 0], index[0, 0] = n - 3, n - 2, n - 1
    return index


def test_usfm_index_buffer_is_the_one_timm_rebuilds() -> None:
    beit = timm.create_model("beit_base_patch16_224", **BEIT_KW)
    torch.testing.assert_close(beit.blocks[0].attn.relative_position_index, _usfm_relative_position_index((2, 2)))


def test_usfm_finetune_layout(tmp_path) -> None:
    beit = _randomize(timm.create_model("beit_base_patch16_224", **BEIT_KW), 17)
    sd = dict(beit.state_dict())
    for i in range(2):  # USFM's Attention keeps its index as a persistent buffer
        sd[f"blocks.{i}.attn.relative_position_index"] = _usfm_relative_position_index((2, 2))
    sd.update({"head.weight": torch.zeros(4, 24), "head.bias": torch.zeros(4)})
    ckpt = tmp_path / "USFM_cls.pth"
    torch.save({"model": sd, "optimizer": {}, "epoch": 99, "max_accuracy": 0.9}, ckpt)
    enc = resolve_encoder(EncoderSpec.for_zoo(_variant("USFM", "beit_base_patch16_224", 32, **BEIT_KW), ckpt))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        _close(enc(x), beit(x))  # fc_norm(mean of patch tokens): timm's own Beit pooling
        _close(enc.forward_tokens(x), beit.forward_features(x)[:, 1:])


def test_usfm_pretraining_layout_shared_bias_no_fc_norm(tmp_path, caplog) -> None:
    beit = _randomize(timm.create_model("beit_base_patch16_224", **BEIT_KW), 18)
    with torch.no_grad():
        shared = beit.blocks[0].attn.relative_position_bias_table.clone()
        beit.blocks[1].attn.relative_position_bias_table.copy_(shared)
        beit.fc_norm.weight.fill_(1.0)  # what USFM's classifier starts from
        beit.fc_norm.bias.zero_()
    sd = {k: v for k, v in beit.state_dict().items() if "relative_position_bias_table" not in k}
    sd = {k: v for k, v in sd.items() if not k.startswith("fc_norm.")}
    sd.update(
        {
            "rel_pos_bias.relative_position_bias_table": shared,
            "rel_pos_bias.relative_position_index": _usfm_relative_position_index((2, 2)),
            "norm.weight": torch.rand(24),  # the pretraining model's final norm
            "norm.bias": torch.rand(24),
            "mask_token": torch.zeros(1, 1, 24),
            "lm_head.weight": torch.zeros(16, 24),
            "lm_head.bias": torch.zeros(16),
        }
    )
    ckpt = tmp_path / "USFM_latest.pth"
    torch.save(sd, ckpt)
    with caplog.at_level("INFO", logger="usfast"):
        enc = resolve_encoder(EncoderSpec.for_zoo(_variant("USFM", "beit_base_patch16_224", 32, **BEIT_KW), ckpt))
    assert "shared relative position bias" in caplog.text and "identity LayerNorm" in caplog.text
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        _close(enc(x), beit(x))


# ----------------------------------------------------------------------------------------------
# UltraSAM: mmengine {'meta', 'state_dict'} with mmpretrain ViTSAM keys; Meta SAM image_encoder.*

SAM_KW = {**TINY, "img_size": 64, "patch_size": 16, "global_attn_indexes": [1], "window_size": 2, "neck_chans": 16}


class RunnerState:
    """Stands for mmengine's MessageHub / HistoryBuffer objects pickled beside the weights."""

    def __init__(self, values: list[float]) -> None:
        self.values = values


def _to_mmpretrain(key: str) -> str:
    """timm SAM ViT key -> mmpretrain ViTSAM key (CAMMA-public/UltraSam weights/convert_sam_bb_to_mmdet.py)."""
    for pattern, repl in (
        (r"^patch_embed\.proj\.", "patch_embed.projection."),
        (r"^blocks\.(\d+)\.", r"layers.\1."),
        (r"\.norm1\.", ".ln1."),
        (r"\.norm2\.", ".ln2."),
        (r"\.mlp\.fc1\.", ".ffn.layers.0.0."),
        (r"\.mlp\.fc2\.", ".ffn.layers.1."),
        (r"^neck\.", "channel_reduction."),
    ):
        key = re.sub(pattern, repl, key)
    return key


def test_ultrasam_mmengine_checkpoint(tmp_path) -> None:
    sam = _randomize(timm.create_model("samvit_base_patch16", **SAM_KW), 19)
    backbone = {f"backbone.{_to_mmpretrain(k)}": v for k, v in sam.state_dict().items()}
    assert "backbone.layers.0.ffn.layers.0.0.weight" in backbone and "backbone.channel_reduction.1.weight" in backbone
    detector = {
        "decoder.layers.0.self_attn.attn.in_proj_weight": torch.zeros(48, 16),
        "prompt_encoder.label_encoder.label_embedding.weight": torch.zeros(11, 16),
        "bbox_head.output_upscaling.0.weight": torch.zeros(16, 4, 2, 2),
    }
    ckpt = tmp_path / "UltraSam.pth"
    torch.save(
        {
            "meta": {"mmengine_version": "0.10.4", "dataset_meta": {}, "iter": 30000, "hub": RunnerState([1.0])},
            "state_dict": {**backbone, **detector},
            "message_hub": RunnerState([0.5, 0.4]),
        },
        ckpt,
    )
    entry = _variant("UltraSAM", "samvit_base_patch16", 64, **SAM_KW)
    enc = resolve_encoder(EncoderSpec.for_zoo(entry, ckpt))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        _close(enc(x), sam(x))  # 16-ch neck embedding, mean over the 4x4 grid: timm's own pooling
        _close(enc.forward_tokens(x), sam.forward_features(x).flatten(2).transpose(1, 2))


def test_sam_image_encoder_checkpoint(tmp_path) -> None:
    sam = _randomize(timm.create_model("samvit_base_patch16", **SAM_KW), 20)
    release = {f"image_encoder.{k.replace('mlp.fc', 'mlp.lin')}": v for k, v in sam.state_dict().items()}
    release["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.zeros(2, 8)
    release["mask_decoder.iou_token.weight"] = torch.zeros(1, 16)
    ckpt = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(release, ckpt)
    enc = resolve_encoder(EncoderSpec.for_zoo(_variant("UltraSAM", "samvit_base_patch16", 64, **SAM_KW), ckpt))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        _close(enc(x), sam(x))


def test_mmengine_checkpoint_of_another_backbone_lists_the_keys(tmp_path) -> None:
    # an mmpretrain VisionTransformer (class token, 3-D pos_embed, final ln1) is no SAM image encoder
    vit = {
        "backbone.cls_token": torch.zeros(1, 1, 24),
        "backbone.pos_embed": torch.zeros(1, 17, 24),
        "backbone.patch_embed.projection.weight": torch.zeros(24, 3, 16, 16),
        "backbone.layers.0.ln1.weight": torch.ones(24),
        "backbone.layers.0.attn.qkv.weight": torch.zeros(72, 24),
        "backbone.ln1.weight": torch.ones(24),
        "head.layers.head.weight": torch.zeros(10, 24),
    }
    ckpt = tmp_path / "mmpretrain_vit.pth"
    torch.save({"meta": {"mmengine_version": "0.10.4"}, "state_dict": vit}, ckpt)
    entry = _variant("UltraSAM", "samvit_base_patch16", 64, **SAM_KW)
    with pytest.raises(CheckpointError, match="missing keys: .*unexpected keys: .*cls_token") as exc:
        resolve_encoder(EncoderSpec.for_zoo(entry, ckpt))
    assert "\n" not in str(exc.value)


# ----------------------------------------------------------------------------------------------
# detection


def test_layouts_are_detected_only_for_the_model_class_they_convert_into() -> None:
    vit = timm.create_model("vit_small_patch16_224", **VJEPA_KW)
    beit = timm.create_model("beit_base_patch16_224", **BEIT_KW)
    vjepa = _vjepa_encoder(vit, 21)
    assert detect_layout(vjepa, vit) == "vjepa" and detect_layout(vjepa, beit) is None
    assert sniff_layout(vjepa) is LAYOUTS["vjepa"]
    assert detect_layout(vit.state_dict(), vit) is None  # a plain timm state dict needs no conversion
    beit_sd = {f"encoder.{k}": v for k, v in beit.state_dict().items()}
    assert detect_layout(beit_sd, beit) == "beit" and detect_layout(beit_sd, vit) is None
