"""Sampler throughput (generated tokens per second): our jitted KV-cache sampler against transformers'
`generate` on the same model (our weights exported to HF) and the same prompts, greedy, float32.

    python benchmarks/sampler_throughput.py [--new-tokens 64] [--batches 1 8 32] [--models tiny 50m] [--devices N]

Runs where JAX's default backend is: the CPU here, a GPU where one is present (then transformers runs on
CUDA too). On a GPU both sides compute in full float32: TF32 is off for torch's matmuls and convolutions and
JAX's default matmul precision is "highest", so the greedy tokens can be compared (`benchmarks/device_check.sh`
is the prepared run for a lent GPU machine).

Each prompt is one 112x112 image (16 image tokens) plus ~20 text tokens; every sequence generates exactly
--new-tokens tokens (no end token). Ours is timed after compilation (compile time printed separately), the
median of --reps runs; the target is >= 3x transformers' tokens/s at batch 8 and above.

Ours runs twice: on one device, and with the batch split over --devices devices (`Sampler(model, mesh)`,
each device generating its own rows). On the CPU the default is one XLA:CPU device per CPU this process may
use; on an accelerator, all of its devices (a single-GPU machine runs on one device only).
A batch that does not divide by --devices is run on one device only.
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


def build(name):
    from flax import nnx

    from benchmarks.model_train_step import BENCH_CONFIG, make_config
    from rsground_jax.models import Qwen25VL
    from rsground_jax.models.qwen2_5_vl import tiny

    cfg = tiny(vocab_size=1024) if name == "tiny" else make_config(BENCH_CONFIG)
    return Qwen25VL(cfg, rngs=nnx.Rngs(0))


def prompts(cfg, batch, rng):
    from PIL import Image

    from rsground_jax.models import ImageProcessor, prepare_inputs

    images = [Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(batch)]
    pix = ImageProcessor(max_pixels=112 * 112)(images)
    n = int(pix["image_grid_thw"][0].prod() // 4)
    text = rng.integers(0, min(cfg.text.vocab_size, 1000) - 8, (batch, 20))
    ids = np.concatenate([np.full((batch, 1), cfg.vision_start_token_id), np.full((batch, n), cfg.image_token_id),
                          np.full((batch, 1), cfg.vision_end_token_id), text], 1)
    prep = prepare_inputs(cfg, ids, None, pix["image_grid_thw"])
    prep["pixel_values"] = pix["pixel_values"]
    return prep, pix, ids


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--models", nargs="+", default=["tiny", "50m"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--hf-cache", choices=["dynamic", "static"], default="dynamic",
                    help="transformers' KV cache: 'dynamic' (the default of `generate`, as the PyTorch RL stacks "
                         "call it) or 'static' (a preallocated cache; on CUDA `generate` then compiles its "
                         "forward with torch.compile)")
    ap.add_argument("--devices", type=int, default=None,
                    help="devices to split the batch over (default: the CPUs, or all accelerator devices)")
    args = ap.parse_args()
    reexec_with_hugepages(sys.argv)  # XLA:CPU's per-call temporaries on huge pages, as `rsground` runs
    print(f"malloc on transparent huge pages: {hugepages_active()} (both sides; RSGROUND_NO_HUGEPAGES=1 turns it off)")

    import jax

    cpus = len(os.sched_getaffinity(0))
    # Before the backend starts; it only shapes the CPU client, so it is harmless where a GPU is the default.
    jax.config.update("jax_num_cpu_devices", args.devices or cpus)
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from rsground_jax.generate import Sampler, SamplingConfig
    from rsground_jax.models import count_params, save_pretrained

    backend = jax.default_backend()
    torch.set_num_threads(cpus)
    if backend == "cpu":
        n_dev, where = args.devices or cpus, "cpu"
        print(f"machine: {platform.machine()}, {cpus} of {os.cpu_count()} CPUs")
    else:
        # Full float32 on both sides: JAX's GPU matmuls default to TF32-like passes, torch's convolutions
        # (the patch embedding) to TF32; either would make the greedy tokens differ for reasons of rounding.
        jax.config.update("jax_default_matmul_precision", "highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        n_dev = args.devices or jax.device_count()
        where = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"machine: {jax.devices()[0].device_kind} x{jax.device_count()} ({backend}); transformers on {where}"
              + (f" ({torch.cuda.get_device_name(0)})" if where == "cuda" else ""))
    print(f"jax {jax.__version__}, torch {torch.__version__}; {args.new_tokens} new tokens per sequence, greedy, "
          f"float32; transformers' cache: {args.hf_cache}")
    mesh = jax.make_mesh((n_dev,), ("data",)) if n_dev > 1 else None
    print(f"{'model':>6s} {'batch':>5s} {'ours tok/s':>11s} {f'ours x{n_dev} tok/s':>15s} {'hf tok/s':>9s} "
          f"{'ratio':>6s} {f'ratio x{n_dev}':>8s} {'ours compile s':>15s}")
    rng = np.random.default_rng(0)
    for name in args.models:
        model = build(name)
        cfg = model.config
        with tempfile.TemporaryDirectory() as d:
            save_pretrained(model, d)
            hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(d).eval().to(where)
        sampler = Sampler(model)
        split = Sampler(model, mesh) if mesh is not None else None
        scfg = SamplingConfig(max_new_tokens=args.new_tokens)
        for batch in args.batches:
            prep, pix, ids = prompts(cfg, batch, rng)
            t = time.perf_counter()
            ours_tokens, _ = sampler(prep, scfg)
            compile_s = time.perf_counter() - t
            ours = []
            for _ in range(args.reps):
                t = time.perf_counter()
                sampler(prep, scfg)
                ours.append(time.perf_counter() - t)
            ours_split, split_tokens = [], ours_tokens
            if split is not None and batch % n_dev == 0:
                split_tokens, _ = split(prep, scfg)  # compiles
                for _ in range(args.reps):
                    t = time.perf_counter()
                    split(prep, scfg)
                    ours_split.append(time.perf_counter() - t)
            kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                      pixel_values=torch.tensor(pix["pixel_values"]), image_grid_thw=torch.tensor(pix["image_grid_thw"]),
                      mm_token_type_ids=torch.tensor((ids == cfg.image_token_id).astype(np.int64)))
            kw = {k: v.to(where) for k, v in kw.items()}
            ref = []
            for rep in range(args.reps + (where == "cuda")):  # on CUDA the first call warms up its kernels, untimed
                t = time.perf_counter()
                with torch.no_grad():
                    out = hf.generate(**kw, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                      do_sample=False, eos_token_id=None, pad_token_id=0,
                                      cache_implementation=args.hf_cache)
                if where == "cuda":
                    torch.cuda.synchronize()
                if rep or where != "cuda":
                    ref.append(time.perf_counter() - t)
            same = (np.array_equal(out[:, ids.shape[1]:].cpu().numpy(), ours_tokens)
                    and np.array_equal(ours_tokens, split_tokens))
            n_tok = batch * args.new_tokens
            o, r = n_tok / np.median(ours), n_tok / np.median(ref)
            o2 = f"{n_tok / np.median(ours_split):15.0f}" if ours_split else f"{'-':>15s}"
            r2 = f"{n_tok / np.median(ours_split) / r:8.1f}" if ours_split else f"{'-':>8s}"
            print(f"{name:>6s} {batch:5d} {o:11.0f} {o2} {r:9.0f} {o / r:6.1f} {r2} {compile_s:15.1f}"
                  + ("" if same else "   (greedy tokens differ between the runs)"), flush=True)
        print(f"  ({name}: {count_params(cfg) / 1e6:.1f}M parameters)")


if __name__ == "__main__":
    main()
