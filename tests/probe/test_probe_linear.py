"""Linear probes: learn, are deterministic by seed, and a seed's head does not depend on its neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from usjepa_fast.errors import UsfastError
from usjepa_fast.probe.linear import PaperConfig, SweepConfig, train_paper, train_probe, train_sweep


def _blobs(n: int, d: int = 24, c: int = 4, sep: float = 2.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * sep / np.sqrt(d) * 2
    y = np.arange(n) % c
    x = centers[y] + rng.normal(size=(n, d))
    return (x * 5 + 3).astype(np.float32), y.astype(np.int64)  # offset/scale: standardisation matters


@pytest.fixture(scope="module")
def data():
    x, y = _blobs(300)
    return x[:160], y[:160], x[160:220], y[160:220], x[220:], y[220:]


@pytest.mark.parametrize("preset", ["paper", "sweep"])
def test_probe_learns_separable_classes(data, preset: str) -> None:
    xtr, ytr, xva, yva, xte, yte = data
    heads = train_probe(xtr, ytr, xva, yva, 4, preset, seeds=[0, 1], device="cpu")
    assert heads.weight.shape == (2, 24, 4) and heads.bias.shape == (2, 4)
    assert heads.predict(xte).shape == (2, 80)
    scores = heads.evaluate(xte, yte)
    assert scores.summary().mean > 0.9, scores.summary()
    assert len(scores.reports) == 2 and scores.seeds == [0, 1]


def test_paper_probe_is_deterministic_and_seed_independent_of_batching(data) -> None:
    xtr, ytr, xva, yva, *_ = data
    cfg = PaperConfig(max_epochs=30)
    a = train_paper(xtr, ytr, xva, yva, 4, seeds=[3, 4], config=cfg, device="cpu")
    b = train_paper(xtr, ytr, xva, yva, 4, seeds=[3, 4], config=cfg, device="cpu")
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    alone = train_paper(xtr, ytr, xva, yva, 4, seeds=[4], config=cfg, device="cpu")
    # seed 4 trained next to seed 3 == seed 4 trained alone (own init, own shuffles, own early stop)
    torch.testing.assert_close(alone.weight[0], a.weight[1], atol=1e-5, rtol=1e-4)
    assert alone.hparams["best_epoch"][0] == a.hparams["best_epoch"][1]
    assert not torch.allclose(a.weight[0], a.weight[1])  # different seeds, different heads


def test_paper_probe_early_stops_on_validation_loss() -> None:
    # Pure-noise labels: validation loss only rises, so patience ends training long before 150 epochs.
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 3, 64)
    heads = train_paper(x[:48], y[:48], x[48:], y[48:], 3, seeds=[0], config=PaperConfig(patience=5), device="cpu")
    assert heads.hparams["epochs_run"] < 150
    assert heads.hparams["epochs_run"] - heads.hparams["best_epoch"][0] == 5


def test_sweep_is_deterministic_and_picks_from_its_grid(data) -> None:
    xtr, ytr, xva, yva, *_ = data
    cfg = SweepConfig(lrs=(1e-3, 1e-2), weight_decays=(0.0, 1e-2), max_epochs=10)
    a = train_sweep(xtr, ytr, xva, yva, 4, seeds=[0, 1, 2], config=cfg, device="cpu")
    b = train_sweep(xtr, ytr, xva, yva, 4, seeds=[0, 1, 2], config=cfg, device="cpu")
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    assert a.weight.shape == (3, 24, 4)
    assert a.hparams["lr"] in cfg.lrs and a.hparams["weight_decay"] in cfg.weight_decays
    assert a.hparams["num_heads"] == 12 and len(a.hparams["grid_val_macro_f1"]) == 4


def test_sweep_matches_sklearn_logistic_regression(data) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    xtr, ytr, xva, yva, xte, yte = data
    heads = train_sweep(xtr, ytr, xva, yva, 4, seeds=[0], device="cpu")
    ours = heads.evaluate(xte, yte).summary().mean
    mu, sd = xtr.mean(0), xtr.std(0)
    clf = LogisticRegression(C=1.0, max_iter=1000).fit((xtr - mu) / sd, ytr)
    ref = f1_score(yte, clf.predict((xte - mu) / sd), average="macro")
    assert ours >= ref - 0.05, (ours, ref)


def test_bad_inputs_are_user_errors(data) -> None:
    xtr, ytr, xva, yva, *_ = data
    with pytest.raises(UsfastError, match="validation"):
        train_probe(xtr, ytr, xva[:0], yva[:0], 4, "paper", device="cpu")
    with pytest.raises(UsfastError, match="labels"):
        train_probe(xtr, ytr, xva, yva, 3, "sweep", device="cpu")
    with pytest.raises(UsfastError, match="preset"):
        train_probe(xtr, ytr, xva, yva, 4, "lbfgs", device="cpu")  # type: ignore[arg-type]
    heads = train_probe(xtr, ytr, xva, yva, 4, "sweep", seeds=[0], device="cpu", config=SweepConfig(max_epochs=2))
    with pytest.raises(UsfastError, match="width"):
        heads.predict(xtr[:, :5])


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["paper", "sweep"])
def test_same_numbers_on_gpu(data, preset: str) -> None:
    xtr, ytr, xva, yva, xte, yte = data
    cpu = train_probe(xtr, ytr, xva, yva, 4, preset, seeds=[0, 1], device="cpu")
    gpu = train_probe(xtr, ytr, xva, yva, 4, preset, seeds=[0, 1], device="cuda")
    assert gpu.weight.is_cuda
    assert cpu.hparams.get("best_epoch") == gpu.hparams.get("best_epoch")
    torch.testing.assert_close(gpu.weight.cpu(), cpu.weight, atol=1e-3, rtol=1e-3)
    assert cpu.evaluate(xte, yte).summary().mean == pytest.approx(gpu.evaluate(xte, yte).summary().mean, abs=0.02)


def test_paper_engine_matches_torch_adamw_reference(data) -> None:
    """The hand-written batched AdamW / CE gradient == nn.Linear + torch.optim.AdamW + CosineAnnealingLR."""
    import torch.nn.functional as F

    from usjepa_fast.probe.linear import _init_linear

    xtr, ytr, xva, yva, *_ = data
    epochs = 3
    cfg = PaperConfig(max_epochs=epochs, patience=100, standardize=False)
    heads = train_paper(xtr, ytr, xva, yva, 4, seeds=[5], config=cfg, device="cpu")
    assert heads.hparams["best_epoch"] == [epochs]  # separable data: val loss still falling

    w0, b0 = _init_linear(5, 24, 4)
    w = w0[0].clone().requires_grad_(True)
    b = b0[0].clone().requires_grad_(True)
    opt = torch.optim.AdamW([w, b], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(5 + 1_000_003)  # the engine's shuffling stream for seed 5
    x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = F.cross_entropy(x[idx] @ w + b, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    torch.testing.assert_close(heads.weight[0], w.detach(), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(heads.bias[0], b.detach(), atol=2e-5, rtol=1e-4)
