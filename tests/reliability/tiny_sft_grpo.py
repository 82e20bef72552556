"""A two-stage experiment, CoT-SFT then GRPO from the model it leaves (`task="grpo"`), at the smallest size:
the tiny CoT-SFT fixture, 12 synthetic scenes, a few steps each.

    rsground sft --config tests/reliability/tiny_sft_grpo.py workdir=W
"""

from pathlib import Path

import ml_collections

from rsground_jax.data.chat import DEFAULT_QUESTION

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "cot_sft_tiny"


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init = str(FIXTURE)
    c.tokenizer = ""
    c.workdir = "runs/tiny_sft_grpo"
    c.output = ""
    c.max_pixels = 112 * 112
    c.template_system = ""
    c.template_question = DEFAULT_QUESTION
    c.answer_style = "brief_cot"
    c.length_bucket = 192
    c.eval_images = 4
    c.max_new_tokens = 40
    c.log_every = 1
    c.checkpoint_every = 2
    c.keep_checkpoints = 2

    sft = ml_collections.ConfigDict(dict(
        name="cot_sft", synth=dict(preset="demo"), num_images=12, steps=2, batch_size=4, lr=1e-4, warmup_steps=0,
        freeze_vision=True, length_buckets=[192]))
    grpo = ml_collections.ConfigDict(dict(
        name="grpo", task="grpo", data_from="cot_sft", steps=3, batch_size=8, lr=3e-4, freeze_vision=True,
        max_prompt_length=96,
        grpo=dict(num_generations=4, beta=0.04, temperature=1.0, max_new_tokens=40),
        rewards=dict(format=0.25, iou=1.0, positional=0.5),
        coherence=dict(enabled=True, kind="target_pairwise_iou", min_weight=0.5)))
    c.stages = [sft, grpo]
    return c
