"""The demo's CoT-SFT step, ours against transformers' PyTorch model on the same weights and inputs.

    python benchmarks/demo_sft_step.py [--steps 20] [--threads N]

Both sides train the packaged tiny base (`rsground_jax/assets/base_model`) on the demo's batches: 16
synthetic scenes at the base's 112x112 pixel budget with their brief chain-of-thought answers, padded to the
demo's length buckets (128, 192), the vision tower frozen, AdamW at the demo's rate with the gradient norm
clipped to 1. A step is forward, backward and the optimizer update: ours is the jitted step `rsground demo`
runs (`train.make_sft_step`, after compilation), theirs the model's forward, the same token-mean
cross-entropy on the answer tokens, `backward`, `clip_grad_norm_` and `torch.optim.AdamW.step`. Steps are
interleaved (noise hits both alike) over the same cycle of batches; the median step is reported, with the
ratio ours / transformers (target: <= 1, no slower). The losses of the first step are printed side by side.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rsground_jax.runtime import hugepages_active, reexec_with_hugepages  # noqa: E402


def demo_batches(n: int):
    """`n` SFT batches of the demo (its data preset, template, answer style, batch size and buckets)."""
    from rsground_jax.data import load_split
    from rsground_jax.data.chat import ChatTemplate, DEFAULT_QUESTION, prompt_from_spec
    from rsground_jax.data.pipeline import PipelineConfig, sft_pipeline
    from rsground_jax.data.synthetic import PRESETS, generate_dataset
    from rsground_jax.data.tokenizer import load_tokenizer
    from rsground_jax.models.model_dir import BASE_MODEL_DIR, read_prompt_spec

    base_template, proc, _ = prompt_from_spec(read_prompt_spec(BASE_MODEL_DIR))
    tok = load_tokenizer(BASE_MODEL_DIR)
    with tempfile.TemporaryDirectory() as d:
        generate_dataset(d, 200, seed=0, config=PRESETS["demo"])
        train = load_split(d, "train")
        pl = sft_pipeline(train, tok, proc, PipelineConfig(batch_size=16, length_buckets=(128, 192), seed=0,
                                                          on_overflow="skip", answer_style="brief_cot"),
                          template=ChatTemplate(system=base_template.system, question=DEFAULT_QUESTION))
        it = iter(pl)
        return [next(it) for _ in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    ap.add_argument("--threads", type=int, default=0, help="threads for torch (0: the CPUs this process may use)")
    args = ap.parse_args()
    reexec_with_hugepages(sys.argv)

    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx
    from transformers import Qwen2_5_VLForConditionalGeneration

    from rsground_jax.models.model_dir import BASE_MODEL_DIR, load_model
    from rsground_jax.models.qwen2_5_vl.inputs import add_vision_inputs, static_vision_sizes
    from rsground_jax.train import OptimConfig, TrainState, make_optimizer, make_sft_step, stack_micro_batches

    cpus = len(os.sched_getaffinity(0))
    torch.set_num_threads(args.threads or cpus)
    print(f"machine: {platform.processor() or platform.machine()}, {cpus} of {os.cpu_count()} CPUs; torch threads "
          f"{torch.get_num_threads()}; malloc on huge pages: {hugepages_active()}")
    batches = demo_batches(args.batches)
    model = load_model(BASE_MODEL_DIR)
    vcfg = model.config.vision
    opt = OptimConfig(lr=1e-3, warmup_steps=0, total_steps=10_000, freeze_vision=True, clip_norm=1.0)
    tx = make_optimizer(opt)
    graphdef, params = nnx.split(model, nnx.Param)
    state = TrainState.create(params, tx)
    step = make_sft_step(graphdef, tx, freeze_vision=True)

    ours_in = []
    for b in batches:
        nw, fs = static_vision_sizes(np.asarray(b["image_grid_thw"]), vcfg, 16, b["pixel_values"].shape[0])
        ours_in.append(jax.tree.map(jnp.asarray, stack_micro_batches([add_vision_inputs(b, vcfg, num_windows=nw,
                                                                                         frame_slots=fs)])))
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(BASE_MODEL_DIR, dtype=torch.float32)
    hf.train()
    for name, p in hf.named_parameters():
        p.requires_grad_(not name.startswith(("model.visual", "visual")))
    trainable = [p for p in hf.parameters() if p.requires_grad]
    torch_opt = torch.optim.AdamW(trainable, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    image_token = hf.config.image_token_id
    torch_in = []
    for b in batches:
        valid = np.asarray(b["sample_valid"]) > 0
        patches = int(np.asarray(b["image_num_patches"])[valid].sum())
        ids = torch.tensor(np.asarray(b["input_ids"])[valid], dtype=torch.long)
        torch_in.append(dict(input_ids=ids, attention_mask=torch.tensor(np.asarray(b["attention_mask"])[valid]),
                             pixel_values=torch.tensor(np.asarray(b["pixel_values"])[:patches]),
                             image_grid_thw=torch.tensor(np.asarray(b["image_grid_thw"])[valid]),
                             mm_token_type_ids=(ids == image_token).long(),
                             loss_mask=torch.tensor(np.asarray(b["loss_mask"])[valid], dtype=torch.float32)))

    def torch_step(x):
        torch_opt.zero_grad(set_to_none=True)
        logits = hf(**{k: v for k, v in x.items() if k != "loss_mask"}).logits[:, :-1].float()
        targets, w = x["input_ids"][:, 1:], x["loss_mask"][:, 1:]
        nll = torch.logsumexp(logits, -1) - logits.gather(-1, targets[..., None])[..., 0]
        loss = (nll * w).sum() / w.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        torch_opt.step()
        return float(loss.detach())

    t = time.perf_counter()
    state, m = step(state, ours_in[0])
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t
    print(f"first step: loss ours {float(m['loss']):.4f}, transformers {torch_step(torch_in[0]):.4f} (same weights and "
          f"batch; ours compiled in {compile_s:.1f} s)")
    for i in range(1, args.batches):  # every bucket shape compiled before timing
        state, m = step(state, ours_in[i])
        jax.block_until_ready(m["loss"])
        torch_step(torch_in[i])
    ours_t, ref_t = [], []
    for i in range(args.steps):
        j = i % args.batches
        t = time.perf_counter()
        state, m = step(state, ours_in[j])
        jax.block_until_ready(m["loss"])
        ours_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        torch_step(torch_in[j])
        ref_t.append(time.perf_counter() - t)
    o, r = float(np.median(ours_t)), float(np.median(ref_t))
    shapes = sorted({tuple(b["input_ids"].shape) for b in batches})
    print(f"demo CoT-SFT step (batch 16, input shapes {shapes}, fwd + bwd + AdamW, vision frozen): ours {o * 1e3:.0f} ms, "
          f"transformers {r * 1e3:.0f} ms, ratio ours / transformers = {o / r:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
