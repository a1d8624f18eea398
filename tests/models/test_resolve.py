"""The one encoder resolver: every spec form, arch agreement, sidecar-faithful loading, one-line refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from usjepa_fast.errors import CheckpointError, UsfastError
from usjepa_fast.models import create
from usjepa_fast.models.frozen import read_sidecar, save_export_ready
from usjepa_fast.models.registry import IMAGENET_MEAN, IMAGENET_STD
from usjepa_fast.models.resolve import (
    EncoderSpec,
    describe_encoder,
    encoder_from_info,
    parse_encoder_spec,
    resolve_encoder,
)
from usjepa_fast.models.zoo import ZOO

TIMM = "vit_tiny_patch16_224"  # width 192; timm's default normalisation for it is 0.5 / 0.5


def _student(path: Path, width: int = 32, size: int = 64, mean=(0.3,) * 3, std=(0.2,) * 3) -> Path:
    """A usfast export-ready student (sidecar timm_name vit_base_patch16_224, as usjepa_vit_base writes)."""
    torch.manual_seed(0)
    s = create("usjepa_vit_base", img_size=size, patch_size=16, embed_dim=width, depth=1, num_heads=2)
    return save_export_ready(s, s.encoder_info("pixel-teacher", mean, std), path)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    _student(out / "student.safetensors")
    return out


@pytest.fixture(scope="module")
def raw_ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(5)
    vit = timm.create_model(TIMM, pretrained=False, img_size=32, num_classes=0, global_pool="avg", fc_norm=False)
    path = tmp_path_factory.mktemp("raw") / "raw.pth"
    torch.save({"model": vit.state_dict(), "epoch": 3}, path)
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg, msg
    return msg


def test_parse_says_which_form(run_dir, raw_ckpt, tmp_path) -> None:
    student = run_dir / "student.safetensors"
    assert parse_encoder_spec(TIMM).form == "timm"
    assert parse_encoder_spec(run_dir).form == "usfast" and parse_encoder_spec(run_dir).path == student
    assert parse_encoder_spec(student).sidecar == student.with_suffix(".json")
    ck = parse_encoder_spec(raw_ckpt, arch=TIMM)
    assert (ck.form, ck.name) == ("checkpoint", TIMM)
    zoo = parse_encoder_spec(f"zoo:urfm={raw_ckpt}")  # entry names are case-insensitive
    assert (zoo.form, zoo.name, zoo.path) == ("zoo", "URFM", raw_ckpt)
    for suffix in (".onnx", ".engine", ".plan"):
        assert parse_encoder_spec(tmp_path / f"m{suffix}").form == "runtime"
    rnd = parse_encoder_spec(f"random:{run_dir}@7")
    assert (rnd.form, rnd.seed, rnd.base.form) == ("random", 7, "usfast")
    assert parse_encoder_spec(f"random:{TIMM}").seed is None


@pytest.mark.parametrize(
    ("spec", "arch", "match"),
    [
        ("", None, "empty encoder spec"),
        ("no_such_model_or_file", None, "neither an existing file nor a timm model"),
        ("/nope/teacher.pth", TIMM, "does not exist"),
        ("zoo:URFM", None, "zoo:NAME="),
        ("zoo:NotAModel=/x.pth", None, "not in the model zoo"),
        ("zoo:URFM=/nope/urfm.pth", None, "does not exist"),
        ("random:", None, "random: needs a spec"),
        ("random:random:vit_tiny_patch16_224", None, "not another random"),
        ("random:model.onnx", None, "not an ONNX"),
    ],
)
def test_malformed_specs_are_one_line_errors(spec: str, arch: str | None, match: str) -> None:
    with pytest.raises(UsfastError, match=match) as exc:
        resolve_encoder(spec, arch=arch)
    _one_line(exc)


def test_raw_checkpoint_needs_arch(raw_ckpt) -> None:
    with pytest.raises(CheckpointError, match="no usfast sidecar.*--arch") as exc:
        resolve_encoder(raw_ckpt)
    _one_line(exc)
    enc = resolve_encoder(raw_ckpt, arch=TIMM, img_size=32)
    assert enc.info.width == 192 and enc.info.mean == (0.5, 0.5, 0.5)  # timm's default: nothing better is known
    assert Path(enc.info.source).is_absolute() and len(enc.info.source_hash) == 64


def test_run_dir_is_always_read_through_its_sidecar(run_dir) -> None:
    """The README bug: the paper recipe sets teacher.arch, which used to bypass the sidecar."""
    plain = resolve_encoder(run_dir)
    same_arch = resolve_encoder(run_dir, arch="vit_base_patch16_224")
    tagged = resolve_encoder(run_dir, arch="vit_base_patch16_224.augreg_in21k")  # a pretrained tag is the same arch
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(same_arch(x), plain(x))
    torch.testing.assert_close(tagged(x), plain(x))
    assert plain.info.width == 32 and plain.info.mean == (0.3, 0.3, 0.3) and plain.info.name == "pixel-teacher"
    with pytest.raises(UsfastError, match="vit_base_patch16_224, but arch=vit_small_patch16_224") as exc:
        resolve_encoder(run_dir, arch="vit_small_patch16_224")
    assert "teacher.arch=null" in _one_line(exc)


def test_weights_that_do_not_match_their_sidecar(run_dir, tmp_path) -> None:
    """Issue 14 item 4: a one-line CheckpointError naming the file and the keys, never a timm traceback."""
    good = _student(tmp_path / "a" / "student.safetensors", width=32)
    # another width *and* grid: timm's position-embedding resampler used to raise a RuntimeError here
    other = _student(tmp_path / "b" / "student.safetensors", width=48, size=32)
    good.write_bytes(other.read_bytes())  # the sidecar still describes the 32-wide, 64-px model
    with pytest.raises(CheckpointError) as exc:
        resolve_encoder(good)
    msg = _one_line(exc)
    assert str(good) in msg and "shape mismatch: blocks.0.attn.proj.bias (48,) vs model (32,)" in msg
    assert "student.json" in msg
    # and a safetensors with keys the sidecar does not know
    state = {k: v.contiguous() for k, v in resolve_encoder(run_dir).model.state_dict().items()}
    state.pop("norm.weight")
    save_file(state, str(good))
    with pytest.raises(CheckpointError, match=r"missing keys: norm\.weight.*sidecar") as exc:
        resolve_encoder(good)
    _one_line(exc)


def test_wrong_arch_for_a_raw_checkpoint_is_one_line(run_dir, tmp_path) -> None:
    """timm's position-embedding resampler used to end a wrong --arch in a RuntimeError traceback."""
    from safetensors.torch import load_file

    raw = tmp_path / "student_weights.pth"
    torch.save(load_file(str(run_dir / "student.safetensors")), raw)  # no sidecar: a foreign checkpoint
    with pytest.raises(CheckpointError, match=r"does not fit .*shape mismatch: .*--arch") as exc:
        resolve_encoder(raw, arch="vit_base_patch16_224")
    assert str(raw) in _one_line(exc)


