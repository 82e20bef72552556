"""Training step (forward + backward) of our Qwen2.5-VL against transformers' PyTorch model, same weights and
inputs, both float32 on the CPU; plus peak memory of loading a ~1 GB checkpoint (ours and transformers').

    python benchmarks/model_train_step.py [--steps 5] [--batch 2] [--skip-load]

Prints both step times, the ratio (ours / PyTorch, lower is better; target <= 1.0), our achieved GFLOP/s
(XLA's FLOP count of the compiled step / step time) against the machine's measured float32 matmul rate, and
the loading peaks as multiples of the checkpoint size (target <= 1.5x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from rsground_jax.runtime import hugepages_active, reexec_with_hugepages

# ~50M parameters: text hidden 512 x 10 layers, vision hidden 256 x 8 blocks (2 of them full attention).
BENCH_CONFIG = dict(
    text=dict(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=10,
              num_attention_heads=8, num_key_value_heads=2, mrope_section=(8, 12, 12), max_position_embeddings=4096),
    vision=dict(depth=8, hidden_size=256, intermediate_size=768, num_heads=4, out_hidden_size=512,
                fullatt_block_indexes=(3, 7)),
)
# ~1 GB in float32 for the loading measurement.
LOAD_CONFIG = dict(
    text=dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
              num_attention_heads=16, num_key_value_heads=4, mrope_section=(8, 12, 12), max_position_embeddings=4096),
    vision=dict(depth=8, hidden_size=512, intermediate_size=1536, num_heads=8, out_hidden_size=1024,
                fullatt_block_indexes=(3, 7)),
)


def make_config(spec):
    from rsground_jax.models.qwen2_5_vl.config import Qwen25VLConfig, TextConfig, VisionConfig

    v = spec["text"]["vocab_size"]
    return Qwen25VLConfig(text=TextConfig(**spec["text"]), vision=VisionConfig(**spec["vision"]),
                          tie_word_embeddings=False, image_token_id=v - 1, video_token_id=v - 2,
                          vision_start_token_id=v - 3, vision_end_token_id=v - 4, eos_token_id=v - 5, bos_token_id=v - 6)


def train_flops(cfg, batch: int, seq_len: int, patches_per_image: int) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3x forward), counted from the shapes.

    XLA's `cost_analysis()` counts the body of a `while` loop once, and our layers run in `lax.scan`, so it
    undercounts by the number of layers; this counts every layer. Attention scores and weighted sums are
    included (full-attention vision blocks over the whole image, window blocks over 64-patch windows).
    """
    t, v = cfg.text, cfg.vision
    D, N, K, H, F = t.hidden_size, t.num_attention_heads, t.num_key_value_heads, t.head_dim, t.intermediate_size
    text_macs = t.num_hidden_layers * (D * N * H * 2 + 2 * D * K * H + 3 * D * F + 2 * seq_len * N * H) + D * t.vocab_size
    C, Fv = v.hidden_size, v.intermediate_size
    window = (v.window_size // v.patch_size) ** 2
    full = len(v.fullatt_block_indexes)
    block = 4 * C * C + 3 * C * Fv
    vis_macs = v.patch_dim * C + v.depth * block + 2 * C * (full * patches_per_image + (v.depth - full) * window)
    vis_macs += (4 * C * 4 * C + 4 * C * v.out_hidden_size) / 4  # merger, per patch
    fwd = 2 * batch * (seq_len * text_macs + patches_per_image * vis_macs)
    return 3 * fwd


def matmul_rate(n=2048, reps=5):
    """Measured float32 matmul GFLOP/s on this CPU through XLA (what our step's dots run on)."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def bench_train_step(steps, batch):
    import jax
    import jax.numpy as jnp
    import optax  # noqa: F401  (imported to show the dependency set matches training)
    import torch
    from flax import nnx
    from PIL import Image
    from transformers import Qwen2_5_VLForConditionalGeneration

    from rsground_jax.models import ImageProcessor, Qwen25VL, count_params, prepare_inputs, save_pretrained

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    cfg = make_config(BENCH_CONFIG)
    model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(batch)]
    pix = ImageProcessor()(images)
    n_img = int(pix["image_grid_thw"][0].prod() // 4)
    text = 128
    ids = np.concatenate([
        np.full((batch, 1), cfg.vision_start_token_id), np.full((batch, n_img), cfg.image_token_id),
        np.full((batch, 1), cfg.vision_end_token_id), rng.integers(0, cfg.text.vocab_size - 8, (batch, text))], 1)
    mask = np.ones_like(ids)
    labels = np.where(ids == cfg.image_token_id, -100, ids)
    prep = prepare_inputs(cfg, ids, mask, pix["image_grid_thw"])

    graphdef, params = nnx.split(model, nnx.Param)

    def loss_fn(params, ids, mask, pos, px, vision, labels):
        m = nnx.merge(graphdef, params)
        logits, _ = m.forward(ids, mask, pos, px, vision)
        tgt = labels[:, 1:]
        valid = tgt >= 0
        lp = jax.nn.log_softmax(logits[:, :-1], -1)
        nll = -jnp.take_along_axis(lp, jnp.maximum(tgt, 0)[..., None], -1)[..., 0]
        return jnp.sum(nll * valid) / jnp.sum(valid)

    step = jax.jit(jax.value_and_grad(loss_fn))
    args = (params, jnp.asarray(prep["input_ids"]), jnp.asarray(prep["attention_mask"]), jnp.asarray(prep["position_ids"]),
            jnp.asarray(pix["pixel_values"]), jax.tree.map(jnp.asarray, prep["vision"]), jnp.asarray(labels))
    compiled = step.lower(*args).compile()
    flops = train_flops(cfg, batch, ids.shape[1], int(pix["image_grid_thw"][0].prod()))
    loss, _ = compiled(*args)
    jax.block_until_ready(loss)

    with tempfile.TemporaryDirectory() as d:
        save_pretrained(model, d)
        hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(d, dtype=torch.float32)
    hf.train()
    t_in = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                pixel_values=torch.tensor(pix["pixel_values"]), image_grid_thw=torch.tensor(pix["image_grid_thw"]),
                mm_token_type_ids=torch.tensor((ids == cfg.image_token_id).astype(np.int64)), labels=torch.tensor(labels))

    def torch_step():
        hf.zero_grad(set_to_none=True)
        out = hf(**t_in)
        out.loss.backward()
        return float(out.loss)

    ref_loss = torch_step()
    ours_t, ref_t = [], []
    for _ in range(steps):  # interleaved so that machine noise hits both sides alike
        t = time.perf_counter()
        loss, grads = compiled(*args)
        jax.block_until_ready(grads)
        ours_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        torch_step()
        ref_t.append(time.perf_counter() - t)
    ours_med, ref_med = float(np.median(ours_t)), float(np.median(ref_t))
    return {
        "params": count_params(cfg), "batch": batch, "tokens_per_sample": ids.shape[1], "image_tokens": n_img,
        "loss_ours": float(loss), "loss_torch": ref_loss,
        "ours_s": ours_med, "torch_s": ref_med, "ratio": ours_med / ref_med,
        "step_gflop": flops / 1e9, "ours_gflops": flops / ours_med / 1e9,
    }


LOAD_CHILD = r"""
import json, os, sys, time
which, path = sys.argv[1], sys.argv[2]
import numpy as np
if which == "ours":
    import jax, jax.numpy as jnp
    from rsground_jax.models import load_pretrained
else:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
base = rss()
t = time.perf_counter()
if which == "ours":
    m = load_pretrained(path, dtype=jnp.float32)
    jax.block_until_ready(jax.tree.leaves(__import__("flax").nnx.state(m)))
else:
    m = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
dt = time.perf_counter() - t
# VmHWM (peak RSS of this process image); ru_maxrss would include the parent's peak inherited over fork
with open("/proc/self/status") as f:
    peak = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
print(json.dumps({"base": base, "peak": peak, "seconds": dt}))
"""


def bench_load():
    """Write a ~1 GB float32 checkpoint, then load it in fresh processes (ours, transformers)."""
    with tempfile.TemporaryDirectory() as d:
        writer = (
            "import sys; sys.path.insert(0, %r)\n"
            "from benchmarks.model_train_step import make_config, LOAD_CONFIG\n"
            "from flax import nnx\n"
            "from rsground_jax.models import Qwen25VL, save_pretrained\n"
            "save_pretrained(Qwen25VL(make_config(LOAD_CONFIG), rngs=nnx.Rngs(0)), %r)\n"
        ) % (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d)
        subprocess.run([sys.executable, "-c", writer], check=True)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors"))
        out = {"checkpoint_bytes": size}
        for which in ("ours", "transformers"):
            r = subprocess.run([sys.executable, "-c", LOAD_CHILD, which, d], check=True, capture_output=True, text=True)
            m = json.loads(r.stdout.strip().splitlines()[-1])
            out[which] = {"peak_over_size": (m["peak"] - m["base"]) / size, "seconds": m["seconds"]}
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--skip-load", action="store_true")
    args = ap.parse_args()
    reexec_with_hugepages(sys.argv)  # XLA:CPU's per-call temporaries on huge pages, as `rsground` runs
    print(f"malloc on transparent huge pages: {hugepages_active()} (both sides; RSGROUND_NO_HUGEPAGES=1 turns it off)")
    print(f"machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs")
    rate = matmul_rate()
    r = bench_train_step(args.steps, args.batch)
    print(f"model: {r['params'] / 1e6:.1f}M params; batch {r['batch']} x ({r['image_tokens']} image + 130 text) tokens, "
          f"224x224 images; loss ours {r['loss_ours']:.4f} / torch {r['loss_torch']:.4f}")
    print(f"train step (fwd+bwd, float32): ours {r['ours_s'] * 1e3:.0f} ms, transformers {r['torch_s'] * 1e3:.0f} ms, "
          f"ratio ours/torch = {r['ratio']:.2f} (target <= 1.0)")
    print(f"ours: {r['step_gflop']:.1f} GFLOP per step -> {r['ours_gflops']:.1f} GFLOP/s; "
          f"measured float32 matmul rate {rate:.1f} GFLOP/s ({100 * r['ours_gflops'] / rate:.0f}% of it)")
    if not args.skip_load:
        m = bench_load()
        gb = m["checkpoint_bytes"] / 1e9
        for which in ("ours", "transformers"):
            print(f"load {gb:.2f} GB checkpoint ({which}): peak RSS increase {m[which]['peak_over_size']:.2f}x its size, "
                  f"{m[which]['seconds']:.1f} s")


if __name__ == "__main__":
    main()
