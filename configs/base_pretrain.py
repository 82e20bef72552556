"""The embedded base model: a tiny Qwen2.5-VL pretrained for grounding on synthetic scenes.

Plain box answers (no reasoning), a curriculum from one object per image to crowded scenes with positional
cues, 112x112 pixel budget (at most 16 image tokens). Reproduce with
    rsground sft --config configs/base_pretrain.py
(the same as `python tools/train_base.py`); add `--resume` to continue from the stage checkpoints in `workdir`.
"""

import ml_collections

from rsground_jax.data.chat import BOX_QUESTION


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init = "tiny"  # random weights of the tiny preset, sized to the tokenizer
    c.tokenizer = "small"
    c.workdir = "runs/base_pretrain"
    c.output = "rsground_jax/assets/base_model"  # HF directory shipped in the package
    c.max_pixels = 112 * 112
    c.template_system = ""  # empty: no system turn (shorter sequences for the tiny model)
    c.template_question = BOX_QUESTION
    c.answer_style = "box"
    c.length_bucket = 96
    c.eval_images = 100

    def stage(name, synth, images, steps, batch, lr, end_lr_fraction):
        s = ml_collections.ConfigDict()
        s.name, s.synth, s.num_images, s.steps, s.batch_size, s.lr = name, synth, images, steps, batch, lr
        s.warmup_steps = 100
        s.end_lr_fraction = end_lr_fraction
        return s

    # synth: a preset of rsground_jax.data.synthetic, plus overrides of its SynthConfig fields
    single = ml_collections.ConfigDict(dict(preset="tiny", image_size=(112, 112), num_categories=(1, 1),
                                            instances_per_category=(1, 1), num_distractors=(0, 0)))
    crowded = ml_collections.ConfigDict(dict(preset="tiny", image_size=(112, 168)))
    c.stages = [
        # A constant rate through the image-blind plateau (the loss sits near 0.83 until the model starts to
        # use the image); a first run that decayed the rate over 2,400 steps was still on it at step 1,550.
        stage("single_object", single, 2000, 3000, 32, 2e-3, 1.0),
        stage("positional", crowded, 3000, 1600, 32, 1e-3, 0.1),
    ]
    return c
