"""Config overrides: typed values, list elements by index, dicts in values as ConfigDicts, clear errors."""

import ml_collections
import pytest

from rsground_jax.configs import ConfigError, load_config

BASE = "configs/base_pretrain.py"


def test_typed_overrides_and_list_elements_by_index():
    cfg = load_config(BASE, ["seed=7", "stages.0.steps=50", "stages.1.lr=3", "stages.1.synth.image_size=(56, 84)"])
    assert cfg.seed == 7
    assert cfg.stages[0].steps == 50 and cfg.stages[1].lr == 3.0 and isinstance(cfg.stages[1].lr, float)
    assert cfg.stages[1].synth.image_size == (56, 84)
    assert load_config(BASE).stages[0].steps != 50  # the file itself is untouched


def test_a_list_of_dicts_becomes_config_dicts():
    cfg = load_config(BASE, ['stages=[{"name": "a", "synth": {"preset": "tiny"}, "steps": 3}]'])
    (stage,) = cfg.stages
    assert isinstance(stage, ml_collections.ConfigDict) and isinstance(stage.synth, ml_collections.ConfigDict)
    assert stage.name == "a" and stage.synth.preset == "tiny" and stage.steps == 3


@pytest.mark.parametrize("override, message", [
    ("stages.5.steps=1", "unknown config key 'stages.5'"),
    ("stages.x.steps=1", "unknown config key 'stages.x'"),
    ("stages.0.nope=1", "unknown config key 'stages.0.nope'"),
    ("stages.0.steps=many", "steps is a int, got str"),
    ("stages.9=1", "not an index of the 3-element list stages"),
    ("seed", "must look like key.sub=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(BASE, [override])
