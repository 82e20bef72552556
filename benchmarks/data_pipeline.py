"""SFT data pipeline throughput on 800x800 JPEGs (DIOR-RSVG size), beside the training step's need.

    python benchmarks/data_pipeline.py [--num-images 48] [--batch-size 4] [--batches 24]
                                       [--workers 0 2] [--threads 1 2] [--tokenizer qwen2.5]
                                       [--step-ms-per-sample MS] [--json out.json]

Generates `--num-images` synthetic 800x800 scenes (the `dior` preset) as JPEGs in DIOR-RSVG layout, reads
them with `load_split`, then measures:
  * the plan (CoT text + tokenization of every sample, once, in the main process), samples/s;
  * the per-sample cost of each stage in one process: JPEG decode, resize (bicubic 800 -> 812),
    normalize + patchify, token expansion, and the batch collate (padding, M-RoPE positions) per sample;
  * end-to-end SFT samples/s of the Grain pipeline (decode, resize, patchify, tokens, batch) in steady
    state, for each `--workers` (processes) x `--threads` (Grain read threads) setting;
  * how many cores the run really had (spinning loops in 1 vs N processes), since on a shared machine
    the worker settings can only scale up to that;
  * the training step's time per sample: `--step-ms-per-sample` if given, else from `rsground_jax.train`
    when it offers a benchmark (`benchmark_step_ms_per_sample`), else the column is skipped with a note;
    and, always, an analytic estimate for Qwen2.5-VL-3B on one accelerator (6 x params x tokens FLOPs
    at a stated MFU), labelled as an estimate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _spin(n: int) -> float:
    t = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t


def effective_cores(processes: int, n: int = 6_000_000) -> float:
    """How many cores this run really gets: `processes` spinning Python loops vs one (shared machines)."""
    import multiprocessing

    one = _spin(n)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        many = pool.map(_spin, [n] * processes)
    return processes * one / max(many)


def stage_breakdown(pipeline, n: int) -> dict[str, float]:
    """Mean ms per sample of each stage, in this process, over the first n samples of the plan."""
    from rsground_jax.data import images
    from rsground_jax.data.chat import expand_image_tokens

    plan = pipeline.plan
    proc = plan.processor
    t = {"decode": [], "resize": [], "normalize+patchify": [], "tokens": []}
    for i in range(n):
        t0 = time.perf_counter()
        im = plan.images.load(i)
        t1 = time.perf_counter()
        resized = images.resize(proc, im)
        t2 = time.perf_counter()
        images.write_patches(proc, resized, np.empty((int(plan.num_patches[i]), proc.patch_dim), np.float32))
        t3 = time.perf_counter()
        expand_image_tokens(plan.chat(i), int(plan.num_image_tokens[i]), plan.specials.image_pad)
        t4 = time.perf_counter()
        for k, a, b in (("decode", t0, t1), ("resize", t1, t2), ("normalize+patchify", t2, t3), ("tokens", t3, t4)):
            t[k].append(b - a)
    out = {k: 1e3 * statistics.mean(v) for k, v in t.items()}
    # A whole batch (the stages above again, plus padding, masks and M-RoPE positions), per sample.
    B = pipeline.config.batch_size
    bt = []
    for s in range(0, n - B + 1, B):
        t0 = time.perf_counter()
        pipeline.make_batch(np.arange(s, s + B))
        bt.append((time.perf_counter() - t0) / B)
    out["whole batch, per sample"] = 1e3 * statistics.mean(bt)
    return out


def end_to_end(pipeline, batches: int, warmup: int) -> tuple[float, float, float]:
    """(steady-state samples/s, seconds to the first batch, cores this process used) of iterating."""
    import resource

    t0 = time.perf_counter()
    it = iter(pipeline)
    next(it)
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        next(it)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t1 = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t1
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    if hasattr(it, "close"):
        it.close()
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / dt
    return batches * pipeline.config.batch_size / dt, first, cpu


def measure_sft_step_ms(pipeline, batches: int) -> tuple[float | None, str]:
    """ms per sample of `rsground_jax.train`'s jitted SFT step (tiny model preset) on this pipeline's
    batches, on this machine's default JAX device; compile time excluded."""
    try:
        import jax
        from flax import nnx

        from rsground_jax.models import Qwen25VL
        from rsground_jax.models.qwen2_5_vl import tiny
        from rsground_jax.models.qwen2_5_vl.inputs import add_vision_inputs, static_vision_sizes
        from rsground_jax.train import OptimConfig, TrainState, make_optimizer, make_sft_step, stack_micro_batches
    except ImportError as e:
        return None, f"skipped: the train step cannot be imported yet ({e}); pass --step-ms-per-sample MS"
    sp = pipeline.plan.specials
    cfg = tiny(vocab_size=sp.vocab_size, image_token_id=sp.image_pad, video_token_id=sp.video_pad,
               vision_start_token_id=sp.vision_start, vision_end_token_id=sp.vision_end, eos_token_id=sp.im_end,
               bos_token_id=sp.im_start, pad_token_id=sp.pad)
    graphdef, params = nnx.split(Qwen25VL(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    tx = make_optimizer(OptimConfig(lr=1e-3, total_steps=1000))
    state = TrainState.create(params, tx)
    step = make_sft_step(graphdef, tx)
    B, P = pipeline.config.batch_size, pipeline.patch_buckets[-1]
    num_windows, frame_slots = static_vision_sizes(pipeline.plan.grid_thw, cfg.vision, B, P)
    it = iter(pipeline)
    prepared = [stack_micro_batches([add_vision_inputs(next(it), cfg.vision, num_windows=num_windows, frame_slots=frame_slots)])
                for _ in range(batches + 1)]
    state, m = step(state, prepared[0])  # compile
    jax.block_until_ready(m)
    t = time.perf_counter()
    for batch in prepared[1:]:
        state, m = step(state, batch)
    jax.block_until_ready(m)
    ms = 1e3 * (time.perf_counter() - t) / (batches * B)
    return ms, f"measured: tiny model SFT step (rsground_jax.train) on {jax.devices()[0].platform}, batch {B}, one length bucket"


def estimate_step_ms(tokens: float, patches: float, peak_tflops: float, mfu: float) -> float:
    """Qwen2.5-VL-3B: 6 x params x positions FLOPs (forward + backward), text 3.09e9 over the sequence,
    vision tower 0.67e9 over the patches; attention FLOPs left out (small at these lengths)."""
    flops = 6 * 3.09e9 * tokens + 6 * 0.67e9 * patches
    return 1e3 * flops / (peak_tflops * 1e12 * mfu)


def run_scenario(name, records, tokenizer, processor, args, batch_size, buckets, results) -> dict:
    from rsground_jax.data.pipeline import PipelineConfig, sft_pipeline

    out: dict = {}
    t = time.perf_counter()
    pipeline = sft_pipeline(records, tokenizer, processor, PipelineConfig(batch_size=batch_size, length_buckets=buckets, seed=0))
    out["plan_samples_per_s"] = len(records) / (time.perf_counter() - t)
    plan = pipeline.plan
    out["samples"] = len(records)
    sizes = sorted({(r.width, r.height) for r in records})
    out["images"] = f"{len(sizes)} sizes from {sizes[0][0]}x{sizes[0][1]} to {sizes[-1][0]}x{sizes[-1][1]}"
    out["patches_per_image"] = [int(plan.num_patches.min()), int(plan.num_patches.max())]
    out["image_tokens"] = [int(plan.num_image_tokens.min()), int(plan.num_image_tokens.max())]
    out["mean_tokens"] = float(plan.lengths.mean())
    out["stage_ms_per_sample"] = stage_breakdown(pipeline, min(len(records), 6 * batch_size))
    runs = []
    for workers in args.workers:
        for threads in args.threads:
            cfg = PipelineConfig(batch_size=batch_size, length_buckets=buckets, seed=0, num_workers=workers, read_threads=threads)
            rate, first, cpu = end_to_end(sft_pipeline(records, tokenizer, processor, cfg), args.batches, args.warmup)
            runs.append({"workers": workers, "threads": threads, "samples_per_s": rate, "first_batch_s": first, "main_process_cores": cpu})
            print(f"[{name}] workers={workers} threads={threads}: {rate:.1f} samples/s (first batch after {first:.1f} s, main process {cpu:.2f} cores)", flush=True)
    out["end_to_end"] = runs
    return out, pipeline


def print_scenario(name, out, tokenizer_name):
    print(f"\n## {name}")
    print(f"images: {out['images']}; {out['patches_per_image'][0]}-{out['patches_per_image'][1]} patches, "
          f"{out['image_tokens'][0]}-{out['image_tokens'][1]} image tokens per image; {out['samples']} samples, "
          f"mean {out['mean_tokens']:.0f} tokens; tokenizer {tokenizer_name}")
    print(f"plan (CoT + tokenize, main process): {out['plan_samples_per_s']:.0f} samples/s")
    print("per-sample stages, one process (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in out["stage_ms_per_sample"].items()))
    print("\n| workers | read threads | SFT samples/s | main-process CPU (cores) | first batch (s) |\n|---|---|---|---|---|")
    for r in out["end_to_end"]:
        print(f"| {r['workers']} | {r['threads']} | {r['samples_per_s']:.1f} | {r['main_process_cores']:.2f} | {r['first_batch_s']:.1f} |")
    if out.get("step_note"):
        ms = out.get("step_ms_per_sample")
        print(f"\ntraining step per sample: {'%.1f ms (%.1f samples/s)' % (ms, 1e3 / ms) if ms else 'n/a'} ({out['step_note']})")
    if out.get("estimate"):
        e = out["estimate"]
        print(f"estimate, {e['model']} on one {e['peak_tflops']:.0f} TFLOP/s chip at {e['mfu']:.0%} MFU: "
              f"{e['ms_per_sample_per_chip']:.0f} ms/sample -> {1e3 / e['ms_per_sample_per_chip']:.1f} samples/s per chip to feed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=["dior800", "tiny", "both"], default="both")
    ap.add_argument("--num-images", type=int, default=48, help="800x800 images generated for dior800")
    ap.add_argument("--batch-size", type=int, default=4, help="dior800 batch size (tiny uses 4x)")
    ap.add_argument("--batches", type=int, default=40, help="batches timed per setting (after warm-up)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokenizer", default="qwen2.5", help="dior800 tokenizer: qwen2.5 (the real vocabulary) or small")
    ap.add_argument("--step-ms-per-sample", type=float, default=None, help="dior800: a measured step time to compare")
    ap.add_argument("--step-batches", type=int, default=8, help="tiny: SFT steps timed")
    ap.add_argument("--peak-tflops", type=float, default=990.0, help="for the estimate (H100 SXM bf16 dense)")
    ap.add_argument("--mfu", type=float, default=0.4, help="for the estimate")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from rsground_jax.data import load_split
    from rsground_jax.data.synthetic import generate_dataset
    from rsground_jax.data.tokenizer import load_tokenizer
    from rsground_jax.models.processor import ImageProcessor

    results: dict = {"machine": f"{_cpu_name()}, {os.cpu_count()} cores", "python": sys.version.split()[0]}
    results["effective_cores"] = effective_cores(os.cpu_count() or 1)
    print(f"effective cores free for this run: {results['effective_cores']:.1f} of {os.cpu_count()}", flush=True)
    tmp = tempfile.TemporaryDirectory()
    processor = ImageProcessor()

    def dataset(preset, n):
        root = os.path.join(tmp.name, preset)
        t = time.perf_counter()
        generate_dataset(root, n, seed=0, config=preset)
        rate = n / (time.perf_counter() - t)
        records = [r for split in ("train", "val", "test") for r in load_split(root, split)]
        return records, rate

    if args.scenario in ("dior800", "both"):
        records, gen_rate = dataset("dior", args.num_images)
        out, pipeline = run_scenario("dior800", records, load_tokenizer(args.tokenizer), processor, args, args.batch_size, (1024, 1152, 1280), results)
        out["generate_images_per_s"] = gen_rate
        if args.step_ms_per_sample is not None:
            out["step_ms_per_sample"], out["step_note"] = args.step_ms_per_sample, "given with --step-ms-per-sample"
        plan = pipeline.plan
        est = estimate_step_ms(float(plan.lengths.mean()), float(plan.num_patches.mean()), args.peak_tflops, args.mfu)
        out["estimate"] = {"model": "Qwen2.5-VL-3B", "peak_tflops": args.peak_tflops, "mfu": args.mfu, "ms_per_sample_per_chip": est}
        results["dior800"] = out
    if args.scenario in ("tiny", "both"):
        records, gen_rate = dataset("tiny", 120)
        out, pipeline = run_scenario("tiny", records, load_tokenizer("small"), processor, args, 4 * args.batch_size, None, results)
        out["generate_images_per_s"] = gen_rate
        out["step_ms_per_sample"], out["step_note"] = measure_sft_step_ms(pipeline, args.step_batches)
        results["tiny"] = out

    print(f"\nmachine: {results['machine']} (effective cores free during the run: {results['effective_cores']:.1f})")
    for name, tok in (("dior800", args.tokenizer), ("tiny", "small")):
        if name in results:
            print(f"synthetic generator, {name}: {results[name]['generate_images_per_s']:.1f} images/s (JPEG + XML written)")
            print_scenario(name, results[name], tok)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
