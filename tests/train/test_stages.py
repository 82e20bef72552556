"""The stage registry of experiment configs: typed stage configs for every `task`, and a two-stage experiment,
CoT-SFT then GRPO from the model it leaves, run through the installed `rsground sft`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rsground_jax.configs import load_config
from rsground_jax.rl.experiment import GRPOStage
from rsground_jax.train.experiment import STAGES, SFTStage, VisionStage, stage_kind

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests" / "reliability" / "tiny_sft_grpo.py"


def test_every_task_has_a_typed_stage_config():
    assert set(STAGES) == {"sft", "vision", "grpo"}
    assert stage_kind("sft") is SFTStage and stage_kind("vision") is VisionStage and stage_kind("grpo") is GRPOStage
    cfg = load_config(str(CONFIG), ["stages.1.grpo.temperature=0.7"])
    sft = SFTStage.from_config(cfg.stages[0], cfg, 0)
    grpo = GRPOStage.from_config(cfg.stages[1], cfg, 1)
    assert (sft.name, sft.steps, sft.batch_size, sft.seed, sft.length_buckets, sft.freeze_vision) == \
        ("cot_sft", 2, 4, 0, (192,), True)
    assert (grpo.name, grpo.steps, grpo.batch_size, grpo.seed, grpo.max_prompt_length) == ("grpo", 3, 8, 1, 96)
    assert grpo.grpo.temperature == 0.7 and grpo.grpo.num_generations == 4
    assert dict(grpo.rewards) == {"format": 0.25, "iou": 1.0, "positional": 0.5}
    assert grpo.coherence and grpo.coherence_min_weight == 0.5
    assert grpo.log_every == 1 and grpo.checkpoint_every == 2  # the experiment's intervals


def test_sft_then_grpo_in_one_experiment(tmp_path):
    work = tmp_path / "w"
    out = subprocess.run([str(Path(sys.executable).parent / "rsground"), "sft", "--config", str(CONFIG), f"workdir={work}", f"output={tmp_path / 'model'}"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((work / "report.json").read_text())
    sft, grpo = report["stages"]
    assert sft["stage"] == "cot_sft" and grpo["stage"] == "grpo" and grpo["task"] == "grpo"
    assert grpo["val"]["num_samples"] == 4 and not grpo["preempted"]
    rows = [json.loads(line) for line in (work / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:  # rollouts were scored on device with every configured reward and the coherence weight
        assert 0 <= r["reward/iou"] <= 1 and 0 <= r["reward/positional"] <= 1 and 0.5 <= r["coherence_weight"] <= 1
    # the GRPO stage started from the SFT stage's model: its first rollouts sample that model (KL ~ 0 at step 1)
    assert rows[0]["kl"] < 1e-3
    assert (tmp_path / "model" / "model.safetensors").is_file()
