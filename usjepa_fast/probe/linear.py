"""Linear probes on cached features: the paper's protocol (``paper``) and a fast sweep (``sweep``).

Both presets train *all heads at once* as one weight tensor (:mod:`usjepa_fast.probe.linear_engine`),
so a step is a handful of batched matmuls instead of one small ``nn.Linear`` per seed behind a
``DataLoader``.

``paper``  -- one linear layer per seed, AdamW (lr 1e-3, weight decay 1e-4), batch 32, cross-entropy,
    cosine schedule over up to 150 epochs, early stopping on validation loss with patience 15 (the
    weights of the best validation-loss epoch are kept), five seeds. Seeds are stacked as
    ``W (S, D, C)``; each seed has its own init (``nn.Linear``'s) and its own shuffling order, its
    gradient is exactly its own and AdamW is elementwise, so a seed's head is the same whether it
    trains alone or next to others (tested, as is the equality with ``nn.Linear`` + AdamW +
    ``CosineAnnealingLR``, with and without class weights).

``sweep``  -- the L2 regularisation path, like a scikit-learn ``LogisticRegression`` C sweep: one
    head per C in ``cs`` (L2 strength ``1 / (C * N_train)`` on the mean loss, bias unpenalised),
    all trained together by *preconditioned* minibatch SGD from zero on the features' eigen-coordinates
    (:mod:`usjepa_fast.probe.precondition`; batch 256, a per-step cosine schedule, >= 30 steps and
    >= 3 epochs), each head stopping early once its validation loss has
    stopped moving (its training is done; C is the regulariser). The configurations are ranked by
    validation macro F1 and the **top 3 are averaged** (their weights, i.e. their logits: still one
    linear head). The heads converge, so the sweep is deterministic: every probe seed gets the same
    head (its only randomness, the minibatch order ``order_seed``, moves test macro F1 by 0.3-1.2
    points over five orders, where the paper's five seeds move it by 0.6-1.8 on the same splits:
    benchmarks/results/probe_speed_cpu.txt).

Why the sweep looks like this -- measured during development on the small imbalanced tasks of issue
16 (features of the B-mode simulator's lesion task from a random-init tiny ViT, a SALT-trained one
and a random-init ViT-S/16, ~540 images at 56/27/17 % or 55/20/15/10 %, and two synthetic families;
patient-grouped stratified 70/10/20 splits, i.e. ~50 validation and ~115 test images; 8 families x
10 splits), then checked by benchmarks/probe_speed.py on 10 cases x 5 new splits. The previous
sweep (Nesterov SGD at lr 0.1/0.2 on the standardised features, nn.Linear init, 30 steps, best of
2 x 4 configurations) scored up to 7 points below the paper preset on a split and spread up to 6
points over seeds. Causes, largest first: (1) frozen-encoder features are badly conditioned -- the
top eigenvalue of the standardised train covariance is 47-215 out of a trace of D -- so SGD at
those learning rates oscillated along the top directions and stopped wherever its 30 steps ended:
the seeds landed on different heads.
Preconditioning by Boehning's Hessian bound (``probe.precondition``) gives one learning rate that
converges for every C and every encoder; (2) 30 unpreconditioned steps were too few for the weakly
regularised heads; (3) a single best configuration picked on ~50 validation images is a coin toss between
neighbouring C values (one image is more than a point of macro F1): averaging the top 3 beat the
single best by 0.5 points on average (up to 1.4) and never lost more than 0.4. With these, the
benchmark's sweep is -0.2 to +5.1 points from the paper preset on all 10 cases (5 splits each);
the large gains are on random-init ViT-S features and 4-class tasks with a 10 % class, where the
paper's early stopping on validation loss stops before the minority classes are learned (the
scikit-learn C sweep is at or above the paper preset there too). Tried and not kept: ranking
configurations by validation loss instead of F1 (-3.9 points on random-init features, +1.0 on
trained ones: the loss prefers strong L2, which drops minority classes); 5-fold cross-validation
over train+validation (no better than top-3 averaging, at 5x the cost); keeping each head's
best-validation-loss snapshot with patience 3 (same mean, order spread 1.3-2.1 instead of 0.6-1.2);
class weighting by default (+0.0 points on average over the 8 families, -1.6 to +1.6; +0.3 in the
benchmark, -1.6 to +3.0: kept as an option); 10 epochs instead of 5 (within 0.7 points, ~1.7x the
time).

Then for speed (issue 16's >= 5x scikit-learn): the heads train on the eigen-coordinates, where the
preconditioner is an elementwise scale instead of two matmuls per step; the randomized eigensolver
takes one power iteration and reuses its last product for the coordinates; the schedule is 3 epochs /
>= 30 steps instead of 5 / 60, at batch 256 instead of 128; and rounds validate only where a head
can stop. Over the 10 cases (5 splits x 3 orders each) 3 / 30 moved macro F1 by -0.4 to +1.0 points
against 5 / 60 (mean +0.2); batch 256 then lowered the order spread where it was largest (a
SALT-trained tiny-ViT case: 1.0 -> 0.5 points, 5 splits x 5 orders) at the same F1 (+0.1 mean).
Result: 6.3-40.6x scikit-learn on every case of benchmarks/probe_speed.py (was 3.2-16.7x). Tried and
not kept: learning rate 2 (-0.7 points: more converged weak heads overfit); rank 32 (-1.0 on the 500
x 768 case); averaging the iterates of the last round(s) (no lower spread); a window of 3 adjacent C
values instead of the top 3 (spread 1.2 vs 1.0); exact eigendecompositions beyond 160 dimensions (15
ms at 350 x 768: more than the rest of the sweep).

Class weighting (``class_weight="balanced"``, both presets, off by default -- the paper does not use
it): each sample's loss is weighted ``N / (C * n_c)`` (scikit-learn's ``"balanced"``) and the
weighted mean taken as ``F.cross_entropy(weight=...)`` does, in training and in the validation loss
used for early stopping.

Features are standardised with the training split's mean/std by default (``standardize=True``;
it makes one learning-rate grid work across encoders whose feature scales differ by orders of
magnitude). Pass ``standardize=False`` for the raw-feature protocol. Everything runs on
``device`` (CUDA when present, CPU otherwise) in float32; the numbers agree across devices up to
float tolerance.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch

from usjepa_fast.errors import UsfastError
from usjepa_fast.probe.linear_engine import (
    Prepared,
    class_weights,
    prepare,
    standardize,
    to_numpy_labels,
    to_tensor,
    train_heads,
)
from usjepa_fast.probe.metrics import ClassificationReport, MeanStd, batched_macro_f1, classification_report, mean_std
from usjepa_fast.probe.precondition import precondition

Preset = Literal["paper", "sweep"]
PAPER_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
CLASS_WEIGHTS: tuple[str | None, ...] = (None, "balanced")


@dataclass
class PaperConfig:
    """The US-JEPA linear-probe protocol."""

    lr: float = 1e-3  # paper: AdamW lr 1e-3
    weight_decay: float = 1e-4  # paper: weight decay 1e-4
    batch_size: int = 32  # paper: batch 32
    max_epochs: int = 150  # paper: up to 150 epochs, cosine schedule over them
    patience: int = 15  # paper: early stopping on validation loss, patience 15
    standardize: bool = True  # z-score features with train statistics (see module doc)
    class_weight: str | None = None  # None (the paper) or "balanced" (loss weights N / (C * n_c))


@dataclass
class SweepConfig:
    """The L2 path (one head per C), trained together, top-k averaged on validation (see the module doc)."""

    # scikit-learn C values: L2 strength 1 / (C * N_train) on the mean loss (bias unpenalised). Half a
    # decade apart over the range where frozen-feature probes are picked; the extremes predict the
    # majority class (strong) or interpolate the train split (weak).
    cs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, 30.0)
    # Step sizes in preconditioned units: 1 is the Newton step of the Hessian bound (stable for all C).
    lrs: tuple[float, ...] = (1.0,)
    # 256: the minibatch order moved test macro F1 by 0.3-1.1 points over orders at 256, 0.3-1.3 at 128
    # (10 cases x 5 splits x 3 orders), at the same F1 (+0.1 mean): fewer, less noisy steps.
    batch_size: int = 256
    # Rounds (epochs, or min_steps / max_epochs steps when the split is small) of the per-step cosine
    # schedule: 3 epochs / >= 30 steps score like 5 / 60 and 10 / 60 (module doc), at about half the time.
    max_epochs: int = 3
    min_steps: int = 30
    # Per-head early stopping. "converged": a head stops after `patience` rounds in which its validation
    # loss moved by < 0.1 % (its training is done; the L2 strength C is the regulariser); "no_improvement":
    # after `patience` rounds without a new lowest validation loss (the paper's rule).
    stop_rule: Literal["converged", "no_improvement"] = "converged"
    patience: int = 2
    # Which weights a head keeps: "last" (where it stopped), "loss" (its lowest validation loss) or
    # "f1" (its best validation macro F1).
    snapshot: Literal["last", "loss", "f1"] = "last"
    top_k: int = 3  # average the heads of the k configurations with the best validation macro F1
    # Directions of the train covariance preconditioned exactly (the rest share one bound) when it is
    # too large for an exact eigendecomposition: the top eigenvalues of frozen features dominate
    # (47-215 of a trace of D), the tail is flat.
    precondition_rank: int = 64
    order_seed: int = 0  # the minibatch order of the (deterministic) sweep; not the probe seeds
    standardize: bool = True
    class_weight: str | None = None  # None or "balanced", as in PaperConfig


@dataclass
class LinearHeads:
    """Trained heads: ``W (S, D, C)``, ``b (S, C)``, one per seed, plus the feature standardiser."""

    weight: torch.Tensor
    bias: torch.Tensor
    mean: torch.Tensor | None  # (D,) train mean when standardised
    std: torch.Tensor | None  # (D,) train std when standardised
    seeds: list[int]
    num_classes: int
    preset: str
    hparams: dict = field(default_factory=dict)  # chosen lr / wd / best epochs per seed
    train_seconds: float = 0.0

    def logits(self, x: np.ndarray | torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """x (N, D) -> logits (S, N, C) float32 (on the heads' device)."""
        xt = to_tensor(x, self.weight.device)
        if xt.shape[1] != self.weight.shape[1]:
            raise UsfastError(
                f"features have width {xt.shape[1]} but the probe was trained on width {self.weight.shape[1]}; "
                "embed with the same encoder"
            )
        xt = standardize(xt, self.mean, self.std)
        outs = [
            torch.einsum("nd,sdc->snc", xt[i : i + chunk], self.weight) + self.bias[:, None, :]
            for i in range(0, xt.shape[0], chunk)
        ]
        return torch.cat(outs, dim=1) if outs else xt.new_zeros(len(self.seeds), 0, self.num_classes)

    def predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """x (N, D) -> predicted class (S, N) int64, one row per seed."""
        return self.logits(x).argmax(dim=-1).cpu().numpy()

    def evaluate(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> ProbeScores:
        """Per-seed reports on (x, y) and their mean ± std."""
        y_np = to_numpy_labels(y)
        preds = self.predict(x)
        reports = [classification_report(y_np, p, self.num_classes) for p in preds]
        return ProbeScores(reports=reports, seeds=list(self.seeds))


@dataclass
class ProbeScores:
    """Per-seed classification reports and their mean ± std (fractions in [0, 1])."""

    reports: list[ClassificationReport]
    seeds: list[int]

    def summary(self, key: str = "macro_f1") -> MeanStd:
        return mean_std([getattr(r, key) for r in self.reports])

    def to_dict(self) -> dict:
        out: dict = {"seeds": list(self.seeds), "per_seed": [r.to_dict() for r in self.reports]}
        for key in ("macro_f1", "accuracy", "balanced_accuracy"):
            ms = self.summary(key)
            out[key] = {"mean": ms.mean, "std": ms.std}
        per_class = np.asarray([r.per_class_f1 for r in self.reports])
        out["per_class_f1_mean"] = per_class.mean(axis=0).tolist() if per_class.size else []
        return out


# ----------------------------------------------------------------------------------------------
# the presets


def _check_class_weight(value: str | None) -> None:
    if value not in CLASS_WEIGHTS:
        raise UsfastError(f"class_weight {value!r}: use None or 'balanced'")


def _with_class_weight(p: Prepared, value: str | None, num_classes: int) -> Prepared:
    _check_class_weight(value)
    if value == "balanced":
        p.class_weight = class_weights(p.ytr, num_classes)
    return p


def train_paper(
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    x_val: np.ndarray | torch.Tensor,
    y_val: np.ndarray | torch.Tensor,
    num_classes: int,
    seeds: Sequence[int] = PAPER_SEEDS,
    config: PaperConfig | None = None,
    device: torch.device | str | None = None,
) -> LinearHeads:
    """The paper's probe for every seed at once; heads restored to their best validation-loss epoch.

    Each seed has its own init and shuffling stream and its own early stopping, so a seed's head is
    the same whether it trains alone or next to other seeds (up to float summation order).
    """
    cfg = config or PaperConfig()
    t0 = time.perf_counter()
    p = prepare(x_train, y_train, x_val, y_val, num_classes, cfg.standardize, device)
    p = _with_class_weight(p, cfg.class_weight, num_classes)
    tr = train_heads(
        p,
        num_classes,
        seeds,
        [(cfg.lr, cfg.weight_decay)],
        cfg.batch_size,
        cfg.max_epochs,
        cfg.patience,
        snapshot="loss",
        schedule="epoch",
    )
    return LinearHeads(
        weight=tr.weight,
        bias=tr.bias,
        mean=p.mean,
        std=p.std,
        seeds=[int(sd) for sd in seeds],
        num_classes=num_classes,
        preset="paper",
        hparams={
            **asdict(cfg),
            "best_epoch": tr.best_epoch[:, 0].cpu().tolist(),
            "best_val_loss": tr.best_loss[:, 0].cpu().tolist(),
            "epochs_run": tr.epochs_run,
        },
        train_seconds=time.perf_counter() - t0,
    )


def train_sweep(
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    x_val: np.ndarray | torch.Tensor,
    y_val: np.ndarray | torch.Tensor,
    num_classes: int,
    seeds: Sequence[int] = PAPER_SEEDS,
    config: SweepConfig | None = None,
    device: torch.device | str | None = None,
) -> LinearHeads:
    """Train the C x lr heads together; return the average of the top-k configurations, for every seed.

    Configurations are ranked by validation macro F1 (ties: lower validation loss); the returned head
    is the mean of the top-k configurations' heads (= the mean of their logits). The heads converge
    to the L2 optimum of their C, so the sweep is deterministic and does not depend on ``seeds``:
    every seed gets the same head (``config.order_seed`` fixes the minibatch order; over order seeds
    the test macro F1 moves by well under a point, see benchmarks/probe_speed.py). ``seeds`` still
    matter where they change the data, e.g. the few-shot subsets.
    """
    if not seeds:
        raise UsfastError("no seeds given; pass at least one seed")
    cfg = config or SweepConfig()
    if not cfg.lrs or not cfg.cs:
        raise UsfastError("sweep config needs at least one learning rate and one C value")
    if min(cfg.cs) <= 0 or min(cfg.lrs) <= 0:
        raise UsfastError("sweep C values and learning rates must be positive")
    if cfg.top_k < 1:
        raise UsfastError(f"sweep top_k={cfg.top_k}: average at least one configuration")
    t0 = time.perf_counter()
    p = prepare(x_train, y_train, x_val, y_val, num_classes, cfg.standardize, device)
    p = _with_class_weight(p, cfg.class_weight, num_classes)
    n_train = int(p.xtr.shape[0])
    q = precondition(p, cfg.precondition_rank)
    grid = [(lr, 1.0 / (cv * n_train)) for lr in cfg.lrs for cv in cfg.cs]
    names = [(lr, cv) for lr in cfg.lrs for cv in cfg.cs]
    tr = train_heads(
        q,
        num_classes,
        [cfg.order_seed],
        grid,
        cfg.batch_size,
        cfg.max_epochs,
        cfg.patience,
        snapshot=cfg.snapshot,
        schedule="step",
        optimizer="psgd",
        init="zero",
        reshuffle=False,
        min_steps=cfg.min_steps,
        stop_rule=cfg.stop_rule,
    )
    g, c = len(grid), num_classes
    s = 1  # one trained set of heads, shared by every seed (see the docstring)
    val_logits = (torch.matmul(q.xva, tr.weight) + tr.bias[:, None, :]).view(s, -1, c, g)  # (S, Nv, C, G)
    val_pred = val_logits.argmax(dim=2).transpose(1, 2).reshape(s * g, -1)  # (S*G, Nv)
    val_f1 = batched_macro_f1(q.yva, val_pred, c).view(s, g).mean(dim=0)  # (G,)
    score = val_f1.double() - 1e-9 * tr.best_loss.mean(dim=0).double()
    k = min(cfg.top_k, g)
    top = torch.argsort(score, descending=True, stable=True)[:k].tolist()
    w = tr.weight.view(s, -1, c, g)[..., top].mean(dim=-1)  # (S, D, C)
    b = tr.bias.view(s, c, g)[..., top].mean(dim=-1)  # (S, C)
    w, b = q.to_features(w, b)
    return LinearHeads(
        weight=w.expand(len(seeds), -1, -1).contiguous(),
        bias=b.expand(len(seeds), -1).contiguous(),
        mean=p.mean,
        std=p.std,
        seeds=[int(sd) for sd in seeds],
        num_classes=c,
        preset="sweep",
        hparams={
            "selected": [{"lr": names[j][0], "C": names[j][1]} for j in top],
            "lr": names[top[0]][0],
            "C": names[top[0]][1],
            "weight_decay": grid[top[0]][1],
            "top_k": k,
            "val_macro_f1": float(val_f1[top].mean()),
            "grid_val_macro_f1": {f"lr={lr:g},C={cv:g}": float(f) for (lr, cv), f in zip(names, val_f1, strict=True)},
            "stopped_epoch": tr.stopped_epoch[:, top].cpu().tolist(),
            "epochs_run": tr.epochs_run,
            "steps_run": tr.steps_run,
            "num_heads": g,
            "order_seed": cfg.order_seed,
            "batch_size": min(cfg.batch_size, n_train),
            "precondition": "exact" if q.curvature.exact else "low-rank",
            "precondition_rank": int(q.curvature.basis.shape[1]),
            "standardize": cfg.standardize,
            "snapshot": cfg.snapshot,
            "class_weight": cfg.class_weight,
        },
        train_seconds=time.perf_counter() - t0,
    )


def train_probe(
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    x_val: np.ndarray | torch.Tensor,
    y_val: np.ndarray | torch.Tensor,
    num_classes: int,
    preset: Preset = "paper",
    seeds: Sequence[int] = PAPER_SEEDS,
    device: torch.device | str | None = None,
    config: PaperConfig | SweepConfig | None = None,
) -> LinearHeads:
    """Dispatch on ``preset`` (``"paper"`` or ``"sweep"``)."""
    if preset == "paper":
        if config is not None and not isinstance(config, PaperConfig):
            raise UsfastError("preset 'paper' takes a PaperConfig")
        return train_paper(x_train, y_train, x_val, y_val, num_classes, seeds, config, device)
    if preset == "sweep":
        if config is not None and not isinstance(config, SweepConfig):
            raise UsfastError("preset 'sweep' takes a SweepConfig")
        return train_sweep(x_train, y_train, x_val, y_val, num_classes, seeds, config, device)
    raise UsfastError(f"unknown probe preset {preset!r}; use 'paper' or 'sweep'")
