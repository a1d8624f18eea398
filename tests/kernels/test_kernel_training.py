"""A few SALT training steps with the Triton kernels forced on (interpreted) match the PyTorch path.

Both runs share the seed, data, masks and teacher; only ``run.kernels`` differs. The student and
predictor attention and the loss go through the kernels, so a wrong gradient anywhere in them
would bend the loss curve after the first optimizer step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from usjepa_fast.config import apply_overrides, from_dict
from usjepa_fast.train import run
from usjepa_fast.train.config import TrainConfig
from usjepa_fast.train.data import TensorImageDataset

SIZE = 16  # 4x4 grid of 4-px patches: <= 16 tokens = one kernel block, keeps the interpreter quick
STEPS = 3


def _images(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    coarse = torch.randn(n, 1, 2, 2, generator=g)
    return (
        F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False).expand(-1, 3, -1, -1).contiguous()
    )


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from usjepa_fast.models import create
    from usjepa_fast.models.frozen import save_export_ready

    torch.manual_seed(123)
    t = create("usjepa_vit_tiny", img_size=SIZE, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    info = t.encoder_info("teacher", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return save_export_ready(t, info, tmp_path_factory.mktemp("teacher") / "student.safetensors")


def _losses(out_dir: Path, kernels: str, teacher: Path) -> list[float]:
    overrides = [
        f"data.image_size={SIZE}", "data.batch_size=2", "data.num_workers=0",
        "model.student=usjepa_vit_tiny", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
        "model.patch_size=4", "model.predictor=predictor_tiny", "model.predictor_embed_dim=32",
        "model.predictor_depth=1", "model.predictor_num_heads=2", "mask.min_keep=4", "mask.num_target_blocks=2",
        f"optim.steps={STEPS}", "optim.warmup_steps=1", "optim.lr=5e-3",
        "objective.kind=salt", f"teacher.spec={teacher}", "teacher.bf16=false",
        "run.device=cpu", "run.precision=fp32", "run.compile=false", "run.progress=false",
        f"run.kernels={kernels}", f"run.out_dir={out_dir}", "run.log_every=1", "run.ckpt_every=100",
        "run.val_every=100",
    ]  # fmt: skip
    cfg = from_dict(TrainConfig, apply_overrides({}, overrides))
    images = _images(8)
    run(cfg, train_dataset=TensorImageDataset(images))
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_triton_training_matches_torch_loss_curve(tmp_path: Path, teacher_path: Path, monkeypatch) -> None:
    import usjepa_fast.kernels.attention_triton as at
    import usjepa_fast.kernels.smooth_l1_triton as st

    calls = {"attention": 0, "loss": 0}
    real_attn, real_loss = at.triton_varlen_attention, st.triton_salt_smooth_l1

    def attn(*args, **kwargs):
        calls["attention"] += 1
        return real_attn(*args, **kwargs)

    def loss(*args, **kwargs):
        calls["loss"] += 1
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(at, "triton_varlen_attention", attn)  # training runs packed tokens
    monkeypatch.setattr(st, "triton_salt_smooth_l1", loss)

    reference = _losses(tmp_path / "torch", "torch", teacher_path)
    assert calls == {"attention": 0, "loss": 0}
    fused = _losses(tmp_path / "triton", "triton", teacher_path)
    assert calls["loss"] >= STEPS and calls["attention"] >= 2 * STEPS  # student + predictor per step

    assert len(reference) == len(fused) == STEPS
    # fp32 everywhere; kernels and SDPA differ only in summation order.
    torch.testing.assert_close(torch.tensor(fused), torch.tensor(reference), rtol=1e-4, atol=1e-6)
    assert reference[0] != reference[-1]  # the curve moved, so matching it is not trivial
