"""The ultrasound data layer: readers, frame sampling, scan regions, preprocessing, corpora, synthesis.

Submodules (import them directly; the names below are re-exported lazily so ``import
usjepa_fast.data`` stays cheap for the CLI):

* ``media``       file discovery (``find_media``: files + unreadable entries) and gray image reading
* ``video``       ``VideoDecoder`` protocol, ``PyAVDecoder``, ``DaliCpuDecoder``, ``FrameSampling``
* ``clips``       ``clip_index`` (a clip's frame list, from decoding), ``scan_mask`` (the one scan region
                  of a media file for every command), ``spread_frames``
* ``cache``       the data layer's cache root and keys (``$USFAST_CACHE_DIR``, ``~/.cache/usfast``)
* ``scan_region`` ``detect_scan_region``, ``detect_clip_region``, ``patch_validity``, ``ScanMaskCache``
* ``preprocess``  ``percentile_rescale``, ``Preprocessor``, ``preprocess_batch``
* ``ultrabench``  ``UltraBenchDataset``
* ``folders``     ``ImageFolderDataset``, ``VideoFrameDataset``
* ``corpus``      ``MixedCorpus``, ``build_pretrain_corpus``
* ``synth``       ``synthesize`` (built-in synthetic B-mode data)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IMAGE_EXTENSIONS": "media",
    "VIDEO_EXTENSIONS": "media",
    "list_media": "media",
    "find_media": "media",
    "ClipIndex": "clips",
    "clip_index": "clips",
    "scan_mask": "clips",
    "spread_frames": "clips",
    "read_image_gray": "media",
    "Frame": "video",
    "FrameSampling": "video",
    "VideoInfo": "video",
    "VideoDecoder": "video",
    "PyAVDecoder": "video",
    "DaliCpuDecoder": "video",
    "get_decoder": "video",
    "detect_scan_region": "scan_region",
    "detect_clip_region": "scan_region",
    "patch_validity": "scan_region",
    "ScanMaskCache": "scan_region",
    "percentile_rescale": "preprocess",
    "PreprocessConfig": "preprocess",
    "Preprocessor": "preprocess",
    "preprocess_batch": "preprocess",
    "UltraBenchDataset": "ultrabench",
    "ImageFolderDataset": "folders",
    "VideoFrameDataset": "folders",
    "MixedCorpus": "corpus",
    "build_pretrain_corpus": "corpus",
    "synthesize": "synth",
    "SynthSummary": "synth",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'usjepa_fast.data' has no attribute '{name}'")
    return getattr(importlib.import_module(f"usjepa_fast.data.{module}"), name)
