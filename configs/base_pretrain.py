"""The embedded base model: a tiny Qwen2.5-VL pretrained for grounding on synthetic scenes.

Plain box answers (no reasoning), a curriculum from one object per image to scenes with several objects per
category and positional cues, all on plain ground of one colour, 112x112 pixel budget (16 image tokens). The
vision tower stays frozen at its random initialization until the decoder reads it, and is trained at 0.3x
the rate after that; the last stage asks each question in one of many phrasings (why: docs/base_model.md).
Reproduce with
    rsground sft --config configs/base_pretrain.py
(the same as `python tools/train_base.py`); add `--resume` to continue from the stage checkpoints in `workdir`.
"""

import ml_collections

from rsground_jax.data.chat import BOX_QUESTION


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init = "tiny"  # random weights of the tiny preset, sized to the tokenizer
    c.tiny_options = ml_collections.ConfigDict(dict(rope_theta=1000000.0))
    c.tokenizer = "small"
    c.workdir = "runs/base_pretrain"
    c.output = "rsground_jax/assets/base_model"  # HF directory shipped in the package
    c.max_pixels = 112 * 112
    c.template_system = ""  # empty: no system turn (shorter sequences for the tiny model)
    c.template_question = BOX_QUESTION
    c.answer_style = "box"
    c.length_bucket = 96
    c.eval_images = 100

    def stage(name, synth, images, steps, batch, lr, end_lr_fraction, freeze_vision=False, warmup=100):
        s = ml_collections.ConfigDict()
        s.name, s.synth, s.num_images, s.steps, s.batch_size, s.lr = name, synth, images, steps, batch, lr
        s.warmup_steps = warmup
        s.end_lr_fraction = end_lr_fraction
        s.freeze_vision = freeze_vision
        return s

    # synth: a preset of rsground_jax.data.synthetic, plus overrides of its SynthConfig fields
    one = dict(preset="tiny", image_size=(112, 112), num_categories=(1, 1), instances_per_category=(1, 1))
    # One ground colour: every ground token is the same vector in every image, so the object's token differs
    # from a fixed background (with the four palettes the same 2,500 steps reached half the accuracy: 17 % against
    # 35 % Pr@0.5; docs/base_model.md).
    plain = ml_collections.ConfigDict(dict(one, num_distractors=(0, 0), object_size=(0.25, 0.45), clutter=0.0,
                                           palettes=("urban",)))
    c.stages = [
        # From random weights, trained end to end, the model sits on an image-blind plateau: the vision tower
        # drifts to a large near-constant output that the decoder learns to ignore (measured: the loss with
        # the images shuffled equals the loss with the right ones after 3,000 steps; transformers' PyTorch
        # model trained on the same batches stays on the same plateau). With the random vision tower frozen,
        # its features stay informative and the decoder learns to read them: plain ground, large objects.
        # The loss falls slowly but steadily for 5,000 steps (validation Pr@0.5 35 % at 2,500, 51 % at 5,000).
        stage("single", plain, 4000, 5000, 32, 2e-3, 1.0, freeze_vision=True, warmup=50),
        # Once the decoder reads the frozen features, the tower can be trained without collapsing: the same
        # scenes with the tower unfrozen at 0.3x the rate (measured against continuing frozen for the same
        # 1,500 steps: validation Pr@0.5 65 % against 45 %, docs/base_model.md). Its loss first rises (the
        # fresh optimizer's first steps on the tower) and is back below the frozen one within 900 steps.
        stage("tower", None, 0, 3000, 32, 2e-3, 1.0, freeze_vision=False, warmup=20),
        # then several objects per category on the same plain ground, told apart by positional expressions
        # (the `demo` preset: the scenes `rsground demo` tests on, other images), the tower still trained.
        # Scenes with the full ground clutter need a longer curriculum (clutter 0 -> 1): the stage-1 decoder
        # does not use the frozen features on cluttered ground (loss with shuffled images equal to the real one).
        stage("positional", ml_collections.ConfigDict(dict(preset="demo")), 4000, 2000, 32, 1e-3, 0.1,
              freeze_vision=False),
        # The same kind of scenes (another 4,000), each record asked in one of 256 phrasings of the question
        # (`question_variants`, 6 to 85 tokens). Trained on BOX_QUESTION alone the model reads the box only
        # after exactly that text: "Be precise." appended took one-object Pr@0.5 from 94 % to 0 (session 6,
        # docs/base_model.md); after this stage every phrasing tried scores 73-88 %.
        stage("prompts", ml_collections.ConfigDict(dict(preset="demo")), 4000, 2000, 32, 1e-3, 0.1,
              freeze_vision=False),
    ]
    c.stages[1].data_from = "single"
    c.stages[1].vision_lr_scale = 0.3
    c.stages[1].seed = 0  # the batch order of the run that produced the shipped weights (it ran as a stage 0)
    # Rehearse stage 1 during the positional stage: without its one-object scenes mixed in, the positional stage
    # forgets most of it (session 4: one-object Pr@0.5 from 38 % to 11 % on fresh scenes; with them 38 %).
    c.stages[2].replay = ["single"]
    c.stages[2].vision_lr_scale = 0.3
    c.stages[3].replay = ["single"]
    c.stages[3].vision_lr_scale = 0.3
    c.stages[3].question_variants = "box"  # rsground_jax.data.chat.box_question_variants()
    c.stages[3].length_buckets = [96, 160]  # the longest phrasings need more than 96 tokens
    # the scenes and batch order of the run that produced the shipped weights (it ran as stage 1 of a run
    # started from the exported positional-stage model)
    c.stages[3].data_seed = 1
    c.stages[3].seed = 2
    return c
