"""`rsground sft` over a mesh and over two processes (`jax.distributed`, gloo CPU collectives, 2 fake CPU
devices each), through the installed command: the losses equal the one-device run's, the run resumes on both
processes over another mesh with its checkpoints kept apart (`checkpoint_dir`), the export equals the
one-device run's, the validation split over the two processes scores what one device scores, and meshes or batches that do not fit are refused (`rsground grpo`: test_grpo_multihost.py)."""

import json
import os
import socket
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.reliability.conftest import RSGROUND, TINY_SFT, assert_refused, rsground



FOUR_DEVICES = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


def _losses(workdir, stage="s", key="loss"):
    rows = [json.loads(line) for line in open(workdir / stage / "metrics.jsonl")]
    return {r["step"]: r[key] for r in rows if key in r}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(tmp_path, *args, command=("sft", "--config", TINY_SFT), timeout=300):
    """The same `rsground` command on two processes (ids from the environment, as on a pod's hosts)."""
    port = _free_port()
    procs, logs = [], []
    for pid in range(2):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
               "RSGROUND_COORDINATOR": f"127.0.0.1:{port}", "RSGROUND_NUM_PROCESSES": "2", "RSGROUND_PROCESS_ID": str(pid)}
        logs.append(tmp_path / f"p{pid}-{len(list(tmp_path.glob('p*.log')))}.log")
        procs.append(subprocess.Popen([str(RSGROUND), *map(str, command), *map(str, args)], cwd=tmp_path,
                                      env=env, stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return codes, [log.read_text() for log in logs]


@pytest.mark.slow
def test_sft_over_two_processes_equals_one_device_and_resumes_on_another_mesh(tmp_path):
    one = rsground("sft", "--config", TINY_SFT, f"workdir={tmp_path / 'one'}", f"output={tmp_path / 'one_model'}",
                   "stages.0.steps=4", "eval_images=7", cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    ref = _losses(tmp_path / "one")
    assert sorted(ref) == [1, 2, 3, 4], ref

    # two processes, 2 fake devices each: 2 steps over data x fsdp = 2 x 2 with the checkpoints kept apart from
    # the workdir (`checkpoint_dir`, as a pod keeps them on gs://), then resumed on both processes to 4 steps
    # over another mesh (data = 4), with the export
    ckpt = tmp_path / "ckpt"
    codes, logs = _two_processes(tmp_path, f"workdir={tmp_path / 'two'}", "stages.0.steps=2",
                                 "mesh={'data': 2, 'fsdp': 2}", f"checkpoint_dir={ckpt}")
    assert codes == [0, 0], "\n\n".join(x[-3000:] for x in logs)
    assert (ckpt / "s" / "2").is_dir() and not (tmp_path / "two" / "s" / "checkpoints").exists()
    # the checkpoint holds both processes' data positions (each reads its own block of every batch)
    saved = json.loads((ckpt / "s" / "2" / "data" / "metadata").read_text())
    assert len(saved["processes"]) == 2 and saved["processes"][0] != saved["processes"][1]
    # the resumed run evaluates too: each process decodes its block of the 7 validation records (3 and 4)
    codes, logs = _two_processes(tmp_path, f"workdir={tmp_path / 'two'}", f"output={tmp_path / 'two_model'}",
                                 "stages.0.steps=4", "mesh={'data': 4}", f"checkpoint_dir={ckpt}", "eval_images=7",
                                 "--resume")
    assert codes == [0, 0], "\n\n".join(x[-3000:] for x in logs)
    assert (ckpt / "s" / "4").is_dir()
    got = _losses(tmp_path / "two")
    assert sorted(got) == [1, 2, 3, 4], got
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [ref[s] for s in range(1, 5)], rtol=2e-5)
    # one exported model, written by process 0 from the parameters both processes hold pieces of. Adam moves
    # every weight by up to lr = 1e-3 a step whatever its gradient's size, so float noise in a near-zero
    # gradient shows as up to about 1e-5 after 4 steps; 4e-5 is 1/100 of the largest possible move (a lost shard
    # or a missed update is off by 1e-3)
    a, b = load_file(tmp_path / "one_model" / "model.safetensors"), load_file(tmp_path / "two_model" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=4e-5, err_msg=k)
    # the validation metrics gathered from both processes' blocks are the one-device run's over all 7 records
    val_one = json.loads((tmp_path / "one" / "report.json").read_text())["stages"][0]["val"]
    val_two = json.loads((tmp_path / "two" / "report.json").read_text())["stages"][0]["val"]
    assert val_two["num_samples"] == val_one["num_samples"] == 7
    assert val_two == pytest.approx(val_one, abs=1e-6)
    # every record decoded once, by one of the processes, to the text the one-device model gives (greedy decoding
    # of weights equal to 4e-5 could flip a near tie of the random tiny model's logits: one record may differ)
    pred_one, pred_two = ({(os.path.basename(r["image"]), r["expression"]): r["text"]
                           for r in map(json.loads, open(d / "s" / "val_predictions.jsonl"))}
                          for d in (tmp_path / "one", tmp_path / "two"))
    assert len(pred_one) == 7 and pred_two.keys() == pred_one.keys()
    assert sum(pred_two[k] == pred_one[k] for k in pred_one) >= 6

    refused = rsground("sft", "--config", TINY_SFT, f"workdir={tmp_path / 'bad'}", "mesh={'data': 3}", cwd=tmp_path,
                       env=FOUR_DEVICES)
    assert_refused(refused, "needs 3 devices", "there are 4")
    refused = rsground("sft", "--config", TINY_SFT, f"workdir={tmp_path / 'bad'}", "mesh={'data': -1}",
                       "stages.0.batch_size=6", cwd=tmp_path, env=FOUR_DEVICES)
    assert_refused(refused, "batch_size 6", "data x fsdp = 4")
    refused = rsground("sft", "--config", TINY_SFT, f"workdir={tmp_path / 'bad'}", "mesh={'pipeline': 2}", cwd=tmp_path)
    assert_refused(refused, "mesh must be")
    refused = rsground("sft", "--config", TINY_SFT, f"workdir={tmp_path / 'bad'}", "--coordinator", "127.0.0.1:1",
                       cwd=tmp_path)
    assert_refused(refused, "--coordinator needs --num-processes")

