"""One SFT step and one GRPO step of the 3B preset on one accelerator, ours beside transformers' PyTorch model on
the same card in the same run: step time, tokens per second and MFU against the card's peak.

    python benchmarks/accelerator_3b.py [--parts sft grpo] [--model 3b] [--batch 8] [--seq 1024] [--steps 5]

Both sides: random weights in float32 (master weights), bfloat16 compute, AdamW, full rematerialization
(transformers: gradient checkpointing), the vision tower frozen, one square image per sequence.
  sft   `--batch` sequences of `--seq` tokens, one `--image-side` image each; the loss on every text token.
        Ours: `train.make_sft_step` (one jitted program). Reference: forward, cross-entropy, backward and a fused
        AdamW step under `torch.autocast(bfloat16)`.
  grpo  `--prompts` prompts x G = `--generations`, `--new-tokens` tokens each (no end token), format + IoU
        rewards, beta 0 (a 3B policy, its Adam moments and gradients fill most of an 80 GB card; a reference
        copy would not fit beside them on either side). Ours: `rl.step.make_grpo_step` (rollouts from one shared
        prefill, rewards on device, the update: one program). Reference: `generate` on the prompts repeated G
        times (as TRL does), Python rewards after `batch_decode`, the teacher-forced policy forward, the
        clipped surrogate, backward, AdamW.
MFU: the step's model FLOPs (`plan.model_flops` for SFT, `plan.grpo_flops` for GRPO: 6 x matmul parameters x
tokens plus attention, the usual convention, recomputation not counted) over the step time and the card's
dense bfloat16 peak (`--peak-tflops`, default from the card's name: H100 and H200 989). Target: SFT >= 40 %
on an H100. Each side runs in its own process, one after the other, so neither holds memory the other needs.
`--model tiny` runs the same code on the CPU in a minute (the script's own test). Results go to
docs/benchmarks.md with the card named.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}  # dense bfloat16 TFLOP/s


def _config(name: str):
    from rsground_jax.models.qwen2_5_vl.config import preset

    return preset(name)


def _inputs(args, cfg, *, grpo: bool):
    """The host batch (ours, stacked) and the same arrays for transformers."""
    from rsground_jax import plan

    rng = np.random.default_rng(0)
    rows = args.prompts if grpo else args.batch
    b = plan.grpo_batch(cfg, rows, args.seq, args.image_side) if grpo else plan.sft_batch(cfg, rows, args.seq, args.image_side)
    ids = b["input_ids"][0]
    text = ids >= 0
    for special in (cfg.image_token_id, cfg.vision_start_token_id, cfg.vision_end_token_id):
        text &= ids != special
    ids = np.where(text, rng.integers(10, 1000, ids.shape), ids).astype(np.int32)  # random text tokens
    b["input_ids"] = ids[None]
    pixels = rng.normal(size=b["pixel_values"].shape).astype(np.float32)  # [1, 1, patches + padding, dim]
    b["pixel_values"] = pixels
    side = args.image_side // cfg.vision.patch_size
    side -= side % cfg.vision.spatial_merge_size  # as `plan` lays the image out
    return b, {"input_ids": ids, "pixel_values": pixels[0, 0, : rows * side * side],
               "image_grid_thw": np.tile([[1, side, side]], (rows, 1))}


def _median(times):
    return float(np.median(times))


def ours(args, part: str) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from rsground_jax import plan
    from rsground_jax.models import Qwen25VL
    from rsground_jax.train import OptimConfig, make_optimizer

    cfg = _config(args.model)
    model = Qwen25VL(cfg, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, remat=args.remat)
    graphdef, params = nnx.split(model, nnx.Param)
    del model
    tx = make_optimizer(OptimConfig(lr=1e-6, warmup_steps=0, total_steps=100, freeze_vision=True, clip_norm=None))
    host, _ = _inputs(args, cfg, grpo=part == "grpo")
    batch = jax.tree.map(jnp.asarray, host)
    if part == "sft":
        from rsground_jax.train import TrainState, make_sft_step

        state = TrainState.create(params, tx)
        step = make_sft_step(graphdef, tx, freeze_vision=True)
        call = lambda s: step(s, batch)  # noqa: E731
        image_tokens = int((host["input_ids"][0, 0] == cfg.image_token_id).sum())
        flops = plan.model_flops(cfg, args.batch, args.seq, image_tokens)
        tokens = args.batch * args.seq
    else:
        from rsground_jax.data.answers import TokenBytes
        from rsground_jax.data.tokenizer import load_small_tokenizer
        from rsground_jax.rl.config import GRPOConfig
        from rsground_jax.rl.step import GRPOStepConfig, make_grpo_step
        from rsground_jax.train.step import RLTrainState

        state = RLTrainState.create(params, tx, rng=jax.random.key_data(jax.random.key(0)))
        g = GRPOConfig(num_generations=args.generations, max_new_tokens=args.new_tokens, beta=0.0)
        step = make_grpo_step(graphdef, tx, GRPOStepConfig(grpo=g, rewards=(("format", 1.0), ("iou", 1.0)),
                                                           eos_ids=(), pad_id=0, freeze_vision=True))
        tables = jax.tree.map(jnp.asarray, TokenBytes.from_tokenizer(load_small_tokenizer(), cfg.text.vocab_size).tables())
        call = lambda s: step(s, None, tables, batch)  # noqa: E731
        image_tokens = int((host["input_ids"][0, 0] == cfg.image_token_id).sum())
        phases = plan.grpo_flops(cfg, args.prompts, args.seq, image_tokens, args.generations, args.new_tokens,
                                 reference=False)
        flops = sum(phases.values())
        tokens = args.prompts * (args.seq + args.generations * args.new_tokens)
    t = time.perf_counter()
    state, m = call(state)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        state, m = call(state)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    return {"side": "ours", "part": part, "seconds": _median(times), "compile_seconds": compile_s, "flops": flops,
            "tokens": tokens, "device": str(jax.devices()[0].device_kind)}


def reference(args, part: str) -> dict:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from rsground_jax import plan

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = _config(args.model)
    torch.manual_seed(0)
    with torch.device(dev):  # initialized on the card: a 3B model's random init on the host takes minutes
        net = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**cfg.to_hf_dict())).train()
    net.gradient_checkpointing_enable()
    net.model.visual.requires_grad_(False)  # frozen, as ours
    optim = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-6, weight_decay=0.0,
                              fused=dev == "cuda")
    _, arrays = _inputs(args, cfg, grpo=part == "grpo")
    ids = torch.tensor(arrays["input_ids"], dtype=torch.long, device=dev)
    pixels = torch.tensor(arrays["pixel_values"], device=dev)
    grid = torch.tensor(arrays["image_grid_thw"], device=dev)
    image_tokens = int((arrays["input_ids"][0] == cfg.image_token_id).sum())
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def forward(seq, pix, thw):
        with torch.autocast(dev, dtype=torch.bfloat16):
            return net(input_ids=seq, attention_mask=torch.ones_like(seq), pixel_values=pix, image_grid_thw=thw,
                       mm_token_type_ids=(seq == cfg.image_token_id).long()).logits

    if part == "sft":
        def step():
            logits = forward(ids, pixels, grid)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sync()

        flops = plan.model_flops(cfg, args.batch, args.seq, image_tokens)
        tokens = args.batch * args.seq
    else:
        from benchmarks.grpo import vlm_r1_rewards
        from rsground_jax.data.tokenizer import load_small_tokenizer

        tok = load_small_tokenizer()
        P, G, T = args.prompts, args.generations, args.new_tokens
        rep_ids = ids.repeat_interleave(G, 0)
        rep_grid = grid.repeat_interleave(G, 0)
        rep_pix = pixels.view(P, -1, pixels.shape[-1]).repeat_interleave(G, 0).view(-1, pixels.shape[-1])
        gt = np.tile(np.array([[10.0, 20.0, 60.0, 70.0]], np.float32), (P * G, 1))

        def step():
            net.eval()  # generate with its KV cache (gradient checkpointing turns the cache off in training mode)
            with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16):
                seq = net.generate(input_ids=rep_ids, attention_mask=torch.ones_like(rep_ids), pixel_values=rep_pix,
                                   image_grid_thw=rep_grid, mm_token_type_ids=(rep_ids == cfg.image_token_id).long(),
                                   do_sample=True, temperature=1.0, top_k=0, max_new_tokens=T, min_new_tokens=T,
                                   eos_token_id=None, pad_token_id=0, use_cache=True,
                                   suppress_tokens=[cfg.image_token_id, cfg.video_token_id])
            net.train()
            L = rep_ids.shape[1]
            fmt, acc = vlm_r1_rewards(tok.batch_decode(seq[:, L:].tolist(), skip_special_tokens=True), gt)
            r = torch.tensor(np.add(fmt, acc), dtype=torch.float32, device=dev).view(P, G)
            adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1, 1)
            logits = forward(seq, rep_pix, rep_grid)[:, L - 1:-1].float()
            lp = torch.gather(torch.log_softmax(logits, -1), 2, seq[:, L:, None])[..., 0]
            ratio = torch.exp(lp - lp.detach())
            loss = -torch.minimum(ratio * adv, torch.clamp(ratio, 0.8, 1.2) * adv).mean(1).mean()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sync()

        flops = sum(plan.grpo_flops(cfg, P, args.seq, image_tokens, G, T, reference=False).values())
        tokens = P * (args.seq + G * T)
    t = time.perf_counter()
    step()
    warm = time.perf_counter() - t
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    return {"side": "transformers", "part": part, "seconds": _median(times), "compile_seconds": warm, "flops": flops,
            "tokens": tokens, "device": name}


def peak_tflops(args, device: str) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    return next((v for k, v in PEAKS.items() if k in device.upper()), None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=["sft", "grpo"], choices=["sft", "grpo"])
    ap.add_argument("--model", default="3b", help="a preset (3b; tiny for a CPU trial)")
    ap.add_argument("--batch", type=int, default=8, help="SFT: sequences a step")
    ap.add_argument("--seq", type=int, default=1024, help="tokens a sequence (SFT) or a prompt (GRPO), image included")
    ap.add_argument("--image-side", type=int, default=448)
    ap.add_argument("--prompts", type=int, default=8, help="GRPO: prompts a step")
    ap.add_argument("--generations", type=int, default=8, help="GRPO: completions per prompt")
    ap.add_argument("--new-tokens", type=int, default=256, help="GRPO: tokens a completion")
    ap.add_argument("--remat", default="full", choices=["none", "full", "dots"])
    ap.add_argument("--steps", type=int, default=5, help="timed steps after the first (median)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bfloat16 peak")
    ap.add_argument("--side", choices=["ours", "transformers"], help=argparse.SUPPRESS)  # a child process
    ap.add_argument("--part", choices=["sft", "grpo"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        print("RESULT " + json.dumps((ours if args.side == "ours" else reference)(args, args.part)), flush=True)
        return
    child = [a for a in sys.argv[1:]]
    for part in args.parts:
        results = {}
        for side in ("ours", "transformers"):
            out = subprocess.run([sys.executable, os.path.abspath(__file__), *child, "--side", side, "--part", part],
                                 capture_output=True, text=True)
            if out.returncode != 0 or "RESULT " not in out.stdout:
                print(f"{part} {side}: failed (exit {out.returncode})\n{out.stderr[-3000:]}", flush=True)
                continue
            results[side] = json.loads(out.stdout.split("RESULT ", 1)[1])
        for side, r in results.items():
            peak = peak_tflops(args, r["device"])
            mfu = f"{r['flops'] / r['seconds'] / (peak * 1e12):.1%}" if peak else "n/a (no peak known)"
            print(f"{part} {args.model} {side:>12s} on {r['device']}: {r['seconds']:.3f} s a step "
                  f"(first {r['compile_seconds']:.0f} s), {r['tokens'] / r['seconds']:,.0f} tokens/s, "
                  f"{r['flops'] / r['seconds'] / 1e12:.1f} TFLOP/s, MFU {mfu}", flush=True)
        if len(results) == 2:
            print(f"{part} {args.model}: transformers / ours = "
                  f"{results['transformers']['seconds'] / results['ours']['seconds']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
