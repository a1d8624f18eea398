"""EvalConfig is validated when built, before any encoder is opened (issue 14)."""

from __future__ import annotations

import pytest

from usjepa_fast.errors import ConfigError
from usjepa_fast.probe.evaluate import EvalConfig


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"preset": "fast"}, r"eval option preset='fast' is invalid; use paper \| sweep"),
        ({"seeds": ()}, r"seeds=\(\) is invalid"),
        ({"seeds": (0, -1)}, r"seeds=-1 is invalid; use an integer >= 0"),
        ({"fewshot": (0.0,)}, r"fewshot=0.0 is invalid"),
        ({"fewshot": (1.5,)}, r"fewshot=1.5 is invalid"),
        ({"corruptions": ("snow",)}, r"corruptions=\['snow'\] is invalid"),
        ({"severities": (4,)}, r"severities=4 is invalid"),
        ({"robustness": True, "severities": ()}, r"severities=\(\) is invalid; use at least one of"),
        ({"batch_size": 0}, r"batch_size=0 is invalid"),
    ],
)
def test_bad_values_name_key_value_and_range(kwargs, words) -> None:
    with pytest.raises(ConfigError, match=words):
        EvalConfig(**kwargs)


def test_defaults_are_valid() -> None:
    assert EvalConfig().validate().preset == "paper"
    assert EvalConfig(preset="sweep", seeds=(0, 1), fewshot=(0.25, 1.0)).validate().fewshot == (0.25, 1.0)
