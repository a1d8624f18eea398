"""The batched trainer behind both probe presets: S seeds x G configurations of linear heads at once.

Weights live as ``W (S, D, C*G)`` with class-major columns (column ``k * G + j`` = class k of
configuration j): the G configurations of a seed share its minibatch order, so a step is one ``bmm``
per seed over all its heads, and the softmax runs over dim 2 of ``(S, b, C, G)`` -- torch's CPU
softmax over a last dim of 3-10 classes is ~3.5x slower than over an outer dim, and the written-out
softmax here another 1.4x faster (one core, (1, 128, 8, 10): 165 / 48 / 34 us). The gradient of the
(optionally class-weighted) mean cross-entropy is written out, ``(softmax - onehot) * w_i / sum_b w``,
which avoids autograd and ``torch.optim`` bookkeeping: at probe sizes the per-step Python overhead
dominates, not the matmuls. Two optimizers:

``adamw``  -- matches ``torch.optim.AdamW`` (betas 0.9/0.999, eps 1e-8, decoupled decay
    ``p *= 1 - lr * wd``, bias-corrected moments) on ``nn.Linear``'s init (the paper preset; tested
    equal to ``nn.Linear`` + ``AdamW`` + ``CosineAnnealingLR``).
``psgd``   -- preconditioned SGD on the L2-regularised objective ``mean CE + wd/2 ||W||^2`` (bias
    unpenalised, like scikit-learn's ``LogisticRegression``), on features that
    :func:`usjepa_fast.probe.precondition.precondition` has centred and rotated onto the eigenvectors
    of their train covariance ``M``. There the softmax cross-entropy's Hessian bound ``M / 2 + wd``
    (Boehning's; ``1/2`` for the bias) is diagonal, so the Newton-like step ``(M / 2 + wd)^-1 grad``
    is an elementwise scale of the gradient (``Curvature.step_scale``): stable for *every* wd and
    every encoder's feature scale at one learning rate (~1), at no matmul beyond the gradient's.
    Each minibatch's gradient sum is divided by the *average* batch size, so one pass is an unbiased
    full gradient and the fixed point is the L2 optimum (tested against scikit-learn), not a
    reweighted one. It starts from zero (the L2 path's start).

Per-head early stopping: every round (one epoch, or ``min_steps / max_epochs`` steps on tiny
splits) each head's validation loss is computed. ``stop_rule="no_improvement"`` (the paper's): a
head stops after ``patience`` rounds without a new lowest validation loss; ``"converged"``: after
``patience`` rounds in which its validation loss moved by less than ``converged_rtol``. ``snapshot``
decides which weights a head keeps (``"loss"``: its lowest validation loss; ``"f1"``: its best
validation macro F1, ties by loss; ``"last"``: where it stopped). Training ends when every head has
stopped or the schedule is done. Logits more than 60 below their head's largest are clamped before
the softmax: confident heads otherwise push probabilities into float32's denormal range, where the
matmuls touching them run ~4x slower on x86.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from usjepa_fast.errors import UsfastError
from usjepa_fast.probe.metrics import batched_macro_f1

if TYPE_CHECKING:
    from usjepa_fast.probe.precondition import Curvature

# Logits more than this below their head's largest are clamped before exp: exp(-60) ~ 1e-26 stays far
# from float32's denormal range (< 1.2e-38), where every matmul touching them runs ~4x slower on x86.
LOGIT_FLOOR = -60.0


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_tensor(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim != 2:
        raise UsfastError(f"features must be a 2-D (N, D) array, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.float32)


def to_numpy_labels(y: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    return np.asarray(y).astype(np.int64, copy=False)


def standardize(x: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
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


def class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """scikit-learn's ``class_weight="balanced"``: ``N / (C * n_c)`` per class, (C,) float32.

    A class absent from ``y`` gets weight 1 (no training sample carries it; it only enters the
    validation loss).
    """
    counts = torch.bincount(y, minlength=num_classes).double()
    w = y.numel() / (num_classes * counts.clamp_min(1))
    return torch.where(counts > 0, w, torch.ones_like(w)).float()


def init_linear(seed: int, d: int, c: int, n_copies: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear's default init (U(-1/sqrt(D), 1/sqrt(D)) for weight and bias), from ``seed`` on CPU.

    Drawn on CPU with a private generator so that a seed gives the same head on every device.
    """
    g = torch.Generator().manual_seed(int(seed))
    bound = 1.0 / math.sqrt(d)
    w = (torch.rand(n_copies, d, c, generator=g) * 2 - 1) * bound
    b = (torch.rand(n_copies, c, generator=g) * 2 - 1) * bound
    return w, b


