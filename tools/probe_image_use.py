"""Does a model use the image? Its SFT loss on a split with the right images, with the images shuffled across
the batch, and with blank (zero after normalization, i.e. mean-gray) images.

    python tools/probe_image_use.py --model rsground_jax/assets/base_model --data runs/demo/data [--split val]

A model on the image-blind plateau gives three equal losses; the gap between "shuffled" and "real" measures how
much of what it predicts comes from the picture (docs/base_model.md). The prompt, pixel budget and answer
style are the ones stored beside the model (`rsground_prompt.json`).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def probe(model_dir: str, data_root: str, split: str, batches: int, batch_size: int, length_bucket: int) -> dict:
    import jax
    import jax.numpy as jnp

    from rsground_jax.data import load_split
    from rsground_jax.data.pipeline import PipelineConfig, sft_pipeline
    from rsground_jax.data.tokenizer import load_tokenizer
    from rsground_jax.models import load_pretrained
    from rsground_jax.data.chat import prompt_from_spec
    from rsground_jax.models.model_dir import read_prompt_spec
    from rsground_jax.train.losses import sft_cross_entropy
    from rsground_jax.models.qwen2_5_vl.inputs import add_vision_inputs, static_vision_sizes

    model = load_pretrained(model_dir)
    template, proc, style = prompt_from_spec(read_prompt_spec(model_dir))
    records = load_split(data_root, split)
    pl = sft_pipeline(records, load_tokenizer(model_dir), proc, PipelineConfig(
        batch_size=batch_size, length_buckets=(length_bucket,), shuffle=False, num_epochs=1, answer_style=style),
        template=template)

    @jax.jit
    def loss(ids, mask, pos, px, vision, loss_mask):
        logits, _ = model.forward(ids, mask, pos, px, vision)
        return sft_cross_entropy(logits, ids, loss_mask)

    sums = {"real": 0.0, "shuffled": 0.0, "blank": 0.0}
    count = 0.0
    for i, batch in enumerate(pl):
        if i == batches:
            break
        grid = np.asarray(batch["image_grid_thw"])
        per_image = grid.prod(-1)
        if len(set(per_image.tolist())) != 1:
            raise ValueError(f"{data_root}: shuffling images across a batch needs images of one size; batch {i} "
                             f"has patch counts {sorted(set(per_image.tolist()))}")
        nw, fs = static_vision_sizes(pl.plan.grid_thw, model.config.vision, batch_size, batch["pixel_values"].shape[0])
        batch = add_vision_inputs(batch, model.config.vision, num_windows=nw, frame_slots=fs)
        px = np.asarray(batch["pixel_values"])
        n = int(per_image.sum())
        shuffled = px.copy()
        shuffled[:n] = np.roll(px[:n].reshape(len(grid), per_image[0], -1), 1, axis=0).reshape(n, -1)
        args = [jnp.asarray(batch[k]) for k in ("input_ids", "attention_mask", "position_ids")]
        vision = jax.tree.map(jnp.asarray, batch["vision"])
        for name, pixels in (("real", px), ("shuffled", shuffled), ("blank", np.zeros_like(px))):
            s, c = loss(*args, jnp.asarray(pixels), vision, jnp.asarray(batch["loss_mask"]))
            sums[name] += float(s)
        count += float(c)
    out = {k: v / max(count, 1.0) for k, v in sums.items()}
    out["shuffled_minus_real"] = out["shuffled"] - out["real"]
    out["target_tokens"] = count
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF model directory (with rsground_prompt.json)")
    ap.add_argument("--data", required=True, help="dataset root (DIOR-RSVG layout, e.g. a synthetic set)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--length-bucket", type=int, default=384)
    a = ap.parse_args(argv)
    print(json.dumps(probe(a.model, a.data, a.split, a.batches, a.batch_size, a.length_bucket), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
