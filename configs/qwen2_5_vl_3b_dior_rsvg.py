"""CoT-SFT of Qwen2.5-VL-3B-Instruct on DIOR-RSVG (reasoning then box, resized-pixel coordinates).

    rsground sft --config configs/qwen2_5_vl_3b_dior_rsvg.py init=/path/to/Qwen2.5-VL-3B-Instruct

The data folder is the DIOR-RSVG release (Annotations/, JPEGImages/, train.txt, val.txt, test.txt); its
CoT targets are synthesized from the annotations (rsground_jax.data.cot). Weights load from a local Hugging
Face directory (no download at run time); the tokenizer is the checkpoint's own.
"""

import ml_collections

from rsground_jax.data.chat import DEFAULT_QUESTION, DEFAULT_SYSTEM


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init = "checkpoints/Qwen2.5-VL-3B-Instruct"  # local HF directory
    c.tokenizer = ""  # empty: the tokenizer files of the `init` checkpoint
    c.compute_dtype = "bfloat16"  # float32 master weights, bfloat16 activations
    c.remat = "full"
    c.workdir = "runs/qwen2_5_vl_3b_dior_rsvg"
    c.output = "runs/qwen2_5_vl_3b_dior_rsvg/model"
    c.max_pixels = 1003520  # transformers' default budget (800x800 -> 812x812, 841 image tokens)
    c.template_system = DEFAULT_SYSTEM
    c.template_question = DEFAULT_QUESTION  # reasoning in <think>, then the box in <answer>
    c.answer_style = "cot"
    c.length_bucket = 1280
    c.mesh = None  # one device; on 8 accelerators e.g. dict(fsdp=-1) (docs/sharding.md)
    c.checkpoint_dir = ""  # under the workdir; on a TPU pod gs://BUCKET/RUN (every host writes its shards; tpu/)
    c.eval_images = 500
    c.max_new_tokens = 384

    s = ml_collections.ConfigDict()
    s.name = "cot_sft"
    s.synth = None
    s.data_root = "data/DIOR-RSVG"
    s.data_format = "dior_rsvg"
    s.steps = 2000
    s.batch_size = 16
    s.accum_steps = 4
    s.lr = 1e-5
    s.warmup_steps = 100
    s.freeze_vision = True
    c.stages = [s]
    return c
