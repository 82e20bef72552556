"""`rsground demo` at the smallest size, through the installed command: CoT-SFT then the GRPO stage, the
'after GRPO' row overall and by cue, the GRPO model's predictions and pictures. (Reruns of a demo workdir are
covered by tests/reliability; the GRPO stage resumes through the same loop as `rsground grpo`.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RSGROUND = Path(sys.executable).parent / "rsground"


def _demo(work):
    return subprocess.run([str(RSGROUND), "demo", "--workdir", str(work), "--num-images", "60", "--steps", "6",
                           "--grpo-steps", "2", "--eval-images", "12"], capture_output=True, text=True, timeout=600)


def test_demo_runs_a_grpo_stage_after_cot_sft(tmp_path):
    work = tmp_path / "demo"
    out = _demo(work)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((work / "demo_results.json").read_text())
    assert list(res["results"])[-2:] == ["after CoT-SFT", "after GRPO"]
    assert res["grpo"]["steps"] == 2 and res["grpo"]["rewards"] == {"format": 0.25, "positional": 1.0}
    assert res["grpo"]["coherence"] == "target_pairwise_iou"
    assert "after GRPO" in res["by_cue"] and "after GRPO" in out.stdout and "one seed, no spread" in out.stdout
    rows = [json.loads(line) for line in (work / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2 and "reward/positional" in rows[-1] and "coherence_weight" in rows[-1]
    preds = (work / "grpo_predictions.jsonl").read_text().splitlines()
    assert len(preds) == res["results"]["after GRPO"]["num_samples"] and (work / "grpo_predictions.png").is_file()
