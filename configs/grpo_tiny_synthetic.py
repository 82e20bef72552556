"""GRPO of the demo's CoT-SFT model on synthetic crowded scenes (the tiny setting, a few minutes on a CPU).

    rsground sft --config configs/demo_cot_sft.py        # writes runs/demo_cot_sft/model
    rsground grpo --config configs/grpo_tiny_synthetic.py
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init = "runs/demo_cot_sft/model"  # a CoT-SFT export: weights, tokenizer, rsground_prompt.json
    c.reference = ""  # the KL reference: init itself
    c.tokenizer = ""  # init's own
    c.workdir = "runs/grpo_tiny"
    c.output = "runs/grpo_tiny/model"
    c.data = ml_collections.ConfigDict(dict(synth=dict(preset="demo"), num_images=2000, prompts=0))
    c.steps = 300
    c.batch_size = 64  # completions per step: 8 prompts x 8 generations
    c.accum_steps = 1
    c.lr = 1e-4  # 3e-4 drifts on the full set (docs/grpo.md); the 8-prompt learning test uses it
    c.warmup_steps = 0
    c.end_lr_fraction = 1.0  # constant
    c.freeze_vision = True  # as in the demo's CoT-SFT
    c.clip_norm = 1.0
    c.max_prompt_length = 96
    c.grpo = ml_collections.ConfigDict(dict(
        num_generations=8, num_iterations=1, beta=0.04, epsilon=0.2, epsilon_high=None, kl_estimator="k3",
        loss_agg_mode="seq-mean-token-mean", scale_rewards="group", temperature=1.0, top_k=0, top_p=1.0,
        max_new_tokens=48, dynamic_sampling=False, dynamic_sampling_oversample=2, mask_truncated_completions=False,
        greedy_rollouts=0, sft_coef=0.0, box_temperature=None))
    c.rewards = ml_collections.ConfigDict(dict(format=0.25, iou=1.0))
    c.reward_options = ml_collections.ConfigDict()
    c.coherence = ml_collections.ConfigDict(dict(enabled=False, kind="target_pairwise_iou", min_weight=0.5))
    c.eval_images = 200
    c.mesh = None  # one device; mesh={"data": -1} splits the prompts over every device (docs/sharding.md)
    c.log_every = 10
    c.checkpoint_every = 50
    c.keep_checkpoints = 3
    return c
