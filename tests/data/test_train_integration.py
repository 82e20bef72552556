"""The data contract with the model and the SFT step: a pipeline batch trains the tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from rsground_jax.data import load_split
from rsground_jax.data.pipeline import PipelineConfig, sft_pipeline
from rsground_jax.models.processor import ImageProcessor

train = pytest.importorskip("rsground_jax.train")


def test_pipeline_batch_trains_the_tiny_model(synth_root, small_tokenizer):
    import jax
    from flax import nnx

    from rsground_jax.models import Qwen25VL, prepare_inputs
    from rsground_jax.models.qwen2_5_vl import tiny
    from rsground_jax.models.qwen2_5_vl.inputs import add_vision_inputs, static_vision_sizes

    pipeline = sft_pipeline(load_split(synth_root, "train"), small_tokenizer, ImageProcessor(), PipelineConfig(batch_size=4, seed=0))
    sp = pipeline.plan.specials
    cfg = tiny(vocab_size=sp.vocab_size, image_token_id=sp.image_pad, video_token_id=sp.video_pad,
               vision_start_token_id=sp.vision_start, vision_end_token_id=sp.vision_end, eos_token_id=sp.im_end,
               bos_token_id=sp.im_start, pad_token_id=sp.pad, text_layers=2, vision_depth=2)
    batch = next(iter(pipeline))
    # The model's own host-side preparation agrees with the pipeline's M-RoPE positions.
    prep = prepare_inputs(cfg, batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"])
    np.testing.assert_array_equal(prep["position_ids"], batch["position_ids"])
    np.testing.assert_array_equal(prep["rope_deltas"], batch["rope_deltas"])

    graphdef, params = nnx.split(Qwen25VL(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    tx = train.make_optimizer(train.OptimConfig(lr=3e-3, total_steps=100))
    state = train.TrainState.create(params, tx)
    step = train.make_sft_step(graphdef, tx)
    windows, slots = static_vision_sizes(pipeline.plan.grid_thw, cfg.vision, 4, batch["pixel_values"].shape[0])
    stacked = train.stack_micro_batches([add_vision_inputs(batch, cfg.vision, num_windows=windows, frame_slots=slots)])
    losses = []
    for _ in range(4):
        state, m = step(state, stacked)
        losses.append(float(m["loss"]))
    assert float(m["tokens"]) == batch["loss_mask"][:, 1:].sum()
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert losses[0] == pytest.approx(np.log(sp.vocab_size), rel=0.2)  # an untrained model is near uniform
    jax.clear_caches()
