"""Evaluation of one (encoder, task): linear probe, few-shot budgets and robustness, from cached features.

:func:`evaluate_task` is the one entry point; it returns a :class:`TaskResult` holding every number
(per seed, fractions in [0, 1]) plus what a reader needs to judge them: the split sizes and the
test support per class (a macro F1 on a 12-image minority class moves by several points per image),
the chosen hyper-parameters and the timings. Writing tables, plots and ``results.json`` is
:mod:`usjepa_fast.probe.report`'s job; looping encoders x tasks is :func:`usjepa_fast.probe.compare.compare`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from usjepa_fast.errors import UsfastError
from usjepa_fast.probe.corruptions import CORRUPTIONS, SEVERITIES
from usjepa_fast.probe.features import (
    Corruption,
    Encoder,
    FeatureCache,
    MemorySplit,
    TaskFeatures,
    open_split,
    split_features,
    task_features,
)
from usjepa_fast.probe.fewshot import fewshot_indices
from usjepa_fast.probe.linear import (
    CLASS_WEIGHTS,
    PAPER_SEEDS,
    LinearHeads,
    PaperConfig,
    Preset,
    ProbeScores,
    SweepConfig,
    train_probe,
)

log = logging.getLogger("usfast")


@dataclass
class EvalConfig:
    """What to evaluate per (encoder, task)."""

    preset: Preset = "paper"  # "paper" (the US-JEPA protocol) or "sweep" (batched L2-path heads)
    seeds: tuple[int, ...] = PAPER_SEEDS  # paper: five seeds, mean ± std
    fewshot: tuple[float, ...] = ()  # label budgets as fractions, e.g. (0.01, 0.05, 0.1, 0.5, 1.0); () = skip
    robustness: bool = False  # corrupt test images and re-score the clean-trained probes
    corruptions: tuple[str, ...] = tuple(CORRUPTIONS)
    severities: tuple[int, ...] = SEVERITIES
    corruption_seed: int = 0  # noise draws of the random corruptions
    batch_size: int = 32  # encoder batch size for feature extraction
    device: str | None = None  # probe device; None = CUDA when present
    standardize: bool = True  # z-score features with train statistics before the linear head
    # None: plain cross-entropy (the paper's protocol); "balanced": classes weighted N / (C * n_c)
    # (scikit-learn's class_weight="balanced"), for either preset; reported in every table title.
    class_weight: str | None = None

    def __post_init__(self) -> None:
        if self.class_weight not in CLASS_WEIGHTS:
            raise UsfastError(f"class weight {self.class_weight!r}: use none or balanced")
        self.validate()

    def validate(self) -> EvalConfig:
        """Every range checked before any encoder is opened (``ConfigError`` naming key, value, range)."""
        from usjepa_fast.config import bad_value, check_choice, check_int, check_number

        what = "eval option"
        check_choice(self.preset, "preset", ("paper", "sweep"), what=what)
        if not self.seeds:
            raise bad_value("seeds", self.seeds, "at least one integer seed", what)
        for seed in self.seeds:
            check_int(seed, "seeds", 0, what=what)
        for frac in self.fewshot:
            check_number(frac, "fewshot", 0, 1, lo_open=True, what=what, extra="(a fraction of the labels)")
        unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
        if unknown or (self.robustness and not self.corruptions):
            raise bad_value("corruptions", unknown or self.corruptions, f"names from {sorted(CORRUPTIONS)}", what)
        if self.robustness and not self.severities:
            raise bad_value("severities", self.severities, f"at least one of {list(SEVERITIES)}", what)
        for severity in self.severities:
            check_choice(severity, "severities", SEVERITIES, what=what)
        check_int(self.corruption_seed, "corruption_seed", 0, what=what)
        check_int(self.batch_size, "batch_size", 1, what=what)
        return self

    def probe_config(self) -> PaperConfig | SweepConfig:
        if self.preset == "paper":
            return PaperConfig(standardize=self.standardize, class_weight=self.class_weight)
        return SweepConfig(standardize=self.standardize, class_weight=self.class_weight)

    def describe(self) -> str:
        """``'sweep preset'`` / ``'paper preset, class-weight balanced'`` (table titles)."""
        text = f"{self.preset} preset"
        return text + (f", class-weight {self.class_weight}" if self.class_weight else "")


@dataclass
class TaskResult:
    """All numbers of one encoder on one task (fractions in [0, 1])."""

    encoder: str
    task: str
    classes: list[str]
    preset: str
    test: ProbeScores
    validation: ProbeScores
    hparams: dict
    fewshot: dict[float, ProbeScores] = field(default_factory=dict)
    robustness: dict[str, dict[int, ProbeScores]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # images per split (train / validation / test)
    class_counts: dict[str, list[int]] = field(default_factory=dict)  # per split: images per class
    class_weight: str | None = None

    def to_dict(self) -> dict:
        return {
            "encoder": self.encoder,
            "task": self.task,
            "classes": self.classes,
            "preset": self.preset,
            "class_weight": self.class_weight,
            "sizes": self.sizes,
            "class_counts": self.class_counts,
            "test": self.test.to_dict(),
            "validation": self.validation.to_dict(),
            "hparams": self.hparams,
            "fewshot": {f"{k:g}": v.to_dict() for k, v in sorted(self.fewshot.items())},
            "robustness": {c: {str(s): v.to_dict() for s, v in per.items()} for c, per in self.robustness.items()},
            "seconds": self.seconds,
        }


def _combine(scores: Sequence[ProbeScores]) -> ProbeScores:
    return ProbeScores(reports=[r for s in scores for r in s.reports], seeds=[sd for s in scores for sd in s.seeds])


def fewshot_scores(
    tf: TaskFeatures,
    fractions: Sequence[float],
    preset: Preset,
    seeds: Sequence[int],
    device: str | None = None,
    full: ProbeScores | None = None,
    config: PaperConfig | SweepConfig | None = None,
) -> dict[float, ProbeScores]:
    """Test scores per label budget; each seed trains on its own stratified subset (same seed)."""
    xtr, ytr = tf.xy("train")
    xva, yva = tf.xy("validation")
    xte, yte = tf.xy("test")
    out: dict[float, ProbeScores] = {}
    for frac in fractions:
        if frac >= 1.0 and full is not None:
            out[frac] = full  # the 100 % budget is the ordinary probe
            continue
        per_seed = []
        for seed in seeds:
            idx = fewshot_indices(ytr, frac, seed)
            heads = train_probe(xtr[idx], ytr[idx], xva, yva, tf.num_classes, preset, [seed], device, config)
            per_seed.append(heads.evaluate(xte, yte))
        out[frac] = _combine(per_seed)
    return out


def robustness_scores(
    encoder: Encoder,
    dataset_root: str | Path,
    heads: LinearHeads,
    corruptions: Sequence[str],
    severities: Sequence[int],
    cache: FeatureCache,
    batch_size: int = 32,
    seed: int = 0,
) -> dict[str, dict[int, ProbeScores]]:
    """Clean-trained heads scored on corrupted-test-image features (each cached like clean ones)."""
    out: dict[str, dict[int, ProbeScores]] = {}
    test = MemorySplit(open_split(dataset_root, "test", encoder.info))  # decoded once for all corruptions
    for name in corruptions:
        if name not in CORRUPTIONS:
            raise UsfastError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
        out[name] = {}
        for sev in severities:
            sf = split_features(
                encoder, dataset_root, "test", cache, batch_size, Corruption(name, int(sev), seed), dataset=test
            )
            out[name][int(sev)] = heads.evaluate(sf.x, sf.y)
    return out


def evaluate_task(
    encoder: Encoder | None,
    dataset_root: str | Path,
    cfg: EvalConfig | None = None,
    cache: FeatureCache | None = None,
    features: TaskFeatures | None = None,
) -> TaskResult:
    """Probe (+ few-shot, + robustness) of ``encoder`` on one dataset. ``features`` skips extraction
    (then ``encoder`` may be None unless robustness is asked for: corrupted images need the encoder)."""
    cfg = cfg or EvalConfig()
    if encoder is None and (features is None or cfg.robustness):
        raise UsfastError("robustness (and feature extraction) needs an encoder; pass --encoder")
    cache = cache or FeatureCache()
    t0 = time.perf_counter()
    tf = features if features is not None else task_features(encoder, dataset_root, cache, cfg.batch_size)
    pcfg = cfg.probe_config()
    t_feat = time.perf_counter() - t0
    xtr, ytr = tf.xy("train")
    xva, yva = tf.xy("validation")
    xte, yte = tf.xy("test")
    heads = train_probe(xtr, ytr, xva, yva, tf.num_classes, cfg.preset, cfg.seeds, cfg.device, pcfg)
    labels = {"train": ytr, "validation": yva, "test": yte}
    result = TaskResult(
        encoder=tf.encoder,
        task=tf.task,
        classes=tf.classes,
        preset=cfg.preset,
        test=heads.evaluate(xte, yte),
        validation=heads.evaluate(xva, yva),
        hparams=heads.hparams,
        seconds={"features": t_feat, "probe": heads.train_seconds},
        sizes={s: int(len(y)) for s, y in labels.items()},
        class_counts={s: np.bincount(y, minlength=tf.num_classes).tolist() for s, y in labels.items()},
        class_weight=cfg.class_weight,
    )
    if cfg.fewshot:
        t1 = time.perf_counter()
        result.fewshot = fewshot_scores(tf, cfg.fewshot, cfg.preset, cfg.seeds, cfg.device, result.test, pcfg)
        result.seconds["fewshot"] = time.perf_counter() - t1
    if cfg.robustness:
        t2 = time.perf_counter()
        result.robustness = robustness_scores(
            encoder, dataset_root, heads, cfg.corruptions, cfg.severities, cache, cfg.batch_size, cfg.corruption_seed
        )
        result.seconds["robustness"] = time.perf_counter() - t2
    log.info(
        "probe: %s on %s: test macro F1 %s (%s; %d train / %d validation / %d test images)",
        result.encoder,
        result.task,
        result.test.summary().fmt(),
        cfg.describe(),
        result.sizes["train"],
        result.sizes["validation"],
        result.sizes["test"],
    )
    return result


__all__ = ["EvalConfig", "TaskResult", "evaluate_task", "fewshot_scores", "robustness_scores"]
