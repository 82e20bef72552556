"""GRPO of a Qwen2.5-VL-3B CoT-SFT export on DIOR-RSVG, in VLM-R1's typical settings (G = 8, beta 0.04,
lr 1e-6, temperature 1.0).

    rsground sft --config configs/qwen2_5_vl_3b_dior_rsvg.py init=/path/to/Qwen2.5-VL-3B-Instruct
    rsground grpo --config configs/grpo_qwen2_5_vl_3b_dior_rsvg.py

Prompts, pixel budget and answer style are the CoT-SFT export's own (its rsground_prompt.json).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init = "runs/qwen2_5_vl_3b_dior_rsvg/model"  # the CoT-SFT export
    c.reference = ""  # the KL reference: init itself
    c.tokenizer = ""
    c.compute_dtype = "bfloat16"
    c.remat = "full"
    c.workdir = "runs/grpo_qwen2_5_vl_3b_dior_rsvg"
    c.output = "runs/grpo_qwen2_5_vl_3b_dior_rsvg/model"
    c.data = ml_collections.ConfigDict(dict(synth=None, data_root="data/DIOR-RSVG", data_format="dior_rsvg", prompts=0))
    c.steps = 1000
    c.batch_size = 64  # completions per micro-batch: 8 prompts x 8 generations
    c.accum_steps = 2
    c.lr = 1e-6
    c.warmup_steps = 0
    c.end_lr_fraction = 1.0
    c.freeze_vision = True
    c.clip_norm = 1.0
    c.max_prompt_length = 1024  # 841 image tokens at the default pixel budget, plus the chat
    c.grpo = ml_collections.ConfigDict(dict(
        num_generations=8, num_iterations=1, beta=0.04, epsilon=0.2, epsilon_high=None, kl_estimator="k3",
        loss_agg_mode="seq-mean-token-mean", scale_rewards="group", temperature=1.0, top_k=0, top_p=1.0,
        max_new_tokens=256, dynamic_sampling=False, dynamic_sampling_oversample=2, mask_truncated_completions=True))
    c.rewards = ml_collections.ConfigDict(dict(format=0.5, iou=1.0))
    c.reward_options = ml_collections.ConfigDict()
    c.coherence = ml_collections.ConfigDict(dict(enabled=False, kind="target_pairwise_iou", min_weight=0.5))
    c.eval_images = 500
    c.mesh = None  # one device; on 8 accelerators e.g. dict(fsdp=-1): policy, reference and prompts split (docs/sharding.md)
    c.checkpoint_dir = ""  # under the workdir; on a TPU pod gs://BUCKET/RUN (tpu/)
    c.log_every = 1
    c.checkpoint_every = 50
    c.keep_checkpoints = 3
    return c
