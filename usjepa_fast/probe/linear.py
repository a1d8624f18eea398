"""Linear probes on cached features: the paper's protocol (``paper``) and a batched sweep (``sweep``).

Both presets train *all heads at once* as one weight tensor, so the per-step cost is a handful of
batched matmuls instead of one small ``nn.Linear`` per seed behind a ``DataLoader``:

``paper``  -- one linear layer per seed, AdamW (lr 1e-3, weight decay 1e-4), batch 32, cross-entropy,
    cosine schedule over up to 150 epochs, early stopping on validation loss with patience 15 (the
    weights of the best validation-loss epoch are kept), five seeds. Seeds are stacked as
    ``W (S, D, C)``; each seed has its own init (``nn.Linear``'s) and its own shuffling order, its
    gradient is exactly its own and AdamW is elementwise, so a seed's head is the same whether it
    trains alone or next to others (tested). A seed whose patience ran out is frozen at its best
    epoch; the loop ends when every seed has stopped.

``sweep`` -- DINOv2-style: learning rates x weight decays x seeds trained together as
    ``W (S, D, G*C)`` (G = lr x wd configurations that share seed S's minibatch order) with
    Nesterov SGD and *coupled* L2 (so the weight-decay grid is a logistic-regression C grid),
    batch 256 and a short per-step cosine schedule. Each head keeps its best-validation-loss
    round; the configuration with the best mean validation macro F1 over seeds wins and is reported
    on test with its per-seed heads. benchmarks/probe_speed.py: >= 5x faster than a scikit-learn
    LogisticRegression C sweep at equal macro F1 on 2,000 x 768 features.

Both presets share one engine with a hand-written softmax-CE gradient and vectorised optimizers
(tested equal to ``nn.Linear`` + ``torch.optim.AdamW`` + ``CosineAnnealingLR``): at probe sizes the
per-step Python overhead of autograd / ``torch.optim`` dominates, not the matmuls.

Features are standardised with the training split's mean/std by default (``standardize=True``;
it makes one learning-rate grid work across encoders whose feature scales differ by orders of
magnitude). Pass ``standardize=False`` for the raw-feature protocol. Everything runs on
``device`` (CUDA when present, CPU otherwise) in float32; the numbers agree across devices up to
float tolerance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from usjepa_fast.errors import UsfastError
from usjepa_fast.probe.metrics import ClassificationReport, MeanStd, batched_macro_f1, classification_report, mean_std

Preset = Literal["paper", "sweep"]
PAPER_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)


@dataclass
class PaperConfig:
    """The US-JEPA linear-probe protocol."""

    lr: float = 1e-3  # paper: AdamW lr 1e-3
    weight_decay: float = 1e-4  # paper: weight decay 1e-4
    batch_size: int = 32  # paper: batch 32
    max_epochs: int = 150  # paper: up to 150 epochs, cosine schedule over them
    patience: int = 15  # paper: early stopping on validation loss, patience 15
    standardize: bool = True  # z-score features with train statistics (see module doc)


@dataclass
class SweepConfig:
    """Many heads at once, picked on validation; far cheaper than the paper loop per head."""

    # Nesterov SGD step sizes on standardised features (the loss is then well scaled for these).
    lrs: tuple[float, ...] = (0.1, 0.2)
    # Coupled L2 strengths: the regularisation path, i.e. a logistic-regression C grid (C = 1 / (wd * N)).
    weight_decays: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    batch_size: int = 256  # large batches: few optimizer steps, GEMM-sized matmuls
    max_epochs: int = 6  # rounds (epochs, see min_steps) of the per-step cosine schedule
    min_steps: int = 30  # small splits (few-shot) get longer rounds so that training has >= this many steps
    patience: int = 2  # per-head early stopping (rounds without a better validation snapshot)
    eval_every: int = 1  # validation pass cadence in rounds
    # Per-head snapshot criterion: "loss" keeps the round with the lowest validation loss (the paper's
    # early-stopping criterion; smoother than F1 on small validation splits); "f1" keeps the best
    # validation macro F1 (ties: lower loss). Configurations are always ranked by validation macro F1.
    snapshot: Literal["f1", "loss"] = "loss"
    # SGD + coupled L2 converges towards the L2-regularised logistic-regression solution; Adam's
    # per-coordinate scaling does not (it lost ~3 macro-F1 points to it on 768-d features).
    optimizer: Literal["sgd", "adamw"] = "sgd"
    init: Literal["zero", "linear"] = "linear"  # nn.Linear init: seeds differ by init (and data order)
    reshuffle: bool = False  # one shuffle per seed, then a fixed minibatch order (saves a gather per epoch)
    standardize: bool = True


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
        xt = _to_tensor(x, self.weight.device)
        if xt.shape[1] != self.weight.shape[1]:
            raise UsfastError(
                f"features have width {xt.shape[1]} but the probe was trained on width {self.weight.shape[1]}; "
                "embed with the same encoder"
            )
        xt = _standardize(xt, self.mean, self.std)
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
        y_np = _to_numpy_labels(y)
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
# helpers


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _to_tensor(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim != 2:
        raise UsfastError(f"features must be a 2-D (N, D) array, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.float32)


def _to_numpy_labels(y: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    return np.asarray(y).astype(np.int64, copy=False)


def _standardize(x: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
    if mean is None or std is None:
        return x
    return (x - mean) / std


def _fit_standardizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(dim=0)
    # Constant features (std 0) would divide by zero; leave them centred but unscaled.
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean, std


def _validate(
    x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, num_classes: int
) -> None:
    if x_train.shape[0] == 0:
        raise UsfastError("the training split is empty; check the dataset's train split")
    if x_val.shape[0] == 0:
        raise UsfastError("the validation split is empty; the probe's early stopping needs validation samples")
    if x_train.shape[0] != y_train.shape[0] or x_val.shape[0] != y_val.shape[0]:
        raise UsfastError("features and labels differ in length; re-extract features for this split")
    if x_train.shape[1] != x_val.shape[1]:
        raise UsfastError("train and validation features differ in width; embed both with the same encoder")
    for name, y in (("train", y_train), ("validation", y_val)):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise UsfastError(f"{name} labels fall outside [0, {num_classes}); check num_classes")


def _init_linear(seed: int, d: int, c: int, n_copies: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear's default init (U(-1/sqrt(D), 1/sqrt(D)) for weight and bias), from ``seed`` on CPU.

    Drawn on CPU with a private generator so that a seed gives the same head on every device.
    """
    g = torch.Generator().manual_seed(int(seed))
    bound = 1.0 / math.sqrt(d)
    w = (torch.rand(n_copies, d, c, generator=g) * 2 - 1) * bound
    b = (torch.rand(n_copies, c, generator=g) * 2 - 1) * bound
    return w, b


