"""Train config: shipped recipes load, unknown keys are rejected, --set overrides apply."""

from __future__ import annotations

import pytest

from usjepa_fast.config import load_config
from usjepa_fast.errors import ConfigError
from usjepa_fast.train.config import CONFIG_DIR, TrainConfig, load_train_config


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_shipped_recipes_load(name: str) -> None:
    cfg = load_train_config(name)
    assert cfg.data.image_size % cfg.model.patch_size == 0
    assert cfg.optim.warmup_steps < cfg.optim.steps


def test_paper_recipe_values() -> None:
    cfg = load_train_config("salt_vitb16_paper")
    assert cfg.model.student == "usjepa_vit_base" and cfg.model.patch_size == 16
    assert cfg.model.predictor == "predictor_base" and cfg.objective.kind == "salt"
    assert cfg.mask.num_target_blocks == 4 and cfg.mask.target_scale == (0.075, 0.125)
    assert cfg.mask.context_scale == (0.85, 1.0) and cfg.data.val_fraction == 0.05
    assert (cfg.optim.weight_decay, cfg.optim.final_weight_decay) == (0.04, 0.4)


def test_overrides_and_types() -> None:
    cfg = load_train_config(
        "salt_tiny_cpu", ["optim.lr=1e-4", "mask.usrc=false", "data.sources=[a, b]", "mask.target_scale=[0.1, 0.2]"]
    )
    assert cfg.optim.lr == 1e-4 and cfg.mask.usrc is False and cfg.data.sources == ["a", "b"]
    assert cfg.mask.target_scale == (0.1, 0.2)
    with pytest.raises(ConfigError, match="expected a number"):
        load_train_config("salt_tiny_cpu", ["optim.lr=fast"])


def test_unknown_keys_are_rejected(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1.0e-3\n  learning_rate: 2.0e-3\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(TrainConfig, bad)
    with pytest.raises(ConfigError, match="mask.tua"):
        load_train_config("salt_tiny_cpu", ["mask.tua=0.5"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_train_config(tmp_path / "missing.yaml")
