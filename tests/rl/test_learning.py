"""The engine learns: `rsground grpo` from the tiny CoT-SFT fixture, on a fixed set of 8 synthetic prompts,
raises the rollouts' IoU and Pr@0.5 clearly within 30 steps (the installed command, as users run it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # about 90 s on 2 cores
def test_grpo_raises_rollout_iou_and_pr_on_8_fixed_prompts(tmp_path):
    w = tmp_path / "w"
    cmd = [str(Path(sys.executable).parent / "rsground"), "grpo", "--config", str(REPO / "configs" / "grpo_tiny_synthetic.py"),
           f"init={REPO / 'tests' / 'fixtures' / 'cot_sft_tiny'}", f"workdir={w}", "output=", "eval_images=0",
           "data.num_images=40", "data.prompts=8", "lr=3e-4", "steps=30", "log_every=1", "checkpoint_every=30"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (w / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows] == list(range(1, 31))
    iou = np.array([x["rollout_iou"] for x in rows])
    pr = np.array([x["rollout_pr@0.5"] for x in rows])
    first, last = slice(0, 5), slice(-5, None)
    print(f"rollout IoU {iou[first].mean():.3f} -> {iou[last].mean():.3f}, Pr@0.5 {pr[first].mean():.3f} -> "
          f"{pr[last].mean():.3f}")
    assert iou[last].mean() >= iou[first].mean() + 0.08
    assert pr[last].mean() >= pr[first].mean() + 0.1
    assert all(np.isfinite([x["loss"] for x in rows])) and rows[-1]["kl"] > 0
