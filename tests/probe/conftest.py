"""Probe tests: tiny encoders (``support.probe``) on the shared synthetic dataset."""

from __future__ import annotations

import pytest


@pytest.fixture
def ultrabench(synth_root):
    return synth_root / "ultrabench"


@pytest.fixture(autouse=True)
def _private_feature_cache(tmp_path_factory, monkeypatch):
    """probe / robustness / compare default to the user-level feature cache: keep tests out of ~/.cache."""
    monkeypatch.setenv("USFAST_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "usfast-cache"))
