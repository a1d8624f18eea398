"""Mixed pretraining corpus: min(size, cap) weights, auto-detected sources (sampling: test_sampler.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from usjepa_fast.data.corpus import MixedCorpus, build_pretrain_corpus
from usjepa_fast.data.preprocess import PreprocessConfig
from usjepa_fast.data.sampler import CorpusSampler
from usjepa_fast.data.video import FrameSampling
from usjepa_fast.errors import DataError


class _Range(Dataset):
    def __init__(self, n: int, tag: int) -> None:
        self.n, self.tag = n, tag

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {
            "image": torch.full((1,), float(i)),
            "scan_mask": torch.ones(1, dtype=torch.bool),
            "valid_patches": torch.ones(1, dtype=torch.bool),
            "tag": self.tag,
        }


def test_weights_are_min_size_cap() -> None:
    corpus = MixedCorpus([_Range(10, 0), _Range(1000, 1), _Range(200, 2)], ["a", "b", "c"], cap=300)
    np.testing.assert_allclose(corpus.weights, np.array([10, 300, 200]) / 510)
    assert len(corpus) == 1210 and corpus.locate(0) == (0, 0) and corpus.locate(10) == (1, 0)
    assert corpus.locate(1209) == (2, 199)
    item = corpus[15]
    assert item["source"] == 1 and item["image"].item() == 5 and "tag" not in item  # keys projected


def test_bad_corpora() -> None:
    with pytest.raises(DataError, match="empty"):
        MixedCorpus([])
    with pytest.raises(DataError, match="empty"):
        MixedCorpus([_Range(0, 0)])
    with pytest.raises(DataError, match="cap"):
        MixedCorpus([_Range(3, 0)], cap=0)


def test_build_from_ultrabench_clips_and_image_folder(synth_root, tmp_path) -> None:
    sources = [str(synth_root / "ultrabench"), str(synth_root / "clips"), str(synth_root / "ultrabench" / "images")]
    pp = PreprocessConfig(image_size=32, patch_size=16, train=True)
    corpus = build_pretrain_corpus(sources, pp, cap=40, sampling=FrameSampling(every_k=4), cache_dir=tmp_path / "masks")
    assert [n.split("[")[1] for n in corpus.names] == ["ultrabench:train]", "videos]", "images]"]
    assert corpus.sizes[1] == 3 * 4  # 3 clips x 16 frames, every 4th
    np.testing.assert_allclose(corpus.weights, np.minimum(corpus.sizes, 40) / np.minimum(corpus.sizes, 40).sum())
    sampler = CorpusSampler.from_corpus(corpus, num_samples=6, seed=0)
    batch = torch.utils.data.default_collate([corpus[i] for i in sampler])
    assert batch["image"].shape == (6, 3, 32, 32) and batch["valid_patches"].shape == (6, 2, 2)
    with pytest.raises(DataError, match="does not exist"):
        build_pretrain_corpus([str(tmp_path / "nope")], pp)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images or videos"):
        build_pretrain_corpus([str(tmp_path / "empty")], pp)
    with pytest.raises(DataError, match="no pretraining sources"):
        build_pretrain_corpus([], pp)