@dataclass
class Prepared:
    """Train / validation tensors on the device, standardised (and, for ``psgd``, centred and rotated)."""

    xtr: torch.Tensor  # (N, F) features the heads see: F = D, or psgd's eigen-coordinates
    ytr: torch.Tensor  # (N,)
    xva: torch.Tensor
    yva: torch.Tensor
    mean: torch.Tensor | None  # (D,) standardiser
    std: torch.Tensor | None
    device: torch.device
    class_weight: torch.Tensor | None = None  # (C,) loss weight per class
    shift: torch.Tensor | None = None  # (D,) centring applied for psgd: the heads see x - shift
    curvature: Curvature | None = None  # psgd: xtr / xva are these eigen-coordinates of x - shift

    def to_features(self, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heads on what the heads saw (S, F, K), (S, K) -> the same logits on standardised features (S, D, K)."""
        if self.curvature is not None:
            w = self.curvature.weights(w)
        if self.shift is None:
            return w, b
        return w, b - torch.einsum("d,sdk->sk", self.shift, w)


def prepare(x_train, y_train, x_val, y_val, num_classes: int, standardize_features: bool, device) -> Prepared:
    dev = torch.device(device) if device is not None else default_device()
    xtr, xva = to_tensor(x_train, dev), to_tensor(x_val, dev)
    ytr = torch.as_tensor(to_numpy_labels(y_train), device=dev)
    yva = torch.as_tensor(to_numpy_labels(y_val), device=dev)
    _validate(xtr, ytr, xva, yva, num_classes)
    mean = std = None
    if standardize_features:
        mean, std = _fit_standardizer(xtr)
        xtr, xva = standardize(xtr, mean, std), standardize(xva, mean, std)
    return Prepared(xtr, ytr, xva, yva, mean, std, dev)


@dataclass
class Trained:
    weight: torch.Tensor  # (S, F, C*G) kept snapshot per head, class-major columns, on the F features seen
    bias: torch.Tensor  # (S, C*G)
    best_loss: torch.Tensor  # (S, G) validation loss at the snapshot
    best_epoch: torch.Tensor  # (S, G) round of the snapshot (1-based)
    stopped_epoch: torch.Tensor  # (S, G) round at which the head stopped (early stopping) or the last round
    epochs_run: int
    steps_run: int


def val_loss(logits: torch.Tensor, y: torch.Tensor, class_weight: torch.Tensor | None) -> torch.Tensor:
    """logits (S, N, C, G), y (N,) -> (S, G) mean cross-entropy (class-weighted mean when weights given,
    i.e. ``F.cross_entropy(..., weight=class_weight)``)."""
    s, n, _, g = logits.shape
    lse = torch.logsumexp(logits, dim=2)  # (S, N, G)
    picked = logits.gather(2, y.view(1, n, 1, 1).expand(s, n, 1, g)).squeeze(2)
    nll = lse - picked  # (S, N, G)
    if class_weight is None:
        return nll.mean(dim=1)
    wv = class_weight[y]  # (N,)
    return (nll * wv[None, :, None]).sum(dim=1) / wv.sum().clamp_min(1e-12)


def train_heads(
    p: Prepared,
    num_classes: int,
    seeds: Sequence[int],
    grid: Sequence[tuple[float, float]],
    batch_size: int,
    max_epochs: int,
    patience: int,
    snapshot: str,
    schedule: str,
    optimizer: str = "adamw",
    init: str = "linear",
    reshuffle: bool = True,
    min_steps: int = 0,
    stop_rule: str = "no_improvement",
    converged_rtol: float = 1e-3,
) -> Trained:
    """Minibatch training of S seeds x G ``(lr, wd)`` configurations at once (see the module doc).

    ``schedule``: ``"epoch"`` = cosine stepped per epoch (``CosineAnnealingLR(T_max=max_epochs)``),
    ``"step"`` = cosine per optimizer step. ``init``: ``"linear"`` (nn.Linear's, per seed) or
    ``"zero"`` (the L2 path's start; seeds then differ by data order only).
    """
    if not seeds:
        raise UsfastError("no seeds given; pass at least one seed")
    if optimizer == "psgd" and p.curvature is None:
        raise UsfastError("psgd needs preconditioned features (call precondition() first)")
    if optimizer == "psgd" and init != "zero":
        raise UsfastError("psgd starts from zero (the L2 path's start); use init='zero'")
    xtr, ytr, xva, yva, dev = p.xtr, p.ytr, p.xva, p.yva, p.device
    s, n, d, c, g = len(seeds), xtr.shape[0], xtr.shape[1], num_classes, len(grid)
    if init == "zero":
        w = torch.zeros(s, d, c * g, device=dev)
        b = torch.zeros(s, c * g, device=dev)
    else:
        inits = [init_linear(sd, d, c) for sd in seeds]
        # Every configuration of a seed starts from that seed's init (configs differ only by lr / wd).
        w = torch.cat([wi.repeat_interleave(g, dim=2) for wi, _ in inits]).to(dev)  # (S, D, C*G)
        b = torch.cat([bi.repeat_interleave(g, dim=1) for _, bi in inits]).to(dev)  # (S, C*G)
    lr_col = torch.tensor([lr for lr, _ in grid], device=dev, dtype=torch.float32).repeat(c)  # (C*G,)
    wd_col = torch.tensor([wd for _, wd in grid], device=dev, dtype=torch.float32).repeat(c)
    beta1, beta2, eps = 0.9, 0.999, 1e-8  # torch AdamW defaults
    onehot = F.one_hot(ytr, c).float()  # (N, C)
    cw = p.class_weight
    sw_all = None if cw is None else cw[ytr]  # (N,) per-sample loss weights
    ws = None
    gens = [torch.Generator().manual_seed(int(sd) + 1_000_003) for sd in seeds]  # shuffling streams

    bs = max(1, min(int(batch_size), n))
    # A "round" (evaluation + patience unit) is one epoch, or more steps when the split is so small
    # that max_epochs epochs would be fewer than min_steps optimizer steps (few-shot subsets).
    steps_per_round = max(math.ceil(n / bs), math.ceil(min_steps / max(1, max_epochs)))
    # AdamW (the paper) averages each minibatch's loss, like nn.CrossEntropyLoss behind a DataLoader,
    # so a short last batch weighs as much as a full one. psgd minimises the *mean over the split*:
    # each minibatch's sum is divided by the average batch size (weight), so one pass over the data
    # is an unbiased full gradient and the fixed point is the L2 optimum, not a reweighted one.
    per_batch_mean = optimizer != "psgd"
    mean_bs = n / math.ceil(n / bs)
    mean_bw = None if sw_all is None else float(sw_all.sum()) / math.ceil(n / bs)
    if optimizer == "psgd":
        # Boehning's bound: curvature <= M / 2 + wd (weights), 1 / 2 (bias), diagonal in the eigen-
        # coordinates the heads see (probe.precondition); each column's learning rate folded in, so
        # the schedule is one scalar per step.
        step_w = p.curvature.step_scale(wd_col) * lr_col  # (F, C*G)
        step_b = 2.0 * lr_col
        # The gradient sums over a minibatch; dividing by the average batch size (or weight, see
        # below) is folded into the step factors, and the L2 term scaled to match.
        grad_scale = 1.0 / (mean_bs if sw_all is None else mean_bw)
        step_w, step_b, wd_sum = step_w * grad_scale, step_b * grad_scale, wd_col / grad_scale
    else:
        m_w, v_w = torch.zeros_like(w), torch.zeros_like(w)
        m_b, v_b = torch.zeros_like(b), torch.zeros_like(b)
    total_steps = steps_per_round * max_epochs
    # Round 1 always counts as progress (its loss is the first), so no head can stop before round
    # 1 + patience; when that is the last round and heads keep their last weights, the rounds before
    # it validate for nothing (the sweep's 3 rounds with patience 2: 2 of 3 validations saved).
    skip_validation = snapshot == "last" and 1 + patience >= max_epochs
    best_loss = torch.full((s, g), float("inf"), device=dev)
    best_crit = torch.full((s, g), float("inf"), device=dev)
    lowest = torch.full((s, g), float("inf"), device=dev)  # lowest validation loss so far
    previous = torch.full((s, g), float("inf"), device=dev)  # last round's validation loss
    best_w, best_b = w.clone(), b.clone()
    best_epoch = torch.zeros(s, g, dtype=torch.long, device=dev)
    stopped = torch.full((s, g), max_epochs, dtype=torch.long, device=dev)
    waited = torch.zeros(s, g, dtype=torch.long, device=dev)
    active = torch.ones(s, g, dtype=torch.bool, device=dev)
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
                    flat = order.reshape(-1)
                    xs = xtr.index_select(0, flat).view(s, n, -1)  # (S, N, D)
                    ys = onehot.index_select(0, flat).view(s, n, c).neg_()  # (S, N, C), -onehot
                    if sw_all is not None:
                        ws = sw_all[order]  # (S, N)
                pos = 0
            xb, yb = xs[:, pos : pos + bs], ys[:, pos : pos + bs]  # (S, b, D), (S, b, C) views
            nb = xb.shape[1]
            logits = torch.baddbmm(b[:, None, :], xb, w).view(s, nb, c, g)  # (S, b, C, G)
            # Softmax over the classes, written out (1.4x torch.softmax over dim 2 here), with confident
            # heads' tiny probabilities floored away from the denormal range (LOGIT_FLOOR).
            prob = logits.sub_(logits.amax(dim=2, keepdim=True)).clamp_min_(LOGIT_FLOOR).exp_()
            # d(CE)/d(logits) = softmax - onehot, one op: ``ys`` holds -onehot.
            grad = torch.addcdiv(yb[:, :, :, None], prob, prob.sum(dim=2, keepdim=True))  # (S, b, C, G)
            if ws is not None:
                # Weighted mean CE (torch's cross_entropy(weight=...)): sum_i w_i l_i / sum_i w_i.
                wb = ws[:, pos : pos + nb]  # (S, b)
                grad.mul_((wb / wb.sum(dim=1, keepdim=True) if per_batch_mean else wb)[:, :, None, None])
            elif per_batch_mean:
                grad.div_(nb)  # the minibatch mean; psgd's 1 / (average batch) is in its step factors
            pos += bs
            grad = grad.view(s, nb, c * g)
            gw = torch.bmm(xb.transpose(1, 2), grad)  # (S, D, C*G)
            gb = grad.sum(dim=1)  # (S, C*G)
            step += 1
            cosine = 0.5 * (1.0 + math.cos(math.pi * (step - 1) / total_steps))
            if optimizer == "psgd":
                gw.addcmul_(w, wd_sum)  # coupled L2 on the weights only
                w.sub_(gw.mul_(step_w), alpha=cosine)  # w -= cosine * lr * P g, P diagonal here
                b.sub_(gb.mul_(step_b), alpha=cosine)
                continue
            lr_t = lr_epoch if schedule == "epoch" else lr_col * cosine
            bc1, bc2 = 1 - beta1**step, 1 - beta2**step
            for prm, gp, m, v in ((w, gw, m_w, v_w), (b, gb, m_b, v_b)):
                m.mul_(beta1).add_(gp, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(gp, gp, value=1 - beta2)
                prm.mul_(1 - lr_t * wd_col)  # decoupled weight decay (AdamW)
                prm.sub_((lr_t / bc1) * m / ((v / bc2).sqrt_().add_(eps)))
        epochs_run = epoch + 1
        if skip_validation and epochs_run < max_epochs:
            continue
        val_logits = (torch.matmul(xva, w) + b[:, None, :]).view(s, -1, c, g)  # (S, Nv, C, G)
        loss = val_loss(val_logits, yva, cw)  # (S, G)
        # Early stopping per head. "no_improvement" (the paper's): a head stops after `patience` rounds
        # without a new lowest validation loss. "converged": it stops after `patience` rounds in which
        # its validation loss moved by less than `converged_rtol` (relative) -- its training is done.
        # The snapshot rule decides which weights a head keeps.
        loss_improved = (loss < lowest) & active
        lowest = torch.where(loss_improved, loss, lowest)
        if stop_rule == "converged":
            moving = (loss - previous).abs() > converged_rtol * previous.abs().clamp_min(1e-12)
            previous = loss
        else:
            moving = loss_improved
        if snapshot == "f1":
            val_pred = val_logits.argmax(dim=2).transpose(1, 2).reshape(s * g, -1)  # (S*G, Nv)
            # Lower is better: -F1 first, loss as a tie-breaker (F1 moves in steps of ~1/Nv).
            crit = -batched_macro_f1(yva, val_pred, c).view(s, g).float() + 1e-4 * loss.clamp_max(100)
            keep = (crit < best_crit) & active
            best_crit = torch.where(keep, crit, best_crit)
        elif snapshot == "last":
            keep = active.clone()  # the weights at which the head stops (or the final iterate)
        else:
            keep = loss_improved
        best_loss = torch.where(keep, loss, best_loss)
        col_mask = keep.repeat(1, c)  # (S, C*G)
        best_w = torch.where(col_mask[:, None, :], w, best_w)
        best_b = torch.where(col_mask, b, best_b)
        best_epoch = torch.where(keep, torch.full_like(best_epoch, epoch + 1), best_epoch)
        waited = torch.where(moving, torch.zeros_like(waited), waited + active.long())
        newly_stopped = active & (waited >= patience)
        stopped = torch.where(newly_stopped, torch.full_like(stopped, epoch + 1), stopped)
        active &= ~newly_stopped
        if not bool(active.any()):
            break
    return Trained(best_w, best_b, best_loss, best_epoch, stopped, epochs_run, step)
