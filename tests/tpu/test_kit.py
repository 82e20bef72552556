"""The TPU launch kit's dry runs: every gcloud command it would run, and each worker's own commands
(`tpu/worker.sh --dry-run`). Nothing here touches a cloud."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WHERE = ["--name", "pod1", "--zone", "us-east5-a"]
LAUNCH = ["--bucket", "gs://bkt/runs/", "--run", "r7", "--command", "grpo", "--config", "configs/grpo_qwen2_5_vl_3b_dior_rsvg.py"]


def kit(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tpu" / "kit.py"), "--dry-run", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def commands(out: subprocess.CompletedProcess) -> list[list[str]]:
    assert out.returncode == 0, out.stderr
    return [shlex.split(line) for line in out.stdout.splitlines()]


def remote(cmd: list[str]) -> str:
    """The command an `ssh --worker=...` line runs on the workers."""
    return next(a for a in cmd if a.startswith("--command=")).removeprefix("--command=")


def test_create_a_vm_or_a_queued_resource():
    (vm,) = commands(kit("create", *WHERE, "--type", "v5p-64", "--spot"))
    assert vm == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod1", "--zone=us-east5-a",
                  "--accelerator-type=v5p-64", "--version=v2-alpha-tpuv5", "--spot"]
    (q,) = commands(kit("create", *WHERE, "--type", "v6e-16", "--queued", "--project", "p1"))
    assert q[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "pod1"]
    assert {"--node-id=pod1", "--project=p1", "--accelerator-type=v6e-16", "--runtime-version=v2-alpha-tpuv6e"} <= set(q)
    out = kit("create", *WHERE, "--type", "v9x-8")
    assert out.returncode != 0 and "unknown TPU family 'v9x'" in out.stderr


def test_install_data_launch_logs_and_delete_run_on_the_workers():
    (inst,) = commands(kit("install", *WHERE, "--repo", "https://example.org/rs.git", "--ref", "v1.2"))
    assert inst[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"] and "--worker=all" in inst
    script = remote(inst)
    assert "git clone https://example.org/rs.git rsground_jax" in script and "git checkout v1.2" in script
    assert "pip install -q -e . 'jax[tpu]'" in script
    (data,) = commands(kit("data", *WHERE, "--source", "gs://bkt/dior", "--dest", "dior"))
    assert remote(data) == "mkdir -p dior && gcloud storage rsync -r gs://bkt/dior dior"
    (launch,) = commands(kit("launch", *WHERE, *LAUNCH, "mesh.fsdp=-1"))
    line = remote(launch)
    assert line.startswith("cd rsground_jax && nohup bash tpu/worker.sh --run r7 --bucket gs://bkt/runs --command grpo")
    assert "mesh.fsdp=-1" in line and "--resume" not in line and line.endswith("> ~/rsground_r7.log 2>&1 < /dev/null &")
    (logs,) = commands(kit("logs", *WHERE, "--run", "r7", "--worker", "3"))
    assert "--worker=3" in logs and remote(logs) == "tail -n 200 -f ~/rsground_r7.log"
    (gone,) = commands(kit("delete", *WHERE))
    assert gone == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod1", "--zone=us-east5-a", "--quiet"]
    out = kit("launch", *WHERE, *LAUNCH[:-4], "--command", "eval", "--config", "c.py")
    assert out.returncode != 0 and "expected sft or grpo" in out.stderr


def test_resume_recreates_installs_copies_and_relaunches_with_resume():
    steps = commands(kit("resume", *WHERE, "--type", "v5p-64", "--spot", "--repo", "https://example.org/rs.git",
                         *LAUNCH, "--source", "gs://bkt/dior"))
    assert [c[4] for c in steps] == ["create", "ssh", "ssh", "ssh"]
    assert "git checkout main" in remote(steps[1]) and "gs://bkt/dior" in remote(steps[2])
    assert "--resume" in shlex.split(remote(steps[3]).split("&&", 1)[1])


def _worker(*args, home):
    out = subprocess.run(["bash", str(REPO / "tpu" / "worker.sh"), "--dry-run", *args], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "HOME": str(home)}, timeout=60)
    return out


@pytest.mark.parametrize("resume", [False, True])
def test_worker_runs_the_command_with_checkpoints_on_the_bucket(tmp_path, resume):
    out = _worker("--run", "r7", "--bucket", "gs://bkt/runs/", "--command", "sft", "--config", "c.py",
                  *(["--resume"] if resume else []), "mesh={'fsdp': -1}", home=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = [shlex.split(x[2:]) for x in out.stdout.splitlines() if x.startswith("+ ")]
    wd = f"{tmp_path}/rsground_runs/r7"
    train = next(c for c in lines if c[0] == ".venv/bin/rsground")
    assert train[:5] == [".venv/bin/rsground", "sft", "--config", "c.py", "--distributed"]
    assert {f"workdir={wd}", "checkpoint_dir=gs://bkt/runs/r7/checkpoints", f"output={wd}/export",
            "mesh={'fsdp': -1}"} <= set(train)
    assert ("--resume" in train) == resume
    pulled = ["gcloud", "storage", "rsync", "-r", "gs://bkt/runs/r7/workdir", wd]
    assert (pulled in lines) == resume and (not resume or lines.index(pulled) < lines.index(train))
    assert lines[-2:] == [["gcloud", "storage", "rsync", "-r", wd, "gs://bkt/runs/r7/workdir"],
                          ["gcloud", "storage", "rsync", "-r", f"{wd}/export", "gs://bkt/runs/r7/model"]]
    bad = _worker("--run", "r7", "--bucket", "/local", "--command", "sft", "--config", "c.py", home=tmp_path)
    assert bad.returncode == 2 and "must be a gs:// URL" in bad.stderr