# ----------------------------------------------------------------------------------------------
# the shared engine: S seeds x G (lr, wd) configurations, manual softmax-CE gradient, vectorised AdamW


@dataclass
class _Prepared:
    xtr: torch.Tensor
    ytr: torch.Tensor
    xva: torch.Tensor
    yva: torch.Tensor
    mean: torch.Tensor | None
    std: torch.Tensor | None
    device: torch.device


def _prepare(x_train, y_train, x_val, y_val, num_classes, standardize, device) -> _Prepared:
    dev = torch.device(device) if device is not None else default_device()
    xtr, xva = _to_tensor(x_train, dev), _to_tensor(x_val, dev)
    ytr = torch.as_tensor(_to_numpy_labels(y_train), device=dev)
    yva = torch.as_tensor(_to_numpy_labels(y_val), device=dev)
    _validate(xtr, ytr, xva, yva, num_classes)
    mean = std = None
    if standardize:
        mean, std = _fit_standardizer(xtr)
        xtr, xva = _standardize(xtr, mean, std), _standardize(xva, mean, std)
    return _Prepared(xtr, ytr, xva, yva, mean, std, dev)


@dataclass
class _Trained:
    weight: torch.Tensor  # (S, D, G*C) best snapshot per head
    bias: torch.Tensor  # (S, G*C)
    best_loss: torch.Tensor  # (S, G) validation loss at the snapshot
    best_epoch: torch.Tensor  # (S, G)
    epochs_run: int


