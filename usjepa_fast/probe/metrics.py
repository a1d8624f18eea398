"""Classification metrics for linear probes, matching scikit-learn's definitions exactly.

Everything is computed from one confusion matrix over a *fixed* label set ``range(num_classes)``
(scikit-learn's ``labels=`` semantics), so a class that is never predicted, or that is absent from a
small test split, still counts in the macro average with F1 = 0 (scikit-learn's ``zero_division=0``
behaviour, which is also what its default ``"warn"`` returns). Balanced accuracy follows
``sklearn.metrics.balanced_accuracy_score``: the mean recall over classes that occur in ``y_true``.

:func:`batched_macro_f1` scores many heads' predictions at once with one ``bincount`` (used by the
``sweep`` preset to select a head on the validation split without a Python loop over heads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from usjepa_fast.errors import UsfastError


def _as_int_array(values: np.ndarray | torch.Tensor | Sequence[int], name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise UsfastError(f"{name} must be a 1-D array of class indices, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise UsfastError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def confusion_matrix(
    y_true: np.ndarray | torch.Tensor | Sequence[int],
    y_pred: np.ndarray | torch.Tensor | Sequence[int],
    num_classes: int,
) -> np.ndarray:
    """(C, C) int64 counts; rows = true class, columns = predicted class (scikit-learn's layout)."""
    t = _as_int_array(y_true, "y_true")
    p = _as_int_array(y_pred, "y_pred")
    if t.shape != p.shape:
        raise UsfastError(f"y_true has {t.size} labels but y_pred has {p.size}; pass one prediction per sample")
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise UsfastError(f"{name} holds labels outside [0, {num_classes}); check num_classes")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _per_class_f1(cm: np.ndarray) -> np.ndarray:
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    # F1 = 2TP / (2TP + FP + FN); a class with no true and no predicted samples is 0 (zero_division=0).
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


@dataclass
class ClassificationReport:
    """Metrics of one prediction set. F1 values are fractions in [0, 1]."""

    macro_f1: float
    accuracy: float
    balanced_accuracy: float
    per_class_f1: list[float]
    confusion: list[list[int]]
    num_samples: int

    def to_dict(self) -> dict:
        return {
            "macro_f1": self.macro_f1,
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "per_class_f1": list(self.per_class_f1),
            "confusion": [list(r) for r in self.confusion],
            "num_samples": self.num_samples,
        }


def classification_report(
    y_true: np.ndarray | torch.Tensor | Sequence[int],
    y_pred: np.ndarray | torch.Tensor | Sequence[int],
    num_classes: int,
) -> ClassificationReport:
    """Macro F1 / accuracy / balanced accuracy / per-class F1 / confusion over labels ``range(num_classes)``."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    n = int(cm.sum())
    f1 = _per_class_f1(cm)
    support = cm.sum(axis=1)
    present = support > 0
    recall = np.divide(np.diag(cm), support, out=np.zeros(num_classes), where=present)
    return ClassificationReport(
        macro_f1=float(f1.mean()) if num_classes else 0.0,
        accuracy=float(np.trace(cm) / n) if n else 0.0,
        # scikit-learn averages recall over the classes present in y_true only.
        balanced_accuracy=float(recall[present].mean()) if present.any() else 0.0,
        per_class_f1=[float(v) for v in f1],
        confusion=cm.tolist(),
        num_samples=n,
    )


def batched_macro_f1(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Macro F1 of H prediction sets at once: y_true (N,), y_pred (H, N) -> (H,) float64.

    One ``bincount`` over ``head * C * C + true * C + pred`` builds all H confusion matrices, so
    selecting among hundreds of heads costs one pass over the predictions (works on any device).
    """
    h, n = y_pred.shape
    c = num_classes
    offset = torch.arange(h, device=y_pred.device)[:, None] * (c * c)
    flat = offset + y_true.to(y_pred.device)[None, :] * c + y_pred
    cm = torch.bincount(flat.reshape(-1), minlength=h * c * c).reshape(h, c, c).double()
    tp = torch.diagonal(cm, dim1=1, dim2=2)
    denom = 2 * tp + (cm.sum(dim=1) - tp) + (cm.sum(dim=2) - tp)
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    return f1.mean(dim=1)


@dataclass
class MeanStd:
    """Mean and standard deviation of one metric over seeds (population std, ``numpy.std`` default)."""

    mean: float
    std: float
    values: list[float] = field(default_factory=list)

    def fmt(self, scale: float = 100.0, digits: int = 1, sep: str = " ± ") -> str:
        """``'69.6 ± 1.5'`` (percent by default), the paper's table format."""
        if math.isnan(self.mean):
            return "n/a"
        return f"{self.mean * scale:.{digits}f}{sep}{self.std * scale:.{digits}f}"


def mean_std(values: Sequence[float]) -> MeanStd:
    """Mean ± std over seeds. Uses ddof=0 like ``numpy.std`` (one seed gives std 0, not NaN)."""
    vals = [float(v) for v in values]
    if not vals:
        return MeanStd(float("nan"), float("nan"), [])
    arr = np.asarray(vals, dtype=np.float64)
    return MeanStd(float(arr.mean()), float(arr.std()), vals)


def summarize_reports(reports: Sequence[ClassificationReport]) -> dict[str, MeanStd]:
    """Seed-wise reports -> {metric: MeanStd} for macro_f1, accuracy, balanced_accuracy."""
    return {key: mean_std([getattr(r, key) for r in reports]) for key in ("macro_f1", "accuracy", "balanced_accuracy")}
