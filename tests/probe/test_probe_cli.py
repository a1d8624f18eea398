"""`usfast probe / robustness / compare` end to end on the synthetic task with an export-ready tiny student."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from usjepa_fast.cli.main import app


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A usfast export-ready ``student.safetensors`` + sidecar (tiny ViT at 32 px), like a SALT run writes."""
    from usjepa_fast.models.frozen import save_export_ready
    from usjepa_fast.models.resolve import resolve_encoder

    enc = resolve_encoder("vit_tiny_patch16_224", img_size=32, seed=3)
    return save_export_ready(enc.model, enc.info, tmp_path_factory.mktemp("run") / "student.safetensors")


def _invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_probe_then_robustness_reuse_one_cache(ultrabench, student, tmp_path) -> None:
    cache = tmp_path / "cache"
    res = _invoke(
        "probe",
        str(ultrabench),
        "--encoder",
        str(student),
        "--preset",
        "sweep",
        "--seeds",
        "0,1",
        "--fewshot",
        "50,100",
        "--out",
        str(tmp_path / "p"),
        "--cache",
        str(cache),
        "--device",
        "cpu",
    )
    assert res.exit_code == 0, res.output
    assert "Linear probe" in res.output and "per-class F1" in res.output and "Few-shot" in res.output
    data = json.loads((tmp_path / "p" / "results.json").read_text())
    assert data["results"][0]["preset"] == "sweep" and set(data["results"][0]["fewshot"]) == {"0.5", "1"}
    n_cached = len(list(cache.rglob("*.npz")))
    assert n_cached == 3  # train / validation / test

    res = _invoke(
        "robustness",
        str(ultrabench),
        "--encoder",
        str(student),
        "--corruptions",
        "haze",
        "--severities",
        "1,3",
        "--preset",
        "paper",
        "--seeds",
        "0",
        "--out",
        str(tmp_path / "r"),
        "--cache",
        str(cache),
    )
    assert res.exit_code == 0, res.output
    assert "haze" in res.output and (tmp_path / "r" / "corruption_examples" / "haze.png").is_file()
    assert len(list(cache.rglob("*.npz"))) == n_cached + 2  # clean features reused, 2 corrupted test sets added


def test_compare_lists_the_zoo() -> None:
    res = _invoke("compare", "--list-zoo")
    assert res.exit_code == 0 and "UltraSAM" in res.output and "SAMUS" in res.output


def test_probe_needs_exactly_one_source(ultrabench) -> None:
    from usjepa_fast.errors import UsfastError

    with pytest.raises(UsfastError, match="exactly one"):
        _invoke("probe", str(ultrabench))


def test_random_init_baseline_of_the_same_architecture(student) -> None:
    import torch

    from usjepa_fast.probe.features import open_encoder

    trained = open_encoder(str(student), device="cpu")
    rand = open_encoder(f"random:{student}", device="cpu")
    assert rand.key != trained.key and rand.name.startswith("random-init")
    for field in ("input_size", "mean", "std", "pool", "width", "timm_name"):
        assert getattr(rand.info, field) == getattr(trained.info, field), field
    x = torch.rand(2, 3, 32, 32)
    assert rand(x).shape == trained(x).shape and not torch.allclose(rand(x), trained(x))
    again = open_encoder(f"random:{student}", device="cpu")
    torch.testing.assert_close(again(x), rand(x))  # seeded: the same baseline every run


def test_probe_robustness_compare_share_the_default_cache_and_take_class_weight(
    ultrabench, student, tmp_path, monkeypatch
) -> None:
    """No --cache: all three commands use the one user-level cache ($USFAST_CACHE_DIR/features), so clean
    features computed by `probe` are reused by `robustness` and `compare`; --class-weight is reported."""
    cache_root = tmp_path / "user-cache"
    monkeypatch.setenv("USFAST_CACHE_DIR", str(cache_root))
    res = _invoke(
        "probe", str(ultrabench), "-e", str(student), "--preset", "sweep", "--seeds", "0",
        "--class-weight", "balanced", "--out", str(tmp_path / "p"), "--device", "cpu",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "class-weight balanced" in res.output and "balanced accuracy" in res.output
    assert "images train" in res.output and "validation" in res.output
    clean = sorted(cache_root.rglob("*.npz"))
    assert len(clean) == 3
    mtimes = [p.stat().st_mtime_ns for p in clean]
    res = _invoke(
        "robustness", str(ultrabench), "-e", str(student), "--corruptions", "haze", "--severities", "1",
        "--preset", "sweep", "--seeds", "0", "--class-weight", "balanced", "--out", str(tmp_path / "r"),
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "class-weight balanced" in res.output
    res = _invoke("compare", "-e", str(student), "-d", str(ultrabench), "--preset", "sweep", "--seeds", "0",
                  "--out", str(tmp_path / "c"))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(list(cache_root.rglob("*.npz"))) == 4  # 3 clean splits (shared) + 1 corrupted test set
    assert [p.stat().st_mtime_ns for p in clean] == mtimes  # reused, not rewritten


def test_bad_class_weight_is_a_one_line_error(ultrabench, student) -> None:
    from usjepa_fast.errors import UsfastError

    with pytest.raises(UsfastError, match="--class-weight"):
        _invoke("probe", str(ultrabench), "-e", str(student), "--class-weight", "inverse")


def test_probe_and_robustness_write_nothing_into_the_dataset(ultrabench, student, tmp_path) -> None:
    """Issue 17: reading a dataset (scan masks detected, features cached) leaves its folder as it was;
    read-only for a non-root user (root ignores permission bits: then the listing diff is the check)."""
    import os
    import shutil

    from support.media import folder_state

    data = tmp_path / "task"
    shutil.copytree(ultrabench, data)
    before = folder_state(data)
    read_only = os.geteuid() != 0
    if read_only:
        for d, _, _ in os.walk(data):
            os.chmod(d, 0o555)
    try:
        common = ["--encoder", str(student), "--seeds", "0", "--cache", str(tmp_path / "cache")]
        _invoke("probe", str(data), *common, "--preset", "sweep", "--out", str(tmp_path / "p"))
        _invoke(
            "robustness", str(data), *common, "--corruptions", "speckle", "--severities", "1",
            "--out", str(tmp_path / "r"),
        )  # fmt: skip
    finally:
        if read_only:
            for d, _, _ in os.walk(data):
                os.chmod(d, 0o755)
    assert folder_state(data) == before
