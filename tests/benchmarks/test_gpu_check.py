"""The GPU check (benchmarks/gpu_check.sh) without a GPU: its shell driver, the per-row time limits
of its steps, and (slow) the whole ``--dry-run``: every step starts, runs its rows at tiny sizes on
the CPU and writes ``gpu_<step>.txt`` ending in one JSON line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ("tests", "kernels", "train", "embed", "probe")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")  # fmt: skip


@pytest.fixture
def steps_module(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.delenv("USFAST_STEP_BUDGET_S", raising=False)
    import _steps

    return _steps


def _check(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=ROOT)  # fmt: skip


def _last_json(path: Path) -> dict:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------
# one row: its error or its timeout is recorded, the step goes on


def test_a_failing_row_is_recorded_and_the_step_goes_on(steps_module) -> None:
    row: dict = {}
    with steps_module.guarded_row(row, 5.0):
        raise RuntimeError("CUDA out of memory\nmore detail")
    assert row["error"] == "RuntimeError: CUDA out of memory" and "timeout" not in row
    ok: dict = {}
    with steps_module.guarded_row(ok, 5.0):
        ok["value"] = 1
    assert ok["value"] == 1 and "error" not in ok and "timeout" not in ok and ok["row_s"] >= 0


def test_a_row_past_its_limit_is_stopped_and_marked(steps_module) -> None:
    row: dict = {}
    t0 = time.perf_counter()
    with steps_module.guarded_row(row, 0.2):
        while True:  # a hang in Python code (a measurement loop that never ends)
            time.sleep(0.01)
    assert "limit" in row["timeout"] and "error" not in row
    assert time.perf_counter() - t0 < 5


def test_a_wrapped_timeout_still_counts_as_a_timeout(steps_module) -> None:
    """Libraries re-raise the alarm as their own error (dynamo: a compile error): ``fired`` decides."""
    row: dict = {}
    with steps_module.guarded_row(row, 0.2):
        try:
            while True:
                time.sleep(0.01)
        except steps_module.RowTimeout as exc:
            raise ValueError("backend compiler failed") from exc
    assert "timeout" in row and "error" not in row


def test_rows_stop_when_the_steps_budget_is_spent(steps_module, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USFAST_STEP_BUDGET_S", "0")
    row: dict = {}
    with steps_module.guarded_row(row, 30.0):
        while True:
            time.sleep(0.01)
    assert row["timeout"] == "not run: the step's time budget was spent"
    monkeypatch.setenv("USFAST_STEP_BUDGET_S", "100000")
    assert steps_module.budget_left() > 1000


def test_a_step_ends_with_one_json_line(steps_module, capsys: pytest.CaptureFixture) -> None:
    facts = steps_module.start("demo", "a demo step", dry_run=True)
    rc = steps_module.finish("demo", facts, True, 1.23, "partial", rows=[{"a": 1}])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("# ") and any("GPU none visible" in line for line in out)
    record = json.loads(out[-1])
    assert rc == 3 and record["step"] == "demo" and record["status"] == "partial" and record["rows"] == [{"a": 1}]
    assert record["torch"] == torch.__version__ and "gpu" in record and "driver" in record


# ---------------------------------------------------------------------------------------------
# the shell driver


def test_bad_arguments_are_refused_before_any_work(tmp_path: Path) -> None:
    for args, words in ((["--only", "kernel"], "unknown step kernel"), (["--fast"], "unknown argument --fast")):
        res = _check("--dry-run", "--results", str(tmp_path), *args)
        assert res.returncode == 2 and words in res.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_without_a_gpu_the_real_run_says_so_and_writes_nothing(tmp_path: Path) -> None:
    res = _check("--results", str(tmp_path / "res"))
    assert res.returncode == 2 and "no CUDA device visible" in res.stderr and "--dry-run" in res.stderr
    assert not (tmp_path / "res").exists()


def test_a_spent_run_budget_marks_every_step_not_run(tmp_path: Path) -> None:
    res = _check("--dry-run", "--results", str(tmp_path), env={"TOTAL_S": "5"})
    assert res.returncode == 1 and "FAILED" in res.stdout
    for step in STEPS:
        assert "not run, the run's 5 s budget was spent" in (tmp_path / f"gpu_{step}.txt").read_text()
    assert (tmp_path / "gpu_summary.txt").read_text().count("skipped (budget spent)") == len(STEPS)


# ---------------------------------------------------------------------------------------------
# the whole dry run (every step's code path; ~2-3 min on 2 busy cores)


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_its_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    res = _check("--dry-run", "--results", str(tmp_path / "res"), env={"OUT": str(out)}, timeout=480)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    for step in STEPS:
        path = tmp_path / "res" / f"gpu_{step}.txt"
        text = path.read_text()
        assert "# GPU none visible" in text and "torch " in text and "triton " in text  # the header
        record = _last_json(path)
        assert record["step"] == step and record["dry_run"] is True and record["status"] == "ok", record
        assert (out / path.name).read_text() == text  # copied to $OUT
    rows = {step: _last_json(tmp_path / "res" / f"gpu_{step}.txt") for step in STEPS}
    assert rows["tests"]["counts"]["skipped"] > 0 and rows["tests"]["counts"]["failed"] == 0  # GPU tests collected
    measured = [r for r in rows["kernels"]["rows"] if "fwd_ms" in r]
    assert {r["case"] for r in measured} >= {"ctx_ragged_12x64", "pred_ragged_12x32", "ctx_dense_12x64"}
    assert rows["kernels"]["targets"]["ours_matches_reference"]
    assert {(r["objective"], r["row"]) for r in rows["train"]["rows"] if "step_s" in r} == {
        (o, r) for o in ("salt", "ema") for r in ("eager_sdpa", "eager_triton", "compiled")
    }
    embed_rows = {r["row"]: r for r in rows["embed"]["rows"]}
    assert all("frames_per_s" in embed_rows[r] for r in ("timm_eager_fp32", "torch_bf16_compiled", "e2e_usfast_bf16"))
    assert "skipped" in embed_rows["tensorrt_fp16"] or "frames_per_s" in embed_rows["tensorrt_fp16"]
    assert rows["probe"]["max_f1_gap_points"] is not None
    summary = (tmp_path / "res" / "gpu_summary.txt").read_text()
    assert all(f"{step} passed" in summary for step in STEPS)
