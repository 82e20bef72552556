"""Multi-host settings and mesh layouts, without starting processes (the 2-process run itself:
test_sft_command_mesh.py)."""

import types

import numpy as np
import pytest

from rsground_jax.distributed import DistributedError, DistributedSettings
from rsground_jax.sharding import MESH_AXES, MeshError, check_process_layout


def test_settings_from_flags_or_environment():
    s = DistributedSettings.resolve("10.0.0.2:1234", 4, 3, env={})
    assert (s.enabled, s.coordinator, s.num_processes, s.process_id) == (True, "10.0.0.2:1234", 4, 3)
    env = {"RSGROUND_COORDINATOR": "h:9", "RSGROUND_NUM_PROCESSES": "2", "RSGROUND_PROCESS_ID": "1"}
    assert DistributedSettings.resolve(env=env) == DistributedSettings("h:9", 2, 1)
    assert DistributedSettings.resolve(process_id=0, env=env).process_id == 0  # a flag wins
    assert DistributedSettings.resolve(env={"RSGROUND_DISTRIBUTED": "1"}).auto
    assert not DistributedSettings.resolve(env={}).enabled


@pytest.mark.parametrize("kwargs, env, words", [
    (dict(coordinator="h:1"), {}, "needs --num-processes"),
    (dict(coordinator="h:1", num_processes=2, process_id=2), {}, "not in [0, 2)"),
    (dict(num_processes=2, process_id=0), {}, "need --coordinator"),
    ({}, {"RSGROUND_COORDINATOR": "h:1", "RSGROUND_NUM_PROCESSES": "two", "RSGROUND_PROCESS_ID": "0"}, "not a int"),
])
def test_settings_refused(kwargs, env, words):
    with pytest.raises(DistributedError, match=words.replace("[", r"\[").replace(")", r"\)")):
        DistributedSettings.resolve(**kwargs, env=env)


def _mesh(shape, devices_per_process):
    """A stand-in mesh over fake devices numbered in order, `devices_per_process` to a process."""
    n = int(np.prod(shape))
    devs = np.array([types.SimpleNamespace(id=i, process_index=i // devices_per_process) for i in range(n)])
    return types.SimpleNamespace(devices=devs.reshape(shape), shape=dict(zip(MESH_AXES, shape)))


def test_process_layout_gives_each_host_whole_batch_shards():
    for shape in ((2, 2, 1), (1, 4, 1), (4, 1, 2), (2, 2, 2)):  # 2 processes
        check_process_layout(_mesh(shape, int(np.prod(shape)) // 2), processes=2)
    # tensor 4 over 2 hosts of 2 devices: one batch shard would span both hosts
    with pytest.raises(MeshError, match="whole batch shards"):
        check_process_layout(_mesh((1, 1, 4), 2), processes=2)
    # data x fsdp = 2 over 4 hosts: a host would hold part of a shard
    with pytest.raises(MeshError, match="whole batch shards"):
        check_process_layout(_mesh((2, 1, 2), 1), processes=4)
