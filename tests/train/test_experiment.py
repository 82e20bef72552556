"""Stage data of an SFT experiment config: replay of an earlier stage's training records, and data_from."""

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
