"""The method's ladder on the demo's synthetic benchmark, over seeds: CoT-SFT, then GRPO with the IoU reward,
with the positional reward, with the positional reward and spatial-consistency weighting, and the published
GIoU and DIoU rewards in its place. Everything but the named change is equal within a seed.

    rsground ablate --config configs/ablation_demo.py [--seeds 3]

Per seed (0, 1, 2, ...): one CoT-SFT run from the packaged base (what `rsground demo` trains, cached), then
every variant's GRPO from it. Scored on the test expressions whose target shares its category with another
object (the demo's), overall and by cue; the table, plots and per-run results go to the workdir.
"""

import ml_collections

from rsground_jax.data.chat import DEFAULT_QUESTION

REWARD_IOU = dict(format=0.25, iou=1.0)
REWARD_POSITIONAL = dict(format=0.25, positional=1.0)
CONSISTENCY = dict(enabled=True, kind="target_pairwise_iou", min_weight=0.5)


def get_config():
    c = ml_collections.ConfigDict()
    c.workdir = "runs/ablation_demo"
    # the benchmark: the demo's synthetic set (same preset, size and seed as `rsground demo`)
    c.data = ml_collections.ConfigDict(dict(preset="demo", num_images=2000, data_seed=1234))
    c.eval_records = 800  # test expressions scored at most (the demo's --eval-images)
    # what the runs are scored on: a fresh test set of the same preset drawn with another seed (every image a
    # test image, all its expressions that share a category: about 7,000, against the split's 694, so one seed's
    # difference is known about 3x more precisely); num_images=0 scores the split above instead
    c.test_data = ml_collections.ConfigDict(dict(num_images=2000, data_seed=4321))

    # CoT-SFT, one run per seed (an `rsground sft` experiment; the runner sets seed, workdir, output, data_root)
    s = ml_collections.ConfigDict()
    s.init, s.tokenizer, s.compute_dtype, s.remat = "base", "small", "float32", "none"
    s.max_pixels = 112 * 112
    s.template_system, s.template_question, s.answer_style = "", DEFAULT_QUESTION, "brief_cot"
    s.length_bucket, s.eval_images, s.max_new_tokens = 192, 0, 96
    s.log_every, s.checkpoint_every, s.keep_checkpoints = 50, 300, 2
    s.stages = [ml_collections.ConfigDict(dict(
        name="cot_sft", steps=1800, batch_size=16, lr=1e-3, warmup_steps=20, freeze_vision=True,
        length_buckets=[128, 192]))]
    c.sft = s

    # GRPO from each seed's CoT-SFT model (an `rsground grpo` config; the runner sets seed, init, workdir,
    # output and data); each variant below replaces some of these keys
    g = ml_collections.ConfigDict()
    g.reference, g.tokenizer = "", ""
    # the recipe that held or raised CoT-SFT's greedy scores in the trials of docs/method.md (32 prompts a
    # step at 5e-5); 8 prompts at 1e-4, the first recipe, lowered every variant's Pr@0.5 on seed 0
    g.steps = 300
    g.batch_size = 256  # completions: 32 prompts x 8 generations
    g.accum_steps, g.lr, g.warmup_steps, g.end_lr_fraction = 1, 5e-5, 0, 1.0
    g.freeze_vision, g.clip_norm, g.max_prompt_length = True, 1.0, 96
    g.grpo = ml_collections.ConfigDict(dict(
        num_generations=8, num_iterations=1, beta=0.04, epsilon=0.2, epsilon_high=None, kl_estimator="k3",
        loss_agg_mode="seq-mean-token-mean", scale_rewards="group", temperature=1.0, top_k=0, top_p=1.0,
        max_new_tokens=48, dynamic_sampling=False, dynamic_sampling_oversample=2, mask_truncated_completions=False))
    g.rewards = ml_collections.ConfigDict(REWARD_IOU)
    g.reward_options = ml_collections.ConfigDict()
    g.coherence = ml_collections.ConfigDict(dict(enabled=False, kind="target_pairwise_iou", min_weight=0.5))
    g.eval_images = 0
    g.log_every, g.checkpoint_every, g.keep_checkpoints = 5, 50, 2
    c.grpo = g

    # The ladder, in order (each rung is compared with the one before it), then the published alternatives.
    c.variants = [
        dict(name="iou", label="GRPO, IoU reward", rung=True, set=dict(rewards=REWARD_IOU)),
        dict(name="positional", label="+ positional reward", rung=True, set=dict(rewards=REWARD_POSITIONAL)),
        dict(name="consistency", label="+ spatial consistency", rung=True,
             set=dict(rewards=REWARD_POSITIONAL, coherence=CONSISTENCY)),
        dict(name="giou", label="GIoU reward (published)", rung=False, set=dict(rewards=dict(format=0.25, giou=1.0))),
        dict(name="diou", label="DIoU reward (published)", rung=False, set=dict(rewards=dict(format=0.25, diou=1.0))),
        dict(name="gaussian", label="Gaussian point reward (published)", rung=False,
             set=dict(rewards=dict(format=0.25, gaussian=1.0))),
        # the SFT anchor (docs/method.md): the key rung with it, and its control, the anchor with no reward signal
        dict(name="consistency_anchor02", label="positional + consistency + SFT anchor 0.2", rung=False,
             set={"rewards": REWARD_POSITIONAL, "coherence": CONSISTENCY, "grpo.sft_coef": 0.2}),
        dict(name="anchor02_only", label="SFT anchor 0.2 alone, no reward (control)", rung=False,
             set={"rewards": dict(format=0.0), "grpo.sft_coef": 0.2}),
        # session 22's variants of the anchored rung (docs/method.md): more IoU in the positional reward, and a hit term
        dict(name="consistency_anchor02_iou08", label="positional (IoU weight 0.8) + consistency + SFT anchor 0.2",
             rung=False, set={"rewards": REWARD_POSITIONAL, "coherence": CONSISTENCY, "grpo.sft_coef": 0.2,
                              "reward_options": {"positional": {"iou_weight": 0.8}}}),
        dict(name="consistency_anchor02_iou08_hit", label="the same + hit reward 0.5 (IoU > 0.5)",
             rung=False, set={"rewards": dict(REWARD_POSITIONAL, hit=0.5), "coherence": CONSISTENCY,
                              "grpo.sft_coef": 0.2, "reward_options": {"positional": {"iou_weight": 0.8}}}),
        # session 23: the anchored method at 3x the learning rate, and its control (the same with no reward signal)
        dict(name="consistency_anchor02_lr15e-5", label="positional + consistency + SFT anchor 0.2, lr 1.5e-4",
             rung=False, set={"rewards": REWARD_POSITIONAL, "coherence": CONSISTENCY, "grpo.sft_coef": 0.2, "lr": 1.5e-4}),
        dict(name="anchor02_only_lr15e-5", label="SFT anchor 0.2 alone, no reward, lr 1.5e-4 (control)",
             rung=False, set={"rewards": dict(format=0.0), "grpo.sft_coef": 0.2, "lr": 1.5e-4}),
        # session 24: that recipe trained twice as long (and its control), and with the box drawn at temperature 0.5
        dict(name="consistency_anchor02_lr15e-5_600",
             label="positional + consistency + SFT anchor 0.2, lr 1.5e-4, 600 steps", rung=False,
             against=["cot_sft", "anchor02_only_lr15e-5_600", "positional_anchor02_lr15e-5_600",
                      "iou_anchor02_lr15e-5_600"],
             set={"rewards": REWARD_POSITIONAL, "coherence": CONSISTENCY, "grpo.sft_coef": 0.2, "lr": 1.5e-4,
                  "steps": 600}),
        dict(name="anchor02_only_lr15e-5_600", label="SFT anchor 0.2 alone, no reward, lr 1.5e-4, 600 steps (control)",
             rung=False, set={"rewards": dict(format=0.0), "grpo.sft_coef": 0.2, "lr": 1.5e-4, "steps": 600}),
        # the ladder's lower rungs under that 600-step recipe (a variant's `against` names the rows it is compared
        # with: the first in the table's Δ column, all of them in its table of steps)
        dict(name="iou_anchor02_lr15e-5_600", label="IoU reward + SFT anchor 0.2, lr 1.5e-4, 600 steps", rung=False,
             against=["cot_sft", "anchor02_only_lr15e-5_600"],
             set={"rewards": REWARD_IOU, "grpo.sft_coef": 0.2, "lr": 1.5e-4, "steps": 600}),
        dict(name="positional_anchor02_lr15e-5_600", label="positional reward + SFT anchor 0.2, lr 1.5e-4, 600 steps",
             rung=False, against="iou_anchor02_lr15e-5_600",
             set={"rewards": REWARD_POSITIONAL, "grpo.sft_coef": 0.2, "lr": 1.5e-4, "steps": 600}),
        # the published alternatives under that recipe (session 26): GIoU and DIoU in the IoU rung's place
        dict(name="giou_anchor02_lr15e-5_600", label="GIoU reward + SFT anchor 0.2, lr 1.5e-4, 600 steps", rung=False,
             against=["iou_anchor02_lr15e-5_600", "cot_sft"],
             set={"rewards": dict(format=0.25, giou=1.0), "grpo.sft_coef": 0.2, "lr": 1.5e-4, "steps": 600}),
        dict(name="diou_anchor02_lr15e-5_600", label="DIoU reward + SFT anchor 0.2, lr 1.5e-4, 600 steps", rung=False,
             against=["iou_anchor02_lr15e-5_600", "cot_sft"],
             set={"rewards": dict(format=0.25, diou=1.0), "grpo.sft_coef": 0.2, "lr": 1.5e-4, "steps": 600}),
        dict(name="consistency_anchor02_lr15e-5_box05",
             label="positional + consistency + SFT anchor 0.2, lr 1.5e-4, box temperature 0.5", rung=False,
             set={"rewards": REWARD_POSITIONAL, "coherence": CONSISTENCY, "grpo.sft_coef": 0.2, "lr": 1.5e-4,
                  "grpo.box_temperature": 0.5}),
    ]
    return c
