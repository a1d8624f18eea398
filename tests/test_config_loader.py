"""The typed config loader: YAML + --set overrides, unknown keys and wrong types rejected."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from usjepa_fast.config import apply_overrides, from_dict, load_config, save_config, to_dict
from usjepa_fast.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-3  # peak learning rate
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: Literal["cosine", "constant"] = "cosine"


@dataclass
class Root:
    name: str = "run"
    steps: int = 10
    compile: bool = False
    resume: str | None = None
    optim: Optim = field(default_factory=Optim)
    sources: list[str] = field(default_factory=list)


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\noptim:\n  lr: 0.01\nsources: [a, b]\n")
    cfg = load_config(Root, path, ["optim.lr=1e-4", "compile=true", "optim.betas=[0.8, 0.9]", "resume=x.pt"])
    assert cfg.steps == 5 and cfg.optim.lr == pytest.approx(1e-4) and cfg.compile is True
    assert cfg.optim.betas == (0.8, 0.9) and cfg.sources == ["a", "b"] and cfg.resume == "x.pt"
    # round trip through the saved resolved config
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Root, tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"stepz": 3}, r"unknown config key\(s\) stepz; valid keys here: compile, name"),
        ({"optim": {"lrr": 1}}, r"unknown config key\(s\) optim.lrr"),
        ({"steps": "many"}, r"'steps': expected an integer"),
        ({"steps": 1.5}, r"'steps': expected an integer"),
        ({"compile": "yes"}, r"'compile': expected true/false"),
        ({"optim": {"schedule": "linear"}}, r"'optim.schedule': 'linear' is not one of"),
        ({"optim": {"betas": [0.9]}}, r"'optim.betas': expected 2 values"),
        ({"optim": 3}, r"expected a mapping for Optim"),
    ],
)
def test_bad_config_names_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(Root, data)


def test_bad_override_and_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Root, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(Root, bad)


def test_to_dict_is_plain() -> None:
    assert to_dict(Root())["optim"] == {"lr": 1e-3, "betas": [0.9, 0.95], "schedule": "cosine"}
