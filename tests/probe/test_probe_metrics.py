"""Metrics match scikit-learn exactly, including classes that are never predicted or absent."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

from usjepa_fast.errors import UsfastError
from usjepa_fast.probe.metrics import batched_macro_f1, classification_report, mean_std


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 9))
    n = int(rng.integers(1, 50))
    y_true = rng.integers(0, c, n)
    y_pred = rng.integers(0, c, n)
    if seed % 3 == 0 and c > 2:
        y_pred[y_pred == c - 1] = 0  # a class that is never predicted
    if seed % 4 == 0 and c > 2:
        y_true[y_true == 1] = 0  # a class absent from the ground truth (may still be predicted)
    return y_true, y_pred, c


@pytest.mark.parametrize("seed", range(24))
def test_report_matches_sklearn_on_random_predictions(seed: int) -> None:
    y_true, y_pred, c = _random_case(seed)
    rep = classification_report(y_true, y_pred, c)
    labels = list(range(c))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about ill-defined classes; the values are what we test
        ref_f1 = f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)
        ref_per = f1_score(y_true, y_pred, average=None, labels=labels, zero_division=0)
        ref_bacc = balanced_accuracy_score(y_true, y_pred)
    assert rep.macro_f1 == pytest.approx(ref_f1, abs=1e-12)
    np.testing.assert_allclose(rep.per_class_f1, ref_per, atol=1e-12)
    assert rep.accuracy == pytest.approx(float(np.mean(y_true == y_pred)))
    assert rep.balanced_accuracy == pytest.approx(ref_bacc, abs=1e-12)
    np.testing.assert_array_equal(np.asarray(rep.confusion), confusion_matrix(y_true, y_pred, labels=labels))


def test_missing_classes_count_as_zero_in_the_macro_average() -> None:
    # 4 classes, class 3 neither in truth nor predictions, class 2 never predicted.
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 1])
    rep = classification_report(y_true, y_pred, 4)
    assert rep.per_class_f1[2] == 0.0 and rep.per_class_f1[3] == 0.0
    assert rep.macro_f1 == pytest.approx((1.0 + 0.8 + 0.0 + 0.0) / 4)
    assert rep.macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro", labels=range(4), zero_division=0))


def test_batched_macro_f1_equals_per_head_reports() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 40)
    preds = rng.integers(0, 5, (7, 40))
    preds[2][preds[2] == 4] = 0
    out = batched_macro_f1(torch.from_numpy(y), torch.from_numpy(preds), 5)
    ref = [classification_report(y, p, 5).macro_f1 for p in preds]
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)


def test_bad_input_is_a_user_error() -> None:
    with pytest.raises(UsfastError, match="outside"):
        classification_report([0, 1, 5], [0, 1, 1], 3)
    with pytest.raises(UsfastError, match="differ|prediction"):
        classification_report([0, 1], [0], 3)


def test_mean_std_and_paper_format() -> None:
    ms = mean_std([0.70, 0.72, 0.68])
    assert ms.mean == pytest.approx(0.70)
    assert ms.std == pytest.approx(np.std([0.70, 0.72, 0.68]))
    assert ms.fmt() == "70.0 ± 1.6"
    assert ms.fmt(sep="±") == "70.0±1.6"
    assert mean_std([0.5]).std == 0.0
