"""``pytest -m gpu`` over the whole suite, and what the image has (step 1 of the GPU check).

First the environment: which optional runtimes import (TensorRT, DALI, ONNX Runtime's CUDA
provider, ...) and torch's TF32 flags, so a row that skips later is explained here. Then pytest
runs in this process over ``tests/`` with ``-m gpu`` (kernels compiled, CUDA bf16 training, the GPU
embed path, export through ONNX Runtime's CUDA provider when present, probe GPU equivalence). The
first GPU tests compile the Triton kernels (~40 variants on a cold cache; they land in Triton's
on-disk cache, which the kernels step then loads). Each test's outcome is printed as it ends;
``faulthandler_timeout`` dumps the stacks of a test that runs past ``--test-limit`` seconds (the
shell's ``timeout`` ends the step). Last line: JSON with the counts and every failure's id.

``--dry-run``: the same on the CPU, where every GPU test skips: proves the suite collects and
the marker selects (the counts are the GPU tests this machine would run).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (for _steps)

from _steps import emit, finish, start  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("triton", "timm", "onnx", "onnxruntime", "tensorrt", "nvidia.dali", "av", "scipy", "sklearn",
            "safetensors", "yaml", "typer", "pydicom", "openvino")  # fmt: skip


def environment() -> dict:
    """Versions of the optional modules (None: does not import), ORT's providers, torch's TF32 flags."""
    import torch

    found: dict = {}
    for name in OPTIONAL:
        try:
            module = importlib.import_module(name)
            found[name] = str(getattr(module, "__version__", "present"))
        except Exception:  # noqa: BLE001 - any failure to import means "not in this image"
            found[name] = None
    env = {"modules": found}
    if found["onnxruntime"]:
        import onnxruntime as ort

        env["onnxruntime_providers"] = ort.get_available_providers()
    env["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    return env


class Outcomes:
    """pytest plugin: one line per test as it ends; the counts."""

    def __init__(self) -> None:
        self.counts = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
        self.failed: list[str] = []
        self.skip_reasons: dict[str, int] = {}

    def pytest_runtest_logreport(self, report) -> None:  # noqa: ANN001 - pytest's TestReport
        if report.when == "call":
            outcome = report.outcome
        elif report.outcome == "failed":  # setup / teardown failed
            outcome = "error"
        elif report.outcome == "skipped" and report.when == "setup":  # skip markers act at setup
            outcome = "skipped"
        else:
            return
        self.counts[outcome] += 1
        if outcome == "skipped":
            reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skip_reasons[reason] = self.skip_reasons.get(reason, 0) + 1
            return
        if outcome != "passed":
            self.failed.append(report.nodeid)
        emit(f"{outcome.upper():<7} {report.duration:>7.2f} s  {report.nodeid}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--test-limit", type=float, default=60.0, help="seconds before a test's stacks are dumped")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("paths", nargs="*", default=["tests"], help="test paths (default: the whole suite)")
    args = p.parse_args()
    import torch

    dry = args.dry_run or not torch.cuda.is_available()
    t0 = time.perf_counter()
    facts = start("tests", "pytest -m gpu over the whole suite", dry)
    env = environment()
    emit("# modules: " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in env["modules"].items()))
    if "onnxruntime_providers" in env:
        emit(f"# onnxruntime providers: {', '.join(env['onnxruntime_providers'])}")
    emit(f"# torch TF32: matmul {env['tf32']['matmul']}, cuDNN {env['tf32']['cudnn']}")
    try:
        import pytest
    except ImportError:
        emit("# pytest is not installed in this image: no GPU test ran (the other steps still measure)")
        return finish("tests", facts, dry, time.perf_counter() - t0, "failed", pytest_exit=None, environment=env)
    plugin = Outcomes()
    paths = [x if Path(x).is_absolute() else str(ROOT / x) for x in args.paths]
    argv = ["-m", "gpu", "-q", "-rfE", "-p", "no:cacheprovider", "-o", f"faulthandler_timeout={args.test_limit:.0f}",
            "--rootdir", str(ROOT), *paths]  # fmt: skip
    code = int(pytest.main(argv, plugins=[plugin]))
    for reason, n in sorted(plugin.skip_reasons.items(), key=lambda kv: -kv[1]):
        emit(f"# skipped {n}: {reason[:160]}")
    # 0 ok, 1 some failed, 5 nothing collected (a GPU run must collect GPU tests)
    status = "ok" if code == 0 else "failed"
    payload = {"pytest_exit": code, "counts": plugin.counts, "failed_tests": plugin.failed, "environment": env}
    return finish("tests", facts, dry, time.perf_counter() - t0, status, **payload)


if __name__ == "__main__":
    sys.exit(main())
