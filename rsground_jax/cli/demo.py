"""`rsground demo`: the main job.

Today (model issue): builds the tiny Qwen2.5-VL preset, draws an aerial-looking test image, runs the image
processor, a jitted forward pass and greedy KV-cache generation, and round-trips the weights through the
Hugging Face format, printing what it did. The CoT-SFT issue turns this into the full demo (synthetic data,
the shipped base model, CoT-SFT, evaluation).
"""

from __future__ import annotations

import argparse
import tempfile
import time


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the embedded demo on the CPU",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="seed for the image and the random weights")
    p.add_argument("--image-size", type=int, default=224, help="side of the generated square image in pixels")
    p.set_defaults(func=run)


def _scene(rng, size):
    """A field-like background with a few coloured rectangles (a stand-in until the synthetic generator)."""
    import numpy as np

    img = np.empty((size, size, 3), np.uint8)
    img[...] = (96, 120, 72)
    img += rng.integers(0, 24, img.shape, dtype=np.uint8)
    for _ in range(4):
        x, y = rng.integers(0, size - 24, 2)
        w, h = rng.integers(8, 24, 2)
        img[y:y + h, x:x + w] = rng.integers(0, 256, 3)
    return img


def run(args) -> int:
    import jax
    import numpy as np
    from flax import nnx
    from PIL import Image

    from ..generate import SamplingConfig, generate
    from ..models import ImageProcessor, Qwen25VL, count_params, load_pretrained, prepare_inputs, save_pretrained
    from ..models.qwen2_5_vl import tiny

    rng = np.random.default_rng(args.seed)
    config = tiny()
    model = Qwen25VL(config, rngs=nnx.Rngs(args.seed))
    print(f"tiny Qwen2.5-VL: {count_params(config):,} parameters on {jax.devices()[0].platform}")

    image = Image.fromarray(_scene(rng, args.image_size))
    pix = ImageProcessor()([image])
    n_img = int(pix["image_grid_thw"].prod() // 4)
    prompt = [config.bos_token_id, config.vision_start_token_id] + [config.image_token_id] * n_img + \
             [config.vision_end_token_id] + list(rng.integers(0, 500, 12))
    batch = prepare_inputs(config, np.array([prompt]), None, pix["image_grid_thw"])
    batch["pixel_values"] = pix["pixel_values"]
    print(f"image {args.image_size}x{args.image_size} -> grid {pix['image_grid_thw'][0].tolist()}, "
          f"{n_img} image tokens, prompt of {len(prompt)} tokens")

    forward = jax.jit(lambda ids, mask, pos, px, vis: model.forward(ids, mask, pos, px, vis)[0])
    t0 = time.perf_counter()
    logits = forward(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["pixel_values"],
                     batch["vision"]).block_until_ready()
    print(f"jitted forward: logits {tuple(logits.shape)} in {time.perf_counter() - t0:.2f}s (incl. compile)")

    t0 = time.perf_counter()
    tokens, _ = generate(model, batch, SamplingConfig(max_new_tokens=16))
    print(f"greedy decode (KV cache, while_loop): {tokens[0].tolist()} in {time.perf_counter() - t0:.2f}s")

    with tempfile.TemporaryDirectory() as d:
        save_pretrained(model, d)
        again = load_pretrained(d)
        same = np.array_equal(np.asarray(again(batch["input_ids"], None, pix["pixel_values"], pix["image_grid_thw"])),
                              np.asarray(model(batch["input_ids"], None, pix["pixel_values"], pix["image_grid_thw"])))
        print(f"Hugging Face export and reload: logits identical = {same}")
    return 0 if same else 1
