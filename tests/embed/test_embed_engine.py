"""The embed engine's pieces as units: option validation up front, the sinks, the fingerprint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from usjepa_fast.embed import EmbedOptions, MemorySink, embed_folder, run_engine
from usjepa_fast.embed.fingerprint import backend_fields, feature_fields, feature_key
from usjepa_fast.embed.sources import list_sources
from usjepa_fast.errors import ConfigError


@pytest.mark.parametrize(
    ("field", "value", "hint"),
    [
        ("batch_size", 0, ">= 1"),
        ("every_k", 0, ">= 1"),
        ("fps", -2.0, "> 0"),
        ("max_frames", 0, ">= 1"),
        ("redundancy_threshold", -3.0, "[0, 255]"),
        ("redundancy_size", 1, ">= 4"),
        ("dtype", "int8", "float16 | float32"),
        ("decoder", "ffmpeg", "auto | pyav | dali | dali-gpu"),
        ("decode_workers", 0, ">= 1"),
        ("prefetch", 1, ">= 2"),
        ("part_rows", 0, ">= 1"),
        ("change_check", "foo", "mtime | hash"),
        ("kinds", ("audio",), "image"),
        ("splits", ("dev",), "train"),
        ("clip_pool", "yes", "true or false"),
    ],
)
def test_every_option_is_validated_up_front(field, value, hint) -> None:
    with pytest.raises(ConfigError) as err:
        EmbedOptions(**{field: value})
    msg = str(err.value)
    assert f"{field}={value!r}" in msg and hint in msg and "\n" not in msg


def test_bad_options_fail_before_the_encoder_is_opened(synth_root, tmp_path) -> None:
    opts = EmbedOptions(progress=False)
    opts.every_k = 0  # mutated after construction: caught again when the run starts
    with pytest.raises(ConfigError, match="every_k=0"):
        embed_folder(synth_root / "clips", tmp_path / "o", "no-such-encoder", options=opts)


def test_cli_reports_a_bad_option_in_one_line(synth_root, tmp_path) -> None:
    from typer.testing import CliRunner

    from usjepa_fast.cli.main import app

    res = CliRunner().invoke(
        app, ["embed", str(synth_root / "clips"), "-e", "vit_tiny_patch16_224", "-o", str(tmp_path), "--every-k", "0"]
    )
    # `usfast` (cli.main.main) prints UsfastErrors as one line and exits 2; the runner sees the error
    assert isinstance(res.exception, ConfigError) and "every_k=0" in str(res.exception)


def test_memory_sink_collects_files_in_source_order(synth_root, torch_backend) -> None:
    sources = list_sources(synth_root / "ultrabench" / "images")[:7]
    sink = MemorySink()
    stats = run_engine(torch_backend, sources, EmbedOptions(batch_size=3, progress=False), sink)
    assert stats.files_embedded == 7 and stats.frames_embedded == 7 and not sink.failed
    assert sorted(sink.features) == list(range(7))
    assert all(f.shape == (1, torch_backend.info.width) and f.dtype == np.float32 for f in sink.features.values())


def test_engine_rejects_an_encoder_that_does_not_pool(synth_root, torch_backend) -> None:
    from usjepa_fast.errors import UsfastError

    class Tokens:
        info, name, device = torch_backend.info, "tokens", torch.device("cpu")

        def __call__(self, x):
            return torch.zeros(x.shape[0], 4, 8)

    sources = list_sources(synth_root / "ultrabench" / "images")[:2]
    with pytest.raises(UsfastError, match=r"expected \(B, D\) pooled"):
        run_engine(Tokens(), sources, EmbedOptions(progress=False), MemorySink())


def test_fingerprint_fields_and_the_manifest(synth_root, tmp_path, torch_backend, onnx_backend) -> None:
    from usjepa_fast.embed.fingerprint import run_fields
    from usjepa_fast.hardware import machine_key

    tf, of = backend_fields(torch_backend), backend_fields(onnx_backend)
    assert (tf["backend"], tf["precision"], tf["backend_name"]) == ("torch", "fp32", torch_backend.name)
    assert (of["backend"], of["precision"], of["backend_name"]) == ("onnx", "fp32", onnx_backend.name)
    assert tf["machine"] == machine_key(None)  # bf16 on AMX and on AVX512-BF16 round differently
    assert feature_key(torch_backend) != feature_key(onnx_backend)  # the runtime is part of the key
    assert feature_key(torch_backend) != feature_key(torch_backend, scan_region=False)
    fields = feature_fields(torch_backend)
    assert fields["encoder"]["input_size"] == torch_backend.info.input_size
    embed_folder(
        synth_root / "clips" / "clip_002.avi", tmp_path / "o", torch_backend, options=EmbedOptions(progress=False)
    )
    manifest = json.loads((tmp_path / "o" / "embed.json").read_text())
    run = run_fields(torch_backend, EmbedOptions(progress=False), synth_root / "clips" / "clip_002.avi")
    assert {k: run[k] for k in fields} == fields  # the run fingerprint extends the feature fields
    assert manifest["fingerprint"]["fields"] == json.loads(json.dumps(run))
    assert json.loads((tmp_path / "o" / "fingerprint.json").read_text()) == manifest["fingerprint"]
