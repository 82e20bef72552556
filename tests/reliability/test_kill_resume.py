"""`kill -9` anywhere in `rsground sft`, then `--resume`: the same losses as a run never stopped, each step in the
metrics once, the same synthetic data; a second run on a busy workdir is refused and a killed run's lock is not
in the way. SIGTERM and Ctrl-C save and stop with status 3. All through the installed command."""

from __future__ import annotations

import filecmp
import json
import signal
import time

import pytest

from rsground_jax.models.model_dir import missing_parts

from .conftest import (CASES, TINY_SFT, assert_refused, kill9, metrics_losses, metrics_steps, rsground, snapshot,
                       start, wait_for)

STEPS = 16  # tiny_sft.py's
# 300 scenes: rendering them takes about a second, long enough to be caught half-way.
SFT = ["sft", "--config", TINY_SFT, "stages.0.num_images=300"]


def _same_tree(a, b) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The run never stopped: its losses and its data folder."""
    d = tmp_path_factory.mktemp("reference")
    r = rsground(*SFT, f"workdir={d / 'w'}", cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = metrics_losses(d / "w" / "s" / "metrics.jsonl")
    assert sorted(losses) == list(range(1, STEPS + 1)) and losses[STEPS] < losses[1]
    assert any(f.name.startswith("events.out.tfevents") for f in (d / "w" / "s" / "tb").iterdir())
    kept = sorted(int(c.name) for c in (d / "w" / "s" / "checkpoints").iterdir() if c.name.isdigit())
    assert kept == [15, 16]  # every 3 steps, the last 2 kept; the final step is always saved
    return losses, d / "w" / "data_s"


def _last(metrics) -> int:
    return max(metrics_steps(metrics), default=0)


@pytest.mark.slow  # about 90 s: eight processes that each start JAX (the compilation cache spares most compiles)
def test_kill_9_sigterm_and_ctrl_c_anywhere_then_resume_reproduces_the_uninterrupted_run(tmp_path, reference, rng):
    ref_losses, ref_data = reference
    w = tmp_path / "w"
    args = [*SFT, f"workdir={w}"]
    metrics = w / "s" / "metrics.jsonl"
    ckpts = w / "s" / "checkpoints"
    stops = []

    def resume(name):
        return start(*args, "--resume", cwd=tmp_path, log=tmp_path / f"{name}.log")

    def after_a_random_step(p):
        target = _last(metrics) + int(rng.integers(1, 3))  # one or two steps on, never the last
        assert target < STEPS, "the test ran out of steps to stop at"
        wait_for(lambda: _last(metrics) >= target, 120, f"step {target}", p)
        time.sleep(rng.uniform(0, 0.05))

    # kill -9 in the middle of writing the synthetic scenes
    p = start(*args, cwd=tmp_path, log=tmp_path / "synthesis.log")
    partial = w / ".data_s.partial" / "Annotations"
    wait_for(lambda: partial.is_dir() and len(list(partial.glob("*.xml"))) >= 30, 120, "a tenth of the scenes", p)
    kill9(p)
    stops.append(f"kill -9 in synthesis ({len(list(partial.glob('*.xml')))} of 300 scenes written)")
    assert not (w / "data_s").exists()  # no half-written dataset under the final name

    # kill -9 while a checkpoint is written; before that, a second run on the busy workdir is refused
    p = resume("save")
    wait_for(lambda: f"pid {p.pid}:" in (w / "rsground.lock").read_text(), 60, "the workdir lock", p)
    assert_refused(rsground(*args, "--resume", cwd=tmp_path), str(w), "in use by another run", f"pid {p.pid}",
                   "rsground sft")
    wait_for(lambda: ckpts.is_dir() and any("tmp" in c.name for c in ckpts.iterdir()), 120, "a checkpoint save", p,
             poll=0.001)
    kill9(p)
    stops.append(f"kill -9 in the checkpoint save after step {_last(metrics)}")

    for name in ("SIGTERM", "kill", "SIGINT", "kill"):
        p = resume(name)
        after_a_random_step(p)
        if name == "kill":
            kill9(p)
            stops.append(f"kill -9 after step {_last(metrics)}")
            continue
        p.send_signal(getattr(signal, name))
        assert p.wait(timeout=60) == 3, f"{name}: exit {p.returncode}"
        log = (tmp_path / f"{name}.log").read_text()
        assert "Traceback" not in log and f"{name} received" in log
        assert str(_last(metrics)) in {c.name for c in ckpts.iterdir()}  # saved at the step it stopped at
        stops.append(f"{name} after step {_last(metrics)}, saved, exit 3")

    # The last resume finishes (the killed runs' lock file is no obstacle) and exports a complete model folder.
    model = tmp_path / "model"
    r = rsground(*args, "--resume", f"output={model}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert missing_parts(model) == [] and json.loads((model / "RECIPE.json").read_text())["workdir"] == str(w)
    print("stops:", "; ".join(stops))
    assert sum(s.startswith("kill -9") for s in stops) == 4
    assert metrics_steps(metrics) == list(range(1, STEPS + 1))  # each step once
    assert metrics_losses(metrics) == ref_losses  # exactly the uninterrupted run's losses
    assert _same_tree(w / "data_s", ref_data)  # the resumed synthesis wrote the same files
    # A finished run: a fresh start on its workdir is refused, and so is a resume that would need other data.
    assert_refused(rsground(*args, cwd=tmp_path), str(w), "holds an earlier sft run", "--resume")
    assert_refused(rsground(*args, "--resume", "stages.0.num_images=200", cwd=tmp_path), str(w),
                   "stages.0.num_images: 300 then, 200 now")
    # Resumed again, it has nothing to train and keeps its export; with more steps, the export would be stale.
    before = snapshot(model)
    again = rsground(*args, "--resume", f"output={model}", cwd=tmp_path)
    assert again.returncode == 0 and "already holds this run's export" in again.stdout, again.stderr[-3000:]
    assert_refused(rsground(*args, "--resume", f"output={model}", f"stages.0.steps={STEPS + 2}", cwd=tmp_path),
                   str(model), "holds this workdir's export from before", f"s: step {STEPS} of {STEPS + 2}")
    assert snapshot(model) == before
    CASES["faults"] += len(stops)
