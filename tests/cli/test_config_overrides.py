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


def test_every_shipped_config_passes_the_schema():
    import glob

    from rsground_jax.configs import check_experiment, check_grpo_config
    from rsground_jax.rl.ablation import check_ablation_config

    paths = glob.glob("configs/*.py") + ["tests/reliability/tiny_sft.py", "tests/reliability/tiny_grpo.py",
                                         "tests/reliability/tiny_sft_grpo.py"]
    name = lambda p: p.rsplit("/", 1)[-1]  # noqa: E731
    grpo = [p for p in paths if name(p).startswith(("grpo", "tiny_grpo"))]
    ablation = [p for p in paths if name(p).startswith("ablation")]
    assert len(grpo) >= 3 and ablation
    for path in paths:
        check = check_grpo_config if path in grpo else check_ablation_config if path in ablation else check_experiment
        check(load_config(path), path)


@pytest.mark.parametrize("override, message", [
    ("stages.0.steps=0", "stages.0.steps must be a positive integer, got 0"),
    ("stages.1.lr=-1e-3", "stages.1.lr must be a positive number, got -0.001"),
    ("stages.1.end_lr_fraction=1.5", "stages.1.end_lr_fraction must be a number in [0, 1]"),
    ("stages.2.vision_lr_scale=0.0", "stages.2.vision_lr_scale must be a positive number"),
    ("max_pixels=0", "max_pixels must be a positive integer"),
    ("answer_style='boxes'", "answer_style must be one of"),
    ("template_question='<|image_pad|> {expression}'", "template_question must be a string with {expression} and "
                                                        "without <|...|> markup"),
    ("stages.1.name='vision'", "stages.1.name 'vision' is used by an earlier stage"),
    ("stages.2.replay=['later']", "stages.2.replay names 'later', which is not an earlier stage"),
    ("stages.1.synth.clutter=2.0", "stages.1.synth: SynthConfig.clutter must lie in [0, 1]"),
    ("stages.1.synth={'preset': 'tiny', 'sizes': 3}", "unknown config key 'stages.1.synth.sizes'"),
])
def test_the_schema_names_the_file_the_key_and_the_problem(override, message):
    from rsground_jax.configs import check_experiment

    cfg = load_config(BASE, [override])
    with pytest.raises(ConfigError) as info:
        check_experiment(cfg, BASE)
    assert str(info.value).startswith(f"{BASE}: ") and message in str(info.value)


def test_a_typo_in_a_config_file_is_refused_not_ignored():
    from rsground_jax.configs import check_experiment

    cfg = load_config(BASE)
    cfg.stages[1].stpes = 10
    with pytest.raises(ConfigError, match=r"unknown config key 'stages\.1\.stpes'"):
        check_experiment(cfg, BASE)


def test_resume_may_change_only_what_is_still_to_come():
    from rsground_jax.configs import config_differences, plain_config

    saved = plain_config(load_config(BASE))
    allowed = plain_config(load_config(BASE, ["stages.2.steps=4000", "output=elsewhere", "eval_images=5"]))
    assert config_differences(saved, allowed) == []
    changed = plain_config(load_config(BASE, ["stages.1.num_images=10", "stages.2.lr=1.0", "seed=3"]))
    assert config_differences(saved, changed) == ["seed: 0 then, 3 now", "stages.1.num_images: 4000 then, 10 now",
                                                  "stages.2.lr: 0.001 then, 1.0 now"]