def _train_heads(
    p: _Prepared,
    num_classes: int,
    seeds: Sequence[int],
    grid: Sequence[tuple[float, float]],
    batch_size: int,
    max_epochs: int,
    patience: int,
    snapshot: str,
    schedule: str,
    eval_every: int = 1,
    optimizer: str = "adamw",
    momentum: float = 0.9,
    init: str = "linear",
    reshuffle: bool = True,
    min_steps: int = 0,
) -> _Trained:
    """Minibatch AdamW on softmax cross-entropy for S seeds x G configurations at once.

    Weights live as ``W (S, D, G*C)``: the G configurations of a seed share its minibatch order, so
    a step is one ``bmm`` per seed over all its heads. The gradient of the mean cross-entropy is
    written out ((softmax - onehot) / b), which avoids autograd and ``torch.optim`` bookkeeping --
    the per-step Python overhead dominates at these sizes. AdamW matches ``torch.optim.AdamW``
    (betas 0.9/0.999, eps 1e-8, decoupled decay ``p *= 1 - lr * wd``, bias-corrected moments).
    ``schedule``: ``"epoch"`` = cosine stepped per epoch (``CosineAnnealingLR(T_max=max_epochs)``),
    ``"step"`` = cosine per optimizer step. ``snapshot``: keep each head's best epoch by validation
    ``"loss"`` or by validation ``"f1"`` (ties broken by loss). A head stops after ``patience`` epochs
    without a new best; training ends when every head has stopped.
    """
    if not seeds:
        raise UsfastError("no seeds given; pass at least one seed")
    xtr, ytr, xva, yva, dev = p.xtr, p.ytr, p.xva, p.yva, p.device
    s, n, d, c, g = len(seeds), xtr.shape[0], xtr.shape[1], num_classes, len(grid)
    inits = [_init_linear(sd, d, c) for sd in seeds]
    if init == "zero":  # the L2 regularisation path starts at 0 (seeds then differ by data order only)
        inits = [(torch.zeros_like(wi), torch.zeros_like(bi)) for wi, bi in inits]
    # Every configuration of a seed starts from that seed's init (configs differ only by lr / wd).
    w = torch.cat([wi.repeat(1, 1, g) for wi, _ in inits]).to(dev)  # (S, D, G*C), config-major columns
    b = torch.cat([bi.repeat(1, g) for _, bi in inits]).to(dev)  # (S, G*C)
    lr_col = torch.tensor([lr for lr, _ in grid], device=dev, dtype=torch.float32).repeat_interleave(c)
    wd_col = torch.tensor([wd for _, wd in grid], device=dev, dtype=torch.float32).repeat_interleave(c)
    m_w, v_w = torch.zeros_like(w), torch.zeros_like(w)
    m_b, v_b = torch.zeros_like(b), torch.zeros_like(b)
    beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch AdamW defaults
    onehot = F.one_hot(ytr, c).float()  # (N, C)
    gens = [torch.Generator().manual_seed(int(sd) + 1_000_003) for sd in seeds]  # shuffling streams

    bs = max(1, min(int(batch_size), n))
    # A "round" (evaluation + patience unit) is one epoch, or more steps when the split is so small
    # that max_epochs epochs would be fewer than min_steps optimizer steps (few-shot subsets).
    steps_per_round = max(math.ceil(n / bs), math.ceil(min_steps / max(1, max_epochs)))
    total_steps = steps_per_round * max_epochs
    best_loss = torch.full((s, g), float("inf"), device=dev)
    best_crit = torch.full((s, g), float("inf"), device=dev)
    best_w, best_b = w.clone(), b.clone()
    best_epoch = torch.zeros(s, g, dtype=torch.long, device=dev)
    waited = torch.zeros(s, g, dtype=torch.long, device=dev)
    active = torch.ones(s, g, dtype=torch.bool, device=dev)
    yva_rep = yva.repeat(s * g)
    step = 0
    epochs_run = 0
    xs = ys = None
    pos = n  # next minibatch start; >= n means "start a new pass over the data"
    for epoch in range(max_epochs):
        if schedule == "epoch":
            lr_epoch = lr_col * (0.5 * (1.0 + math.cos(math.pi * epoch / max_epochs)))
        for _ in range(steps_per_round):
            if pos >= n:
                if reshuffle or xs is None:
                    order = torch.stack([torch.randperm(n, generator=gen) for gen in gens]).to(dev)  # (S, N)
                    # One gather per pass; minibatches are then contiguous views (no per-step copies).
                    xs, ys = xtr[order], onehot[order]  # (S, N, D), (S, N, C)
                pos = 0
            xb, yb = xs[:, pos : pos + bs], ys[:, pos : pos + bs]  # (S, b, D), (S, b, C) views
            pos += bs
            nb = xb.shape[1]
            logits = torch.baddbmm(b[:, None, :], xb, w).view(s, nb, g, c)  # (S, b, G, C)
            # d(mean CE)/d(logits) = (softmax - onehot) / b, per head.
            grad = torch.softmax(logits, dim=-1).sub_(yb[:, :, None, :]).div_(nb)
            grad = grad.view(s, nb, g * c)
            gw = torch.bmm(xb.transpose(1, 2), grad)  # (S, D, G*C)
            gb = grad.sum(dim=1)  # (S, G*C)
            step += 1
            if schedule == "epoch":
                lr_t = lr_epoch
            else:
                lr_t = lr_col * (0.5 * (1.0 + math.cos(math.pi * (step - 1) / total_steps)))
            if optimizer == "sgd":
                # Nesterov SGD with *coupled* L2 (torch.optim.SGD semantics): the weight-decay grid is
                # then exactly an L2-penalty (1 / C) grid, like a logistic-regression C sweep.
                gw.add_(w * wd_col)
                gb.add_(b * wd_col)
                for prm, gp, m in ((w, gw, m_w), (b, gb, m_b)):
                    m.mul_(momentum).add_(gp)
                    prm.sub_(lr_t * (gp + momentum * m))
                continue
            bc1, bc2 = 1 - beta1**step, 1 - beta2**step
            for prm, gp, m, v in ((w, gw, m_w, v_w), (b, gb, m_b, v_b)):
                m.mul_(beta1).add_(gp, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(gp, gp, value=1 - beta2)
                prm.mul_(1 - lr_t * wd_col)  # decoupled weight decay (AdamW)
                prm.sub_((lr_t / bc1) * m / ((v / bc2).sqrt_().add_(eps)))
        epochs_run = epoch + 1
        if (epoch + 1) % eval_every and epoch + 1 != max_epochs:
            continue
        val_logits = (torch.matmul(xva, w) + b[:, None, :]).view(s, -1, g, c)  # (S, Nv, G, C)
        val_loss = (
            F.cross_entropy(val_logits.permute(0, 2, 1, 3).reshape(-1, c), yva_rep, reduction="none")
            .view(s, g, -1)
            .mean(dim=-1)
        )  # (S, G)
        if snapshot == "f1":
            val_pred = val_logits.argmax(dim=-1).permute(0, 2, 1).reshape(s * g, -1)  # (S*G, Nv)
            # Lower is better: -F1 first, loss as a tie-breaker (F1 moves in steps of ~1/Nv).
            crit = -batched_macro_f1(yva, val_pred, c).view(s, g).float() + 1e-4 * val_loss.clamp_max(100)
        else:
            crit = val_loss
        improved = (crit < best_crit) & active
        best_crit = torch.where(improved, crit, best_crit)
        best_loss = torch.where(improved, val_loss, best_loss)
        col_mask = improved.repeat_interleave(c, dim=1)  # (S, G*C)
        best_w = torch.where(col_mask[:, None, :], w, best_w)
        best_b = torch.where(col_mask, b, best_b)
        best_epoch = torch.where(improved, torch.full_like(best_epoch, epoch + 1), best_epoch)
        waited = torch.where(improved, torch.zeros_like(waited), waited + active.long())
        active &= waited < patience
        if not bool(active.any()):
            break
    return _Trained(best_w, best_b, best_loss, best_epoch, epochs_run)


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
    p = _prepare(x_train, y_train, x_val, y_val, num_classes, cfg.standardize, device)
    tr = _train_heads(
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
    """Train lr x wd x seeds heads together; return the winning configuration's per-seed heads.

    The configuration with the best mean validation macro F1 over seeds wins (ties: lower loss).
    """
    cfg = config or SweepConfig()
    if not cfg.lrs or not cfg.weight_decays:
        raise UsfastError("sweep config needs at least one learning rate and one weight decay")
    t0 = time.perf_counter()
    p = _prepare(x_train, y_train, x_val, y_val, num_classes, cfg.standardize, device)
    grid = [(lr, wd) for lr in cfg.lrs for wd in cfg.weight_decays]
    tr = _train_heads(
        p,
        num_classes,
        seeds,
        grid,
        cfg.batch_size,
        cfg.max_epochs,
        cfg.patience,
        snapshot=cfg.snapshot,
        schedule="step",
        eval_every=cfg.eval_every,
        optimizer=cfg.optimizer,
        init=cfg.init,
        reshuffle=cfg.reshuffle,
        min_steps=cfg.min_steps,
    )
    s, g, c = len(seeds), len(grid), num_classes
    val_logits = (torch.matmul(p.xva, tr.weight) + tr.bias[:, None, :]).view(s, -1, g, c)
    val_pred = val_logits.argmax(dim=-1).permute(0, 2, 1).reshape(s * g, -1)  # (S*G, Nv)
    val_f1 = batched_macro_f1(p.yva, val_pred, c).view(s, g).mean(dim=0)  # (G,)
    score = val_f1.double() - 1e-9 * tr.best_loss.mean(dim=0).double()
    k = int(torch.argmax(score))
    cols = slice(k * c, (k + 1) * c)
    return LinearHeads(
        weight=tr.weight[:, :, cols].contiguous(),
        bias=tr.bias[:, cols].contiguous(),
        mean=p.mean,
        std=p.std,
        seeds=[int(sd) for sd in seeds],
        num_classes=c,
        preset="sweep",
        hparams={
            "lr": grid[k][0],
            "weight_decay": grid[k][1],
            "best_epoch": tr.best_epoch[:, k].cpu().tolist(),
            "val_macro_f1": float(val_f1[k]),
            "grid_val_macro_f1": {f"lr={lr:g},wd={wd:g}": float(f) for (lr, wd), f in zip(grid, val_f1, strict=True)},
            "epochs_run": tr.epochs_run,
            "num_heads": s * g,
            "batch_size": min(cfg.batch_size, int(p.xtr.shape[0])),
            "standardize": cfg.standardize,
            "snapshot": cfg.snapshot,
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
