"""Tiny random transformers Qwen2.5-VL models (no download) and input batches for parity tests."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from rsground_jax.models.processor import ImageProcessor

VOCAB = 512
IMAGE, VIDEO, VSTART, VEND = VOCAB - 1, VOCAB - 2, VOCAB - 3, VOCAB - 4
TEXT_MAX = VOCAB - 5  # ordinary text ids are drawn below this

torch.set_num_threads(2)


def hf_config(tied: bool, depth: int = 4, fullatt=(1, 3), text_layers: int = 2) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=text_layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-6,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            tie_word_embeddings=tied, bos_token_id=0, eos_token_id=1, pad_token_id=2,
        ),
        vision_config=dict(
            depth=depth, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
            fullatt_block_indexes=list(fullatt), window_size=112, patch_size=14, spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND,
        tie_word_embeddings=tied,
    )


def make_hf_model(path, tied: bool, seed: int, **kw) -> Qwen2_5_VLForConditionalGeneration:
    """A random transformers model saved to `path` with `save_pretrained`. Biases and norm scales are
    randomized too (transformers initializes them to 0/1, which would hide mapping errors)."""
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(hf_config(tied, **kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_q" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name or "ln_q" in name else 0.0))
    model.save_pretrained(path)
    return model


def random_images(rng, sizes):
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def make_batch(rng, image_sizes_per_sample, text_len=(3, 9), pad_side="left"):
    """A padded batch: sample i holds images of the listed (h, w) sizes with random text around them.

    Returns a dict with numpy `input_ids`, `attention_mask`, `pixel_values`, `image_grid_thw` (or None),
    and `mm_token_type_ids` for transformers.
    """
    proc = ImageProcessor()
    all_images = [im for sizes in image_sizes_per_sample for im in random_images(rng, sizes)]
    pv = proc(all_images) if all_images else None
    grids = [] if pv is None else list(pv["image_grid_thw"])
    seqs, k = [], 0
    for sizes in image_sizes_per_sample:
        s = list(rng.integers(3, TEXT_MAX, rng.integers(*text_len)))
        for _ in sizes:
            n = int(np.prod(grids[k]) // 4)
            k += 1
            s += [VSTART] + [IMAGE] * n + [VEND] + list(rng.integers(3, TEXT_MAX, rng.integers(*text_len)))
        seqs.append(s)
    L = max(map(len, seqs))
    ids = np.full((len(seqs), L), 2, np.int64)
    mask = np.zeros((len(seqs), L), np.int64)
    for i, s in enumerate(seqs):
        sl = slice(L - len(s), L) if pad_side == "left" else slice(0, len(s))
        ids[i, sl] = s
        mask[i, sl] = 1
    return {
        "input_ids": ids, "attention_mask": mask,
        "pixel_values": None if pv is None else pv["pixel_values"],
        "image_grid_thw": None if pv is None else pv["image_grid_thw"],
        "mm_token_type_ids": (ids == IMAGE).astype(np.int64),
    }


def hf_logits(model, batch) -> np.ndarray:
    kw = {k: torch.tensor(v) for k, v in batch.items() if v is not None}
    with torch.no_grad():
        return model(**kw).logits.float().numpy()
