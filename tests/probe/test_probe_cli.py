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
