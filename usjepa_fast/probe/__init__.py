"""Evaluation suite: linear probes on cached frozen features, few-shot, robustness, comparison tables.

The US-JEPA protocol for any encoder (timm name, usfast checkpoint, ONNX / TensorRT file, zoo
baseline): features are computed once per (encoder, dataset split) and cached
(:mod:`~usjepa_fast.probe.features`); heads train on them (:mod:`~usjepa_fast.probe.linear`: the
paper's preset and a batched lr x wd sweep); metrics match scikit-learn
(:mod:`~usjepa_fast.probe.metrics`); stratified label budgets (:mod:`~usjepa_fast.probe.fewshot`);
ultrasound corruptions on tensors (:mod:`~usjepa_fast.probe.corruptions`); tables / plots for
several encoders x tasks (:mod:`~usjepa_fast.probe.compare`, :mod:`~usjepa_fast.probe.plots`). The
paper's baselines and how they load live in :mod:`usjepa_fast.models.zoo` (spec ``zoo:NAME=PATH``);
``ZOO`` is re-exported here for compatibility.

One call for a demo::

    from usjepa_fast.probe import probe_report
    probe_report("synth/ultrabench", ["run/student.safetensors", "vit_tiny_patch16_224"], "demo_run/eval",
                 names=["SALT student", "random init"])
"""

from usjepa_fast.models.zoo import ZOO
from usjepa_fast.probe.compare import CompareReport, EvalConfig, TaskResult, compare, evaluate_task, probe_report
from usjepa_fast.probe.corruptions import CORRUPTIONS, PAPER_CORRUPTIONS, SEVERITIES, corrupt, save_corruption_grids
from usjepa_fast.probe.features import FeatureCache, dataset_features, open_encoder, task_features
from usjepa_fast.probe.fewshot import PAPER_FRACTIONS, fewshot_indices
from usjepa_fast.probe.linear import PaperConfig, SweepConfig, train_paper, train_probe, train_sweep
from usjepa_fast.probe.metrics import classification_report, mean_std

__all__ = [
    "CORRUPTIONS",
    "PAPER_CORRUPTIONS",
    "PAPER_FRACTIONS",
    "SEVERITIES",
    "ZOO",
    "CompareReport",
    "EvalConfig",
    "FeatureCache",
    "PaperConfig",
    "SweepConfig",
    "TaskResult",
    "classification_report",
    "compare",
    "corrupt",
    "dataset_features",
    "evaluate_task",
    "fewshot_indices",
    "mean_std",
    "open_encoder",
    "probe_report",
    "save_corruption_grids",
    "task_features",
    "train_paper",
    "train_probe",
    "train_sweep",
]