def test_random_init_keeps_the_architecture_and_preprocessing(run_dir) -> None:
    trained = resolve_encoder(run_dir)
    rnd = resolve_encoder(f"random:{run_dir}@3")
    for field in ("input_size", "mean", "std", "pool", "width", "timm_name", "timm_kwargs", "patch_size"):
        assert getattr(rnd.info, field) == getattr(trained.info, field), field
    assert rnd.info.name == "random-init pixel-teacher" and rnd.info.source_hash.startswith("random-init:")
    assert rnd.info.source_hash.endswith(":3") and rnd.info.source.endswith("@3")
    x = torch.randn(2, 3, 64, 64)
    assert not torch.allclose(rnd(x), trained(x))
    torch.testing.assert_close(resolve_encoder(f"random:{run_dir}", seed=3)(x), rnd(x))  # @seed == seed=
    assert not torch.allclose(resolve_encoder(f"random:{run_dir}@4")(x), rnd(x))
    # random: of a raw checkpoint / timm name / zoo entry: their architecture, nothing read from weights
    assert resolve_encoder(f"random:{TIMM}@1", img_size=32).info.width == 192


def test_mean_std_override_and_option_checks(raw_ckpt) -> None:
    enc = resolve_encoder(raw_ckpt, arch=TIMM, img_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert enc.info.mean == IMAGENET_MEAN and enc.info.std == IMAGENET_STD
    assert resolve_encoder(raw_ckpt, arch=TIMM, img_size=32, mean=[0.2], std=0.25).info.std == (0.25,) * 3
    for kwargs, match in (
        ({"mean": (0.1, 0.2)}, "mean"),
        ({"std": (0.1, 0.0, 0.1)}, "positive"),
        ({"pool": "foo"}, "use mean"),
        ({"img_size": 0}, "img_size"),
    ):
        with pytest.raises(UsfastError, match=match) as exc:
            resolve_encoder(raw_ckpt, arch=TIMM, **kwargs)
        _one_line(exc)


def test_student_without_class_token_refuses_cls_pooling(run_dir) -> None:
    with pytest.raises(UsfastError, match="no class token") as exc:
        resolve_encoder(run_dir, pool="cls")
    _one_line(exc)


def test_runtime_files_are_refused_with_a_reason(tmp_path) -> None:
    for name in ("model.onnx", "model.engine"):
        with pytest.raises(UsfastError, match="open_backend.*checkpoint or run dir") as exc:
            resolve_encoder(tmp_path / name)
        _one_line(exc)


def test_describe_matches_resolve_without_reading_weights(raw_ckpt, run_dir) -> None:
    for spec, arch in ((raw_ckpt, TIMM), (run_dir, None), (f"random:{run_dir}@2", None)):
        described = describe_encoder(spec, arch=arch, img_size=32 if arch else None)
        loaded = resolve_encoder(spec, arch=arch, img_size=32 if arch else None).info
        assert described.source_hash == ""
        assert dataclasses.replace(described, source_hash=loaded.source_hash) == loaded


def _tiny_zoo(name: str, **changes) -> object:
    kwargs = {"num_classes": 0, "global_pool": "avg", "fc_norm": False, "img_size": 32}
    return dataclasses.replace(ZOO[name], timm_name=TIMM, timm_kwargs=kwargs, input_size=32, **changes)


def test_zoo_entry_layout_and_normalisation_apply(tmp_path) -> None:
    """URFM's release: the encoder under ema_state_dict with MAE decoder keys; ImageNet mean/std."""
    torch.manual_seed(2)
    vit = timm.create_model(TIMM, pretrained=False, img_size=32, num_classes=0, global_pool="avg", fc_norm=False)
    ema = {**vit.state_dict(), "mask_token": torch.zeros(1, 1, 192), "decoder_embed.weight": torch.zeros(8, 192)}
    online = {k: torch.zeros_like(v) for k, v in vit.state_dict().items()}
    ckpt = tmp_path / "urfm.pth"
    torch.save({"model": online, "ema_state_dict": ema, "optimizer": {}}, ckpt)
    entry = _tiny_zoo("URFM")
    enc = resolve_encoder(EncoderSpec.for_zoo(entry, ckpt))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), vit.forward_features(x)[:, 1:].mean(1))  # the EMA weights
    assert enc.info.mean == IMAGENET_MEAN and enc.info.pool == "mean" and enc.info.name == "URFM"
    assert enc.info.source == f"zoo:URFM={ckpt.resolve()}"
    with pytest.raises(UsfastError, match="zoo entry URFM: its architecture is") as exc:
        resolve_encoder(EncoderSpec.for_zoo(entry, ckpt), arch="vit_small_patch16_224")
    _one_line(exc)
    assert resolve_encoder(EncoderSpec.for_zoo(entry, ckpt), arch=TIMM).info.width == 192  # agreeing arch


