"""``--tokens scan``: only each frame's scan-region patches go through the encoder, on every backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from usjepa_fast.data.preprocess import Preprocessor, eval_config
from usjepa_fast.data.scan_region import save_mask
from usjepa_fast.embed import EmbedOptions, MemorySink, run_engine
from usjepa_fast.embed.fingerprint import feature_key
from usjepa_fast.embed.sources import list_sources
from usjepa_fast.errors import ConfigError, UsfastError

# masks on 128 px images; the tiny encoder sees 64 px = a 4x4 grid of 16 px patches (32 px of source each)
MASKS = {
    "a_left": (np.s_[:, :64], [0, 1, 4, 5, 8, 9, 12, 13]),
    "b_corner": (np.s_[:64, 64:], [2, 3, 6, 7]),
    "c_centre": (np.s_[32:96, 40:88], [5, 6, 9, 10]),  # 24/32 px of columns 1 and 2: >= half
    "d_all": (np.s_[:, :], list(range(16))),
}


@pytest.fixture(scope="module")
def masked_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scan_tokens")
    rng = np.random.default_rng(0)
    for stem, (region, _) in MASKS.items():
        img = rng.integers(0, 256, (128, 128), dtype=np.uint8)
        mask = np.zeros((128, 128), bool)
        mask[region] = True
        img[~mask] = 0  # the black surround
        Image.fromarray(img).save(root / f"{stem}.png")
        save_mask(mask, root / f"{stem}.scanmask.png")
    return root


def _by_hand(backend, image: np.ndarray, mask: np.ndarray, kept: list[int]) -> torch.Tensor:
    """The model run on the gathered tokens of one frame, written out: embed, gather, blocks, mean."""
    model = backend.encoder.model
    px = Preprocessor(eval_config(backend.info))(image, scan_mask=mask)["image"][None]  # (1, 3, S, S)
    tokens = model._pos_embed(model.patch_embed(px))  # (1, 1 + N, D): class token first
    seq = torch.cat([tokens[:, :1], tokens[:, 1 + torch.tensor(kept)]], dim=1)
    out = model.norm(model.blocks(seq))  # (1, 1 + k, D)
    return model.fc_norm(out[:, 1:].mean(dim=1))[0]  # (D,)


def test_scan_token_features_equal_the_model_on_gathered_tokens_by_hand(masked_folder, torch_backend) -> None:
    sources = list_sources(masked_folder)
    assert [s.path.stem for s in sources] == list(MASKS)
    sink = MemorySink()
    # batch 3 over 4 files: batches mix files with different token counts (ragged)
    stats = run_engine(torch_backend, sources, EmbedOptions(batch_size=3, progress=False, tokens="scan"), sink)
    assert stats.files_embedded == 4 and not sink.failed
    assert stats.tokens_kept == sum(len(k) for _, k in MASKS.values()) and stats.tokens_total == 4 * 16
    with torch.no_grad():
        for fid, src in enumerate(sources):
            region, kept = MASKS[src.path.stem]
            image = np.asarray(Image.open(src.path))
            mask = np.zeros((128, 128), bool)
            mask[region] = True
            ref = _by_hand(torch_backend, image, mask, kept)
            torch.testing.assert_close(torch.from_numpy(sink.features[fid][0]), ref, atol=1e-5, rtol=1e-5)
    # a frame whose region is the whole frame gets exactly its --tokens all feature
    full = MemorySink()
    run_engine(torch_backend, sources, EmbedOptions(batch_size=3, progress=False), full)
    np.testing.assert_allclose(sink.features[3], full.features[3], atol=1e-5)
    assert not np.allclose(sink.features[0], full.features[0], atol=1e-3)


def test_scan_tokens_on_a_clip_and_with_redundant_frame_skipping(synth_root, torch_backend) -> None:
    sources = list_sources(synth_root / "clips" / "clip_002.avi")
    opts = dict(batch_size=4, progress=False, redundancy_threshold=255.0)  # every frame after the first: redundant
    sink = MemorySink()
    stats = run_engine(torch_backend, sources, EmbedOptions(tokens="scan", **opts), sink)
    assert stats.frames_embedded == 1 and stats.frames_duplicate > 0  # the two savings combine
    assert 0 < stats.tokens_kept < stats.tokens_total == 16
    feats = sink.features[0]
    assert np.allclose(feats, feats[:1])  # skipped frames repeat the embedded one


def test_onnx_kept_token_export_matches_torch_scan_tokens(masked_folder, torch_backend, tmp_path) -> None:
    from usjepa_fast.embed import open_backend

    onnx = open_backend(
        "vit_tiny_patch16_224",
        "onnx",
        "cpu",
        img_size=64,
        threads=1,
        exporter="torchscript",
        cache_dir=tmp_path,
        tokens="scan",
    )
    assert onnx.keep_unsupported is None and onnx.export["keep"]["max_tokens"] == 16
    sources = list_sources(masked_folder)
    got, ref = MemorySink(), MemorySink()
    opts = EmbedOptions(batch_size=3, progress=False, tokens="scan")
    run_engine(onnx, sources, opts, got)
    run_engine(torch_backend, sources, opts, ref)
    for fid in ref.features:
        np.testing.assert_allclose(got.features[fid], ref.features[fid], atol=1e-4, rtol=1e-4)
    # the kept-token export still embeds whole frames (keep = every patch)
    whole, dense = MemorySink(), MemorySink()
    run_engine(onnx, sources, EmbedOptions(batch_size=3, progress=False), whole)
    run_engine(torch_backend, sources, EmbedOptions(batch_size=3, progress=False), dense)
    np.testing.assert_allclose(whole.features[0], dense.features[0], atol=1e-4, rtol=1e-4)


def test_backends_that_cannot_run_scan_tokens_refuse_in_one_line(masked_folder, onnx_backend) -> None:
    from usjepa_fast.embed import open_backend

    sources = list_sources(masked_folder)
    with pytest.raises(UsfastError, match="no kept-token input") as err:
        run_engine(onnx_backend, sources, EmbedOptions(progress=False, tokens="scan"), MemorySink())
    assert "\n" not in str(err.value) and "--keep-input" in str(err.value)
    with pytest.raises(UsfastError, match="not a plain ViT") as err:
        open_backend("resnet10t", "torch", "cpu", img_size=64, tokens="scan")
    assert "--tokens all" in str(err.value)
    with pytest.raises(UsfastError, match="int8"):
        open_backend("vit_tiny_patch16_224", "onnx", "cpu", img_size=64, precision="int8", tokens="scan")


def test_token_options_are_validated_and_fingerprinted(torch_backend) -> None:
    for field, value, hint in [("tokens", "some", "all | scan"), ("patch_coverage", 1.5, "[0, 1]")]:
        with pytest.raises(ConfigError) as err:
            EmbedOptions(**{field: value})
        assert f"{field}={value!r}" in str(err.value) and hint in str(err.value)
    with pytest.raises(ConfigError, match="scan_region"):
        EmbedOptions(tokens="scan", scan_region=False)
    keys = {
        feature_key(torch_backend),
        feature_key(torch_backend, token_selection="scan", patch_coverage=0.5),
        feature_key(torch_backend, token_selection="scan", patch_coverage=0.25),
    }
    assert len(keys) == 3


@pytest.mark.parametrize("backend", ["torch-bf16", "openvino"])
def test_gated_and_openvino_backends_run_scan_tokens(masked_folder, torch_backend, tmp_path, backend) -> None:
    from usjepa_fast.embed import open_backend

    if backend == "openvino":
        pytest.importorskip("openvino")
        kw = dict(backend="openvino", precision="fp32", exporter="torchscript", cache_dir=tmp_path)
    else:
        kw = dict(backend="torch", precision="bf16")
    b = open_backend("vit_tiny_patch16_224", device="cpu", img_size=64, threads=1, tokens="scan", **kw)
    assert b.keep_unsupported is None
    sources = list_sources(masked_folder)
    got, ref = MemorySink(), MemorySink()
    opts = EmbedOptions(batch_size=3, progress=False, tokens="scan")
    run_engine(b, sources, opts, got)
    run_engine(torch_backend, sources, opts, ref)
    for fid in ref.features:
        a, r = got.features[fid][0], ref.features[fid][0]
        assert float(a @ r / (np.linalg.norm(a) * np.linalg.norm(r))) > 0.99
    if backend == "torch-bf16":
        assert b.gate is not None and b.gate.passed  # the parity gate ran on the first ragged batch


def test_cli_embed_tokens_scan(masked_folder, tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from usjepa_fast.cli.main import app

    base = ["embed", str(masked_folder), "-e", "vit_tiny_patch16_224", "--backend", "torch", "--device", "cpu"]
    res = CliRunner().invoke(app, base + ["-o", str(tmp_path / "o"), "--no-progress", "--tokens", "scan"])
    assert res.exit_code == 0, res.output
    fields = json.loads((tmp_path / "o" / "embed.json").read_text())["fingerprint"]["fields"]
    assert fields["token_selection"] == {"mode": "scan", "patch_coverage": 0.5}
    res = CliRunner().invoke(app, base + ["-o", str(tmp_path / "p"), "--patch-coverage", "2"])
    assert isinstance(res.exception, ConfigError) and "patch_coverage=2.0" in str(res.exception)
