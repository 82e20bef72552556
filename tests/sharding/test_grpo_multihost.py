"""`rsground grpo` as one job over two processes (`jax.distributed`, 2 fake CPU devices each) equals the
one-device run, through the installed command."""

import numpy as np
import pytest

from tests.reliability.conftest import REPO, rsground
from tests.sharding.test_sft_command_mesh import _losses, _two_processes

TINY_GRPO = REPO / "tests" / "reliability" / "tiny_grpo.py"


@pytest.mark.slow
def test_grpo_over_two_processes_equals_one_device(tmp_path):
    """`rsground grpo` as one job over two processes (4 prompts x 4 generations a step, each host feeding 2
    prompts and running the tower over its own images): rollouts, rewards and losses equal the one-device run."""
    grpo = ("grpo", "--config", TINY_GRPO)
    settings = ("steps=2", "batch_size=16", "data.prompts=8")
    one = rsground(*grpo, f"workdir={tmp_path / 'one'}", *settings, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    codes, logs = _two_processes(tmp_path, f"workdir={tmp_path / 'two'}", *settings, "mesh={'data': 2, 'fsdp': 2}",
                                 command=grpo)
    assert codes == [0, 0], "\n\n".join(x[-3000:] for x in logs)
    for key in ("loss", "reward", "rollout_iou", "completion_length", "kl"):
        ref, got = _losses(tmp_path / "one", "grpo", key), _losses(tmp_path / "two", "grpo", key)
        assert sorted(ref) == sorted(got) == [1, 2], (key, ref, got)
        np.testing.assert_allclose([got[1], got[2]], [ref[1], ref[2]], rtol=1e-4, atol=1e-6, err_msg=key)
