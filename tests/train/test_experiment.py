"""SFT experiment configs: replay of an earlier stage's training records, data_from, and question_variants."""

import ml_collections
import pytest

from rsground_jax.train.experiment import stage_records


def _cfg(tmp_path, replay):
    def stage(name, instances, **extra):
        s = ml_collections.ConfigDict(dict(name=name, num_images=12, **extra))
        s.synth = ml_collections.ConfigDict(dict(preset="demo", instances_per_category=instances))
        return s

    c = ml_collections.ConfigDict(dict(seed=3, workdir=str(tmp_path)))
    c.stages = [stage("single", (1, 1)), stage("crowded", (2, 3), replay=replay)]
    return c


def test_replay_adds_the_earlier_stages_training_records_and_keeps_its_own_validation(tmp_path):
    cfg = _cfg(tmp_path, ["single"])
    single_train, single_val = stage_records(cfg, 0)
    train, val = stage_records(cfg, 1)
    own_train, own_val = stage_records(_cfg(tmp_path, None), 1)
    assert len(single_train) > 0 and len(own_train) > 0
    assert [r.image_path for r in train] == [r.image_path for r in own_train + single_train]
    assert [r.image_path for r in val] == [r.image_path for r in own_val]
    assert all("data_single" in r.image_path for r in train[len(own_train):])


def test_replay_of_a_stage_that_is_not_earlier_is_a_clear_error(tmp_path):
    cfg = _cfg(tmp_path, ["crowded"])
    with pytest.raises(ValueError, match="replay names 'crowded', which is not an earlier stage"):
        stage_records(cfg, 1)


def test_data_from_trains_a_stage_on_an_earlier_stages_scenes(tmp_path):
    cfg = _cfg(tmp_path, None)
    cfg.stages.append(ml_collections.ConfigDict(dict(name="tower", data_from="single", replay=["crowded"])))
    single_train, single_val = stage_records(cfg, 0)
    crowded_train, _ = stage_records(cfg, 1)
    train, val = stage_records(cfg, 2)
    assert [r.image_path for r in val] == [r.image_path for r in single_val]
    assert [r.image_path for r in train] == [r.image_path for r in single_train + crowded_train]
    assert not (tmp_path / "data_tower").exists()  # nothing generated for the stage itself


def test_data_from_with_a_dataset_of_its_own_is_a_clear_error(tmp_path):
    cfg = _cfg(tmp_path, None)
    cfg.stages[1].data_from = "single"
    with pytest.raises(ValueError, match="data_from='single' and its own synth/data_root"):
        stage_records(cfg, 1)
    cfg.stages[1].synth = None
    cfg.stages[1].data_from = "crowded"
    with pytest.raises(ValueError, match="data_from names 'crowded', which is not an earlier stage"):
        stage_records(cfg, 1)


def test_stage_question_variants_by_name_or_list_and_a_clear_error_otherwise():
    from rsground_jax.data.chat import BOX_QUESTION, ChatTemplate, box_question_variants
    from rsground_jax.train.experiment import stage_template

    t = ChatTemplate(system=None, question=BOX_QUESTION)
    assert stage_template(t, ml_collections.ConfigDict(dict(name="s"))) is t
    named = stage_template(t, ml_collections.ConfigDict(dict(name="s", question_variants="box")))
    assert named.question == BOX_QUESTION and named.question_variants == box_question_variants()
    listed = stage_template(t, ml_collections.ConfigDict(dict(name="s", question_variants=['Find "{expression}".'])))
    assert listed.questions == (BOX_QUESTION, 'Find "{expression}".')
    with pytest.raises(ValueError, match="stage s: question_variants='boxes' is not one of"):
        stage_template(t, ml_collections.ConfigDict(dict(name="s", question_variants="boxes")))
    with pytest.raises(ValueError, match="stage s: question_variants: .*must contain"):
        stage_template(t, ml_collections.ConfigDict(dict(name="s", question_variants=["Find it."])))


def test_data_seed_pins_a_stages_synthetic_scenes(tmp_path):
    import json

    cfg = _cfg(tmp_path, replay=[])
    cfg.stages[1].data_seed = 11
    stage_records(cfg, 0), stage_records(cfg, 1)
    with open(tmp_path / "data_single" / "rsground_synthetic.json") as f0, \
            open(tmp_path / "data_crowded" / "rsground_synthetic.json") as f1:
        assert json.load(f0)["seed"] == 3 and json.load(f1)["seed"] == 11  # default: config seed + index
