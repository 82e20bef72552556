"""Train the embedded base model (see configs/base_pretrain.py) and write it into the package.

    python tools/train_base.py --config configs/base_pretrain.py [key=value ...]

Each stage generates its synthetic set (DIOR-RSVG format) under the work directory, trains with the SFT loop
(checkpointed: rerunning resumes), evaluates on its validation split, and the final weights are written as a
Hugging Face directory with the small tokenizer and a RECIPE.json (config, steps, wall time, machine, metrics).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import time

from flax import nnx

from rsground_jax.configs import load_config
from rsground_jax.data import load_split
from rsground_jax.data.chat import ChatTemplate
from rsground_jax.data.pipeline import PipelineConfig, sft_pipeline
from rsground_jax.data.synthetic import PRESETS, generate_dataset
from rsground_jax.data.tokenizer import SMALL_TOKENIZER_DIR, load_small_tokenizer, special_token_ids
from rsground_jax.eval.evaluate import evaluate
from rsground_jax.models import ImageProcessor, Qwen25VL, save_pretrained
from rsground_jax.models.qwen2_5_vl import tiny
from rsground_jax.train import LoopConfig, OptimConfig, make_optimizer, run_sft


def synth_config(spec):
    spec = dict(spec)
    base = PRESETS[spec.pop("preset")]
    return dataclasses.replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/base_pretrain.py")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides of the config")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    tok = load_small_tokenizer()
    sp = special_token_ids(tok)
    model_cfg = tiny(vocab_size=sp.vocab_size, image_token_id=sp.image_pad, vision_start_token_id=sp.vision_start,
                     vision_end_token_id=sp.vision_end, eos_token_id=sp.im_end, bos_token_id=sp.pad,
                     video_token_id=sp.video_pad, pad_token_id=sp.pad)
    model = Qwen25VL(model_cfg, rngs=nnx.Rngs(cfg.seed))
    proc = ImageProcessor(max_pixels=cfg.max_pixels)
    template = ChatTemplate(system=cfg.template_system or None, question=cfg.template_question)
    t0 = time.time()
    report = {"config": cfg.to_dict(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "stages": []}
    for i, st in enumerate(cfg.stages):
        data_dir = os.path.join(cfg.workdir, f"data_{st.name}")
        if not os.path.isdir(os.path.join(data_dir, "Annotations")):
            generate_dataset(data_dir, st.num_images, seed=cfg.seed + i, config=synth_config(st.synth.to_dict()))
        train, val = load_split(data_dir, "train"), load_split(data_dir, "val")
        pl = sft_pipeline(train, tok, proc, PipelineConfig(batch_size=st.batch_size, length_buckets=(cfg.length_bucket,),
                                                           seed=cfg.seed + i, answer_style=cfg.answer_style),
                          template=template)
        tx = make_optimizer(OptimConfig(lr=st.lr, warmup_steps=st.warmup_steps, total_steps=st.steps))
        ts = time.time()
        res = run_sft(model, pl, tx, LoopConfig(total_steps=st.steps, log_every=50, checkpoint_every=250),
                      os.path.join(cfg.workdir, st.name), resume=True)
        ev = evaluate(model, val[: cfg.eval_images], tok, proc, template=template, batch_size=32, max_new_tokens=24,
                      length_buckets=(cfg.length_bucket,))
        row = {"stage": st.name, "steps": st.steps, "seconds": round(time.time() - ts, 1),
               "final_loss": res.history[-1]["loss"] if res.history else None, "val": ev.metrics}
        report["stages"].append(row)
        print(json.dumps(row), flush=True)
        if res.preempted:
            print("preempted: rerun the same command to resume", file=sys.stderr)
            return 1
    report["wall_seconds"] = round(time.time() - t0, 1)
    save_pretrained(model, cfg.output)
    for f in os.listdir(SMALL_TOKENIZER_DIR):
        shutil.copy(os.path.join(SMALL_TOKENIZER_DIR, f), cfg.output)
    with open(os.path.join(cfg.output, "RECIPE.json"), "w") as f:
        json.dump(report, f, indent=2, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o))
    print(f"wrote {cfg.output} ({report['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
