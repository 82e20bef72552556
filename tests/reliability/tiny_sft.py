"""The smallest real SFT experiment, for the fault tests: the tiny preset from random weights on 56x56
synthetic scenes, every step logged, a checkpoint every 3 steps.

    rsground sft --config tests/reliability/tiny_sft.py workdir=W
"""

import ml_collections

from rsground_jax.data.chat import BOX_QUESTION


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init = "tiny"
    c.tiny_options = ml_collections.ConfigDict(dict(text_layers=2, vision_depth=1))
    c.tokenizer = "small"
    c.workdir = "runs/tiny_sft"
    c.output = ""
    c.max_pixels = 56 * 56
    c.template_system = ""
    c.template_question = BOX_QUESTION
    c.answer_style = "box"
    c.length_bucket = 96
    c.mesh = None  # one device; `mesh={'fsdp': 2, 'tensor': 2}` splits it (tests/sharding)
    c.checkpoint_dir = ""  # under the workdir; tests/sharding puts them elsewhere
    c.eval_images = 0
    c.log_every = 1
    c.checkpoint_every = 3
    c.keep_checkpoints = 2

    s = ml_collections.ConfigDict()
    s.name = "s"
    s.synth = ml_collections.ConfigDict(dict(preset="tiny", image_size=(56, 56)))
    s.num_images = 40
    s.steps = 16
    s.batch_size = 4
    s.lr = 1e-3
    s.warmup_steps = 0
    s.end_lr_fraction = 1.0
    s.accum_steps = 1
    c.stages = [s]
    return c
