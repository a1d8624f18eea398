"""Probe tests: tiny encoders (``support.probe``) on the shared synthetic dataset."""

from __future__ import annotations

import pytest


@pytest.fixture
def ultrabench(synth_root):
    return synth_root / "ultrabench"
