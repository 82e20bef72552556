"""GRPO benchmarks, ours and the reference side by side in one run, printing ratios.

    python benchmarks/grpo.py [--parts rewards step prefill] [--models tiny 50m] [--reps 3]

rewards  format + IoU rewards of 4,096 completions: ours from the token ids on device (`rl.rewards`,
         jitted, after compilation) against a per-sample Python loop in VLM-R1's style (`batch_decode`, then
         per completion a format regex, an `<answer>` regex, a box regex and the IoU in Python). Qwen's tokenizer;
         completions are CoT answers with random boxes, a fifth of them malformed. Target: >= 50x.
step     one GRPO step, 8 prompts x G = 8, 64 new tokens each (no end token), format + IoU rewards, beta 0.04,
         AdamW: ours (`rl.step.make_grpo_step`, one jitted program, after compilation) against the same step built
         from transformers' `generate` (prompts repeated G times, as TRL does) plus a PyTorch loss on the same
         weights: decode + Python rewards, group advantages, policy and reference forwards, the clipped surrogate
         with the k3 KL, backward, AdamW. Tiny model and the ~50M config. Target: >= 3x.
prefill  rollouts with a 448x448 image (256 image tokens) per prompt, 8 prompts x G = 8, 64 new tokens: each
         prompt prefilled once and its cache shared by its G rows (ours) against the same sampler on the
         prompts repeated G times. Prints the time saved.

The machine (CPU or GPU) is printed first; results go to docs/benchmarks.md with the machine named.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rsground_jax.runtime import reexec_with_hugepages  # noqa: E402

P, G, NEW = 8, 8, 64


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


# ----------------------------------------------------------------------------------- VLM-R1-style rewards


def vlm_r1_rewards(texts: list[str], gt: np.ndarray) -> tuple[list[float], list[float]]:
    """VLM-R1's REC rewards, one completion at a time: the format regex and the IoU of the first box in the answer
    (as its `accuracy_reward` for REC does), both in Python."""
    fmt, acc = [], []
    for text, box in zip(texts, gt):
        fmt.append(1.0 if re.fullmatch(r"<think>.*?</think>\s*<answer>.*?</answer>", text, re.DOTALL) else 0.0)
        reward = 0.0
        m = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
        if m:
            b = re.search(r"\[(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\]", m.group(1))
            if b:
                p = [float(v) for v in b.groups()]
                ix = max(0.0, min(p[2], box[2]) - max(p[0], box[0]))
                iy = max(0.0, min(p[3], box[3]) - max(p[1], box[1]))
                inter = ix * iy
                union = (p[2] - p[0]) * (p[3] - p[1]) + (box[2] - box[0]) * (box[3] - box[1]) - inter
                reward = inter / union if union > 0 else 0.0
        acc.append(reward)
    return fmt, acc


def bench_rewards(reps: int) -> None:
    import jax
    import jax.numpy as jnp

    from rsground_jax.data.tokenizer import load_qwen_tokenizer
    from rsground_jax.data.answers import TokenBytes
    from rsground_jax.rl.rewards import reward_terms

    tok = load_qwen_tokenizer()
    rng = np.random.default_rng(0)
    n = 4096
    texts = []
    for i in range(n):
        box = sorted(rng.integers(0, 800, 2)) + sorted(rng.integers(0, 800, 2))
        x1, x2, y1, y2 = box
        text = (f"<think>The expression names the storage tank at the lower left. Candidates: {rng.integers(2, 6)} "
                f"storage tanks; the one at the lower left is at ({x1}, {y1}).</think>\n"
                f"<answer>[{x1}, {y1}, {x2}, {y2}]</answer>")
        if i % 5 == 0:
            text = text.replace("</answer>", "") if i % 10 else text.replace("[", "(")
        texts.append(text)
    ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    T = max(map(len, ids))
    tokens = np.zeros((n, T), np.int32)
    for i, x in enumerate(ids):
        tokens[i, : len(x)] = x
    lengths = np.array(list(map(len, ids)), np.int32)
    xs, ys = np.sort(rng.uniform(0, 800, (n, 2)), 1), np.sort(rng.uniform(0, 800, (n, 2)), 1)
    gt = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1).astype(np.float32)
    hw = np.full((n, 2), 812, np.int32)
    table = jax.tree.map(jnp.asarray, TokenBytes.from_tokenizer(tok).tables())
    fn = jax.jit(lambda t, L, g, h: reward_terms(t, L, table, g, h, {"format": 1.0, "iou": 1.0})[0])
    args = [jnp.asarray(x) for x in (tokens, lengths, gt, hw)]
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t
    ours = _median_time(lambda: jax.block_until_ready(fn(*args)), reps)
    tokens_list = [tokens[i, : lengths[i]].tolist() for i in range(n)]
    ref = _median_time(lambda: vlm_r1_rewards(tok.batch_decode(tokens_list, skip_special_tokens=True), gt), reps)
    out = jax.device_get(fn(*args))
    fmt, acc = vlm_r1_rewards(tok.batch_decode(tokens_list, skip_special_tokens=True), gt)
    agree = float(np.mean(np.isclose(out["iou"], acc, atol=1e-4)))
    print(f"rewards: {n} completions of up to {T} tokens: ours {ours * 1e3:.1f} ms (compile {compile_s:.1f} s), "
          f"VLM-R1-style loop {ref * 1e3:.0f} ms, ratio {ref / ours:.0f}x; IoU agrees on {100 * agree:.1f} %",
          flush=True)


# ----------------------------------------------------------------------------------------------- models


def build(name: str):
    from flax import nnx

    from benchmarks.model_train_step import BENCH_CONFIG, make_config
    from rsground_jax.data.tokenizer import load_qwen_tokenizer, load_small_tokenizer
    from rsground_jax.models import Qwen25VL
    from rsground_jax.train.experiment import tiny_for

    if name == "tiny":
        tok = load_small_tokenizer()
        cfg = tiny_for(tok)
    else:
        tok = load_qwen_tokenizer()  # the first 8,192 Qwen ids: the 50M config's vocabulary
        cfg = make_config(BENCH_CONFIG)
    return Qwen25VL(cfg, rngs=nnx.Rngs(0)), tok


def prompts(cfg, n: int, side: int, rng):
    from PIL import Image

    from rsground_jax.models import ImageProcessor
    from rsground_jax.models.qwen2_5_vl.inputs import prepare_inputs

    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]
    pix = ImageProcessor(max_pixels=side * side)(images)
    k = int(pix["image_grid_thw"][0].prod() // 4)
    text = rng.integers(0, min(cfg.text.vocab_size, 600) - 8, (n, 20))
    ids = np.concatenate([np.full((n, 1), cfg.vision_start_token_id), np.full((n, k), cfg.image_token_id),
                          np.full((n, 1), cfg.vision_end_token_id), text], 1).astype(np.int32)
    prep = prepare_inputs(cfg, ids, None, pix["image_grid_thw"])
    prep["pixel_values"] = pix["pixel_values"]
    return prep, pix, ids


# ------------------------------------------------------------------------------------------ one GRPO step


def torch_device() -> str:
    """'cuda' where JAX runs on a GPU and torch sees one (the reference on the same card), else 'cpu'."""
    import jax
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def bench_step(name: str, reps: int) -> None:
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx
    from transformers import Qwen2_5_VLForConditionalGeneration

    from rsground_jax.models import count_params, save_pretrained
    from rsground_jax.rl import GRPOConfig, TokenBytes
    from rsground_jax.rl.step import PROMPT_KEYS, GRPOStepConfig, make_grpo_step
    from rsground_jax.train import OptimConfig, make_optimizer, stack_micro_batches
    from rsground_jax.train.step import RLTrainState

    model, tok = build(name)
    cfg = model.config
    rng = np.random.default_rng(1)
    prep, pix, ids = prompts(cfg, P, 112, rng)
    gt = np.tile(np.array([[10.0, 20.0, 60.0, 70.0]], np.float32), (P, 1))
    hw = np.full((P, 2), 112, np.int32)
    batch = dict(prep, gt_box_resized=gt, resized_hw=hw, sample_valid=np.ones(P, np.int32))
    batch = stack_micro_batches([batch], PROMPT_KEYS)

    # ours
    graphdef, params = nnx.split(model, nnx.Param)
    opt = OptimConfig(lr=1e-6, total_steps=100, end_lr_fraction=1.0, clip_norm=None)
    tx = make_optimizer(opt)
    g = GRPOConfig(num_generations=G, max_new_tokens=NEW, beta=0.04, temperature=1.0)
    step = make_grpo_step(graphdef, tx, GRPOStepConfig(grpo=g, rewards=(("format", 1.0), ("iou", 1.0)), eos_ids=(),
                                                       pad_id=0))
    state = RLTrainState.create(jax.tree.map(jnp.copy, params), tx, rng=jax.random.key_data(jax.random.key(0)))
    ref_params = jax.tree.map(jnp.copy, params)
    table = jax.tree.map(jnp.asarray, TokenBytes.from_tokenizer(tok, cfg.text.vocab_size).tables())
    dev_batch = jax.tree.map(jnp.asarray, batch)
    t = time.perf_counter()
    state, m = step(state, ref_params, table, dev_batch)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t

    def ours_once():
        nonlocal state
        state, metrics = step(state, ref_params, table, dev_batch)
        jax.block_until_ready(metrics)

    ours = _median_time(ours_once, reps)
    # the rollouts alone, for where the time goes
    from rsground_jax.generate.sampler import SamplingConfig, generate_fn

    prompt = {k: dev_batch[k][0] if k != "vision" else jax.tree.map(lambda x: x[0], dev_batch[k])
              for k in ("input_ids", "attention_mask", "position_ids", "pixel_values", "vision")}
    roll = jax.jit(lambda p, b, k: generate_fn(graphdef, p, b, k, SamplingConfig(max_new_tokens=NEW, temperature=1.0),
                                               None, G))
    jax.block_until_ready(roll(state.params, prompt, jax.random.key(1)))
    ours_roll = _median_time(lambda: jax.block_until_ready(roll(state.params, prompt, jax.random.key(1))), reps)

    # transformers + PyTorch, on the same weights
    dev = torch_device()  # the same card as ours where JAX runs on a GPU
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(model, d)
        policy = Qwen2_5_VLForConditionalGeneration.from_pretrained(d).train().to(dev)
        reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(d).eval().to(dev)
    optim = torch.optim.AdamW(policy.parameters(), lr=1e-6, weight_decay=0.0)
    rep_ids = torch.tensor(np.repeat(ids, G, 0), dtype=torch.long, device=dev)
    grid = torch.tensor(np.repeat(pix["image_grid_thw"], G, 0), device=dev)
    pixels = torch.tensor(np.repeat(pix["pixel_values"].reshape(P, -1, pix["pixel_values"].shape[-1]), G, 0)
                          .reshape(-1, pix["pixel_values"].shape[-1]), device=dev)
    gt_rows = np.repeat(gt, G, 0)

    def token_logps(net, seq, L):
        mask = torch.ones_like(seq)
        out = net(input_ids=seq, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid,
                  mm_token_type_ids=(seq == cfg.image_token_id).long())
        logits = out.logits[:, L - 1:-1].float()
        return torch.gather(torch.log_softmax(logits, -1), 2, seq[:, L:, None])[..., 0]

    def reference_generate():
        with torch.no_grad():
            return policy.generate(input_ids=rep_ids, attention_mask=torch.ones_like(rep_ids), pixel_values=pixels,
                                   image_grid_thw=grid, mm_token_type_ids=(rep_ids == cfg.image_token_id).long(),
                                   do_sample=True, temperature=1.0, top_k=0, max_new_tokens=NEW, min_new_tokens=NEW,
                                   eos_token_id=None, pad_token_id=0,
                                   suppress_tokens=[cfg.image_token_id, cfg.video_token_id])

    def reference_step():
        with torch.no_grad():
            seq = policy.generate(input_ids=rep_ids, attention_mask=torch.ones_like(rep_ids), pixel_values=pixels,
                                  image_grid_thw=grid, mm_token_type_ids=(rep_ids == cfg.image_token_id).long(),
                                  do_sample=True, temperature=1.0, top_k=0, max_new_tokens=NEW, min_new_tokens=NEW,
                                  eos_token_id=None, pad_token_id=0,
                                  # an image token in a completion would make the teacher-forced pass expect an image
                                  suppress_tokens=[cfg.image_token_id, cfg.video_token_id])
        L = rep_ids.shape[1]
        texts = tok.batch_decode(seq[:, L:].tolist(), skip_special_tokens=True)
        fmt, acc = vlm_r1_rewards(texts, gt_rows)
        r = torch.tensor(np.add(fmt, acc), dtype=torch.float32, device=dev).view(P, G)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1, 1)
        with torch.no_grad():
            ref_lp = token_logps(reference, seq, L)
        lp = token_logps(policy, seq, L)
        ratio = torch.exp(lp - lp.detach())
        pg = -torch.minimum(ratio * adv, torch.clamp(ratio, 0.8, 1.2) * adv)
        kl = torch.exp(ref_lp - lp) - (ref_lp - lp) - 1
        loss = (pg + 0.04 * kl).mean(1).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        if dev == "cuda":
            torch.cuda.synchronize()

    reference_step()  # warm-up
    ref = _median_time(reference_step, reps)
    ref_roll = _median_time(lambda: reference_generate().cpu(), reps)  # .cpu(): waits for the card
    print(f"step {name:>4s} ({count_params(cfg) / 1e6:.1f}M): {P} prompts x G={G}, {NEW} new tokens: ours "
          f"{ours:.2f} s (compile {compile_s:.0f} s), transformers generate + PyTorch loss {ref:.2f} s, "
          f"ratio {ref / ours:.1f}x; of which rollouts: ours {ours_roll:.2f} s, generate {ref_roll:.2f} s "
          f"({ref_roll / ours_roll:.1f}x)", flush=True)


# ---------------------------------------------------------------------------------- shared prefill


def bench_prefill(name: str, reps: int) -> None:
    import jax

    from rsground_jax.generate import Sampler, SamplingConfig
    from rsground_jax.models.qwen2_5_vl.inputs import prepare_inputs

    model, _ = build(name)
    cfg = model.config
    rng = np.random.default_rng(2)
    prep, pix, ids = prompts(cfg, P, 448, rng)
    image_tokens = int((ids[0] == cfg.image_token_id).sum())
    rep = prepare_inputs(cfg, np.repeat(ids, G, 0), None, np.repeat(pix["image_grid_thw"], G, 0))
    per_image = pix["pixel_values"].shape[0] // P
    rep["pixel_values"] = np.repeat(pix["pixel_values"].reshape(P, per_image, -1), G, 0).reshape(P * G * per_image, -1)
    sampler = Sampler(model)
    scfg = SamplingConfig(max_new_tokens=NEW, temperature=1.0)
    key = jax.random.key(0)
    shared_tokens = sampler.sample(prep, scfg, key, num_generations=G)[0]  # compiles
    repeated_tokens = sampler.sample(rep, scfg, key)[0]
    shared = _median_time(lambda: sampler.sample(prep, scfg, key, num_generations=G), reps)
    repeated = _median_time(lambda: sampler.sample(rep, scfg, key), reps)
    same = np.array_equal(shared_tokens, repeated_tokens)
    print(f"prefill {name:>4s}: {P} prompts of {ids.shape[1]} tokens ({image_tokens} image tokens) x G={G}, {NEW} new "
          f"tokens: shared prefill {shared:.2f} s, repeated prompts {repeated:.2f} s: {repeated - shared:.2f} s saved "
          f"({repeated / shared:.2f}x){'' if same else ' (tokens differ)'}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["rewards", "step", "prefill"])
    ap.add_argument("--models", nargs="+", default=["tiny", "50m"])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    reexec_with_hugepages(sys.argv)
    import jax
    import torch

    cpus = len(os.sched_getaffinity(0))
    torch.set_num_threads(cpus)
    backend = jax.default_backend()
    where = f"{platform.machine()}, {cpus} of {os.cpu_count()} CPUs" if backend == "cpu" else jax.devices()[0].device_kind
    print(f"machine: {where}; jax {jax.__version__} ({backend}), torch {torch.__version__} ({torch_device()}); "
          f"the Python reward loop on this host's CPU", flush=True)
    if "rewards" in args.parts:
        bench_rewards(args.reps)
    for name in args.models:
        if "step" in args.parts:
            bench_step(name, args.reps)
        if "prefill" in args.parts:
            bench_prefill(name, args.reps)


if __name__ == "__main__":
    main()
