"""PNG plots of the evaluation: few-shot curves and robustness curves (matplotlib, Agg backend).

Values are fractions in [0, 1] (:class:`~usjepa_fast.probe.metrics.MeanStd`) and are drawn in percent
macro F1 with a ±std band, one line per encoder, like the paper's figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from usjepa_fast.probe.metrics import MeanStd


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fewshot(curves: Mapping[str, Mapping[float, MeanStd]], path: str | Path, title: str = "") -> Path:
    """``curves[model][fraction] -> MeanStd`` -> line plot over the label budget (log-x, percent)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for model, pts in curves.items():
        xs = sorted(pts)
        m = [pts[x].mean * 100 for x in xs]
        s = [pts[x].std * 100 for x in xs]
        pct = [x * 100 for x in xs]
        ax.plot(pct, m, marker="o", label=model)
        lo, hi = [a - b for a, b in zip(m, s, strict=True)], [a + b for a, b in zip(m, s, strict=True)]
        ax.fill_between(pct, lo, hi, alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training data (%)")
    ax.set_ylabel("test macro F1 (%)")
    ax.set_title(title or "few-shot linear probe")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_robustness(
    curves: Mapping[str, Mapping[str, Mapping[int, MeanStd]]],
    clean: Mapping[str, MeanStd],
    path: str | Path,
    title: str = "",
) -> Path:
    """``curves[model][corruption][severity]`` plus ``clean[model]`` (severity 0) -> one panel per corruption."""
    plt = _pyplot()
    corruptions: list[str] = []  # first-seen order (the order the evaluation ran them)
    for per in curves.values():
        corruptions.extend(c for c in per if c not in corruptions)
    n = max(1, len(corruptions))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False)
    for k, corr in enumerate(corruptions):
        ax = axes[k // cols][k % cols]
        for model, per in curves.items():
            if corr not in per:
                continue
            sev = sorted(per[corr])
            xs = [0, *sev]
            m = [clean[model].mean * 100] + [per[corr][s].mean * 100 for s in sev]
            sd = [clean[model].std * 100] + [per[corr][s].std * 100 for s in sev]
            ax.plot(xs, m, marker="o", label=model)
            lo, hi = [a - b for a, b in zip(m, sd, strict=True)], [a + b for a, b in zip(m, sd, strict=True)]
            ax.fill_between(xs, lo, hi, alpha=0.2)
        ax.set_title(corr, fontsize=10)
        ax.set_xticks([0, 1, 2, 3])
        ax.set_xlabel("severity (0 = clean)", fontsize=8)
        ax.set_ylabel("macro F1 (%)", fontsize=8)
        ax.grid(True, alpha=0.3)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title or "robustness of frozen features (probe trained on clean images)", fontsize=11)
    return _save(plt, fig, path)
