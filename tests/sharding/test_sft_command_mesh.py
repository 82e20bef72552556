"""`rsground sft` over a mesh, through the installed command on 4 fake CPU devices: the losses equal the
one-device run's, a run resumes on another mesh, and a mesh that does not fit is refused."""

import json
import os

import numpy as np
import pytest

from tests.reliability.conftest import TINY_SFT, assert_refused, rsground

FOUR_DEVICES = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


def _losses(workdir):
    rows = [json.loads(line) for line in open(workdir / "s" / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.slow
def test_sft_over_a_mesh_equals_one_device_and_resumes_on_another_mesh(tmp_path):
    one = rsground("sft", "--config", TINY_SFT, f"workdir={tmp_path / 'one'}", "stages.0.steps=6", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    # 3 steps with fsdp x tensor = 2 x 2, then resumed to 6 with the batch split 4 ways over data
    split = rsground("sft", "--config", TINY_SFT, f"workdir={tmp_path / 'mesh'}", "stages.0.steps=3",
                     "mesh={'fsdp': 2, 'tensor': 2}", cwd=tmp_path, env=FOUR_DEVICES)
    assert split.returncode == 0, split.stderr[-3000:]
    resumed = rsground("sft", "--config", TINY_SFT, f"workdir={tmp_path / 'mesh'}", "stages.0.steps=6", "--resume",
                       "mesh={'data': 4}", cwd=tmp_path, env=FOUR_DEVICES)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref, got = _losses(tmp_path / "one"), _losses(tmp_path / "mesh")
    assert sorted(ref) == sorted(got) == list(range(1, 7)), (ref, got)
    np.testing.assert_allclose([got[s] for s in range(1, 7)], [ref[s] for s in range(1, 7)], rtol=2e-5)

    refused = rsground("sft", "--config", TINY_SFT, f"workdir={tmp_path / 'bad'}", "mesh={'data': 3}", cwd=tmp_path,
                       env=FOUR_DEVICES)
    assert_refused(refused, "needs 3 devices", "there are 4")
    refused = rsground("sft", "--config", TINY_SFT, f"workdir={tmp_path / 'bad'}", "mesh={'data': -1}",
                       "stages.0.batch_size=6", cwd=tmp_path, env=FOUR_DEVICES)
    assert_refused(refused, "batch_size 6", "data x fsdp = 4")
    refused = rsground("sft", "--config", TINY_SFT, f"workdir={tmp_path / 'bad'}", "mesh={'pipeline': 2}", cwd=tmp_path)
    assert_refused(refused, "mesh must be")
