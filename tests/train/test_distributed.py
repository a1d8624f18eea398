"""DDP under a 2-process gloo group on CPU: ranks stay in sync and only rank 0 writes."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, tests_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    sys.path.insert(0, tests_dir)  # spawned workers import the shared helpers like the parent
    from support.train import fan_validity, smooth_images, tiny_cfg

    from usjepa_fast.train.data import TensorImageDataset
    from usjepa_fast.train.engine import Trainer, run

    imgs, valid = smooth_images(40), fan_validity(40)
    cfg = tiny_cfg(
        Path(out_dir), "objective.kind=pixel", "optim.steps=4", "mask.usrc=true", "run.val_every=4", "data.batch_size=4"
    )
    captured = {}
    original = Trainer.export_student

    def keep(self):  # grab each rank's final weights
        captured["student"] = {k: v.clone() for k, v in self.student.state_dict().items()}
        return original(self)

    Trainer.export_student = keep
    summary = run(
        cfg,
        train_dataset=TensorImageDataset(imgs[:32], valid[:32]),
        val_dataset=TensorImageDataset(imgs[32:], valid[32:]),
    )
    torch.save(
        {"student": captured["student"], "step": summary.step, "val": summary.best_val_loss},
        Path(out_dir) / f"rank{rank}.pt",
    )


@pytest.mark.slow
def test_two_process_gloo_ddp(tmp_path) -> None:
    out = tmp_path / "ddp"
    mp.spawn(_worker, args=(2, _free_port(), str(out), str(Path(__file__).parents[1])), nprocs=2, join=True)
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert r0["step"] == r1["step"] == 4
    assert r0["val"] == pytest.approx(r1["val"])  # all-reduced validation loss
    for k, v in r0["student"].items():
        assert torch.equal(v, r1["student"][k]), f"ranks diverged on {k}"
    assert (out / "student.safetensors").is_file() and (out / "metrics.jsonl").is_file()
