"""The smallest real GRPO experiment, for the fault tests: the tiny CoT-SFT fixture on 2 fixed synthetic
prompts x 4 generations, every step logged, a checkpoint every 2 steps.

    rsground grpo --config tests/reliability/tiny_grpo.py workdir=W
"""

from pathlib import Path

import ml_collections

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "cot_sft_tiny"


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init = str(FIXTURE)
    c.reference = ""
    c.tokenizer = ""
    c.workdir = "runs/tiny_grpo"
    c.output = ""
    c.data = ml_collections.ConfigDict(dict(synth=dict(preset="demo"), num_images=12, prompts=4))
    c.steps = 10
    c.batch_size = 8  # 2 prompts x 4 generations
    c.accum_steps = 1
    c.lr = 3e-4
    c.warmup_steps = 0
    c.end_lr_fraction = 1.0
    c.freeze_vision = True
    c.clip_norm = 1.0
    c.max_prompt_length = 96
    c.grpo = ml_collections.ConfigDict(dict(
        num_generations=4, num_iterations=1, beta=0.04, epsilon=0.2, epsilon_high=None, kl_estimator="k3",
        loss_agg_mode="seq-mean-token-mean", scale_rewards="group", temperature=1.0, top_k=0, top_p=1.0,
        max_new_tokens=40, dynamic_sampling=False, dynamic_sampling_oversample=2, mask_truncated_completions=False))
    c.rewards = ml_collections.ConfigDict(dict(format=0.25, iou=1.0, positional=0.5))
    c.reward_options = ml_collections.ConfigDict()
    c.coherence = ml_collections.ConfigDict(dict(enabled=True, kind="pairwise_iou", min_weight=0.5))
    c.eval_images = 0
    c.mesh = None  # one device; `mesh={...}` splits it (tests/sharding)
    c.log_every = 1
    c.checkpoint_every = 2
    c.keep_checkpoints = 2
    return c
