"""`kill -9` at random points of `rsground grpo` (after random steps and inside a checkpoint save), SIGTERM, then
`--resume`: 4 of 4 stopped runs resume to exactly the uninterrupted run's rewards, losses and rollout IoU, each
step in the metrics once. Through the installed command."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from .conftest import CASES, REPO, assert_refused, kill9, metrics_steps, rsground, start, wait_for

TINY_GRPO = REPO / "tests" / "reliability" / "tiny_grpo.py"
STEPS = 14
GRPO = ["grpo", "--config", TINY_GRPO, f"steps={STEPS}"]
KEYS = ("loss", "reward", "rollout_iou", "kl", "grad_norm", "completion_length", "coherence_weight")


def _rows(path: Path) -> dict[int, dict]:
    return {r["step"]: {k: r[k] for k in KEYS} for r in map(json.loads, path.read_text().splitlines())}


def _last(metrics: Path) -> int:
    return max(metrics_steps(metrics), default=0)


@pytest.mark.slow  # about 70 s: six processes that each start JAX (the compilation cache spares the compiles)
def test_kill_9_at_random_points_then_resume_reproduces_the_uninterrupted_grpo_run(tmp_path, rng):
    ref = tmp_path / "ref"
    r = rsground(*GRPO, f"workdir={ref}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    want = _rows(ref / "grpo" / "metrics.jsonl")
    assert sorted(want) == list(range(1, STEPS + 1))
    assert len({row["reward"] for row in want.values()}) > 1  # the rollouts differ step to step

    w = tmp_path / "w"
    args = [*GRPO, f"workdir={w}"]
    metrics = w / "grpo" / "metrics.jsonl"
    ckpts = w / "grpo" / "checkpoints"
    stops = []
    p = start(*args, cwd=tmp_path, log=tmp_path / "first.log")
    for i, how in enumerate(["step", "save", "SIGTERM", "step"]):
        if i:
            p = start(*args, "--resume", cwd=tmp_path, log=tmp_path / f"{i}.log")
        if how == "save":
            wait_for(lambda: ckpts.is_dir() and any("tmp" in c.name for c in ckpts.iterdir()), 120,
                     "a checkpoint save", p, poll=0.001)
        else:
            target = _last(metrics) + int(rng.integers(1, 3))
            assert target < STEPS, "the test ran out of steps to stop at"
            wait_for(lambda: _last(metrics) >= target, 120, f"step {target}", p)
            time.sleep(rng.uniform(0, 0.3))
        if how == "SIGTERM":
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=60) == 3, f"SIGTERM: exit {p.returncode}"
            assert str(_last(metrics)) in {c.name for c in ckpts.iterdir()}  # saved where it stopped
            stops.append(f"SIGTERM after step {_last(metrics)}, saved, exit 3")
        else:
            kill9(p)
            stops.append(f"kill -9 {'in a checkpoint save' if how == 'save' else 'after'} step {_last(metrics)}")
    r = rsground(*args, "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    print("stops:", "; ".join(stops))
    assert sum(s.startswith("kill -9") for s in stops) == 3
    assert metrics_steps(metrics) == list(range(1, STEPS + 1))  # each step once
    assert _rows(metrics) == want  # exactly the uninterrupted run's rewards and losses
    run = json.loads((ckpts / str(STEPS) / "run" / "metadata").read_text())  # where the reference came from
    assert run["reference"] == str(REPO / "tests" / "fixtures" / "cot_sft_tiny")
    # another config on --resume is refused (the rollouts would differ from the recorded ones)
    assert_refused(rsground(*args, "--resume", "grpo.temperature=0.7", cwd=tmp_path), str(w),
                   "grpo.temperature: 1.0 then, 0.7 now")
    CASES["faults"] += len(stops)