def test_zoo_usfast_loader_reads_the_sidecar(run_dir) -> None:
    enc = resolve_encoder(f"zoo:US-JEPA={run_dir}")
    assert enc.info.name == "US-JEPA" and enc.info.mean == (0.3, 0.3, 0.3)  # the run's normalisation
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(enc(x), resolve_encoder(run_dir)(x))


def test_encoder_from_info_reopens_every_source(raw_ckpt, run_dir) -> None:
    x32, x64 = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)
    for spec, arch, x in (
        (TIMM, None, x32),
        (raw_ckpt, TIMM, x32),
        (run_dir, None, x64),
        (f"random:{run_dir}@5", None, x64),
        (f"zoo:US-JEPA={run_dir}", None, x64),
    ):
        enc = resolve_encoder(spec, arch=arch, img_size=32 if x is x32 else None, seed=1)
        again = encoder_from_info(enc.info)
        assert again.info == enc.info, spec
        torch.testing.assert_close(again(x), enc(x))
    gone = dataclasses.replace(resolve_encoder(run_dir).info, source="/nope/student.safetensors")
    with pytest.raises(UsfastError, match="cannot be opened") as exc:
        encoder_from_info(gone)
    _one_line(exc)


def test_sidecar_source_is_absolute(run_dir) -> None:
    assert Path(read_sidecar(run_dir / "student.json").source).is_absolute()
