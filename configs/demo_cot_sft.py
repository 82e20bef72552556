"""CoT-SFT of the packaged base model on synthetic crowded scenes: what `rsground demo` trains, as a config
(1,800 steps; the demo itself now runs 1,600 to leave time for its GRPO stage, `--steps 1800` restores this).

    rsground sft --config configs/demo_cot_sft.py
"""

import ml_collections

from rsground_jax.data.chat import DEFAULT_QUESTION


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 1234
    c.init = "base"  # the packaged base model (configs/base_pretrain.py)
    c.tokenizer = "small"
    c.compute_dtype = "float32"
    c.remat = "none"
    c.workdir = "runs/demo_cot_sft"
    c.output = "runs/demo_cot_sft/model"
    c.max_pixels = 112 * 112  # the base model's pixel budget
    c.template_system = ""  # none, as the base was pretrained: the tokens around the image stay the same
    c.template_question = DEFAULT_QUESTION  # reasoning in <think>, then the box in <answer>
    c.answer_style = "brief_cot"  # `rsground demo`'s default reasoning (--cot brief); "cot" lists every candidate
    c.length_bucket = 192
    c.mesh = None  # one device; e.g. mesh={'data': -1} on a host with several
    c.eval_images = 120
    c.max_new_tokens = 96

    s = ml_collections.ConfigDict()
    s.name = "cot_sft"
    s.synth = ml_collections.ConfigDict(dict(preset="demo"))  # plain ground, 2-3 objects per category
    s.num_images = 2000
    s.steps = 1800
    s.batch_size = 16
    s.lr = 1e-3
    s.warmup_steps = 20
    s.freeze_vision = True  # the tower stays as the base left it (as in `rsground demo`)
    s.accum_steps = 1
    s.length_buckets = [128, 192]  # as in `rsground demo`
    c.stages = [s]
    return c
