"""The SFT step: masked loss against a direct computation, skipped non-finite steps, frozen vision,
gradient accumulation equal to one large batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rsground_jax.models import Qwen25VL, prepare_inputs
from rsground_jax.models.processor import ImageProcessor
from rsground_jax.models.qwen2_5_vl import tiny
from rsground_jax.train import OptimConfig, TrainState, make_optimizer, make_sft_step, sft_cross_entropy
from rsground_jax.train.step import stack_micro_batches

CFG = tiny(vocab_size=300, text_layers=2, vision_depth=2)


def _batch(rng, n=4):
    """A right-padded SFT batch of random 56..140 px images, prompt then target tokens."""
    from PIL import Image

    proc = ImageProcessor(max_pixels=112 * 112)
    images = [Image.fromarray(rng.integers(0, 256, (int(rng.integers(56, 140)), int(rng.integers(56, 140)), 3),
                                           dtype=np.uint8)) for _ in range(n)]
    pix = proc(images)
    seqs, masks = [], []
    for g in pix["image_grid_thw"]:
        k = int(g.prod() // 4)
        prompt = [CFG.vision_start_token_id] + [CFG.image_token_id] * k + [CFG.vision_end_token_id] + \
            list(rng.integers(0, 290, int(rng.integers(2, 6))))
        target = list(rng.integers(0, 290, int(rng.integers(3, 9))))
        seqs.append(prompt + target)
        masks.append([0] * len(prompt) + [1] * len(target))
    L = max(map(len, seqs)) + 2
    ids = np.zeros((n, L), np.int32)
    am = np.zeros((n, L), np.int32)
    lm = np.zeros((n, L), np.int32)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        ids[i, :len(s)], am[i, :len(s)], lm[i, :len(s)] = s, 1, m
    prep = prepare_inputs(CFG, ids, am, pix["image_grid_thw"])
    return {"input_ids": ids, "attention_mask": am, "position_ids": prep["position_ids"],
            "pixel_values": pix["pixel_values"], "loss_mask": lm, "vision": prep["vision"]}


def test_masked_loss_equals_direct_computation(rng):
    b, l, v = 3, 11, 17
    logits = jnp.asarray(rng.normal(size=(b, l, v)) * 3, jnp.float32)
    ids = rng.integers(0, v, (b, l))
    mask = (rng.random((b, l)) < 0.5).astype(np.int32)
    s, n = sft_cross_entropy(logits, jnp.asarray(ids), jnp.asarray(mask))
    lg = np.asarray(logits, np.float64)
    direct, count = 0.0, 0
    for i in range(b):
        for t in range(1, l):
            if mask[i, t]:
                row = lg[i, t - 1]
                direct += np.log(np.exp(row - row.max()).sum()) + row.max() - row[ids[i, t]]
                count += 1
    assert int(n) == count == mask[:, 1:].sum()
    np.testing.assert_allclose(float(s), direct, rtol=1e-5)


def _setup(rng, **opt):
    model = Qwen25VL(CFG, rngs=nnx.Rngs(int(rng.integers(2**31))))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = make_optimizer(OptimConfig(lr=1e-3, total_steps=100, **opt))
    return graphdef, tx, TrainState.create(params, tx)


def test_loss_decreases_and_nonfinite_step_is_skipped(rng):
    graphdef, tx, state = _setup(rng)
    step = make_sft_step(graphdef, tx)
    batch = stack_micro_batches([_batch(rng)])
    state, m0 = step(state, batch)
    for _ in range(5):
        state, m = step(state, batch)
    assert float(m["loss"]) < float(m0["loss"])
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    bad = dict(batch, pixel_values=batch["pixel_values"].copy())
    bad["pixel_values"][0, 0, 0] = np.nan
    state, m = step(state, bad)
    assert int(m["skipped"]) == 1 and int(state.skipped_in_row) == 1 and int(state.skipped_total) == 1
    assert not np.isfinite(float(m["loss"]))
    after = jax.tree.map(np.asarray, (state.params, state.opt_state))
    jax.tree.map(np.testing.assert_array_equal, before, after)  # bit-for-bit untouched
    state, m = step(state, batch)
    assert int(m["skipped"]) == 0 and int(state.skipped_in_row) == 0 and int(state.step) == 8


def test_frozen_vision_tower_does_not_move(rng):
    graphdef, tx, state = _setup(rng, freeze_vision=True)
    step = make_sft_step(graphdef, tx, freeze_vision=True)
    vision0 = jax.tree.map(np.asarray, state.params["vision"])
    text0 = np.asarray(state.params["text"]["q_ldnh"])
    state, _ = step(state, stack_micro_batches([_batch(rng)]))
    jax.tree.map(np.testing.assert_array_equal, vision0, jax.tree.map(np.asarray, state.params["vision"]))
    assert not np.array_equal(text0, np.asarray(state.params["text"]["q_ldnh"]))


def test_gradient_accumulation_equals_token_mean_over_micro_batches(rng):
    graphdef, tx, state = _setup(rng, clip_norm=None)
    a = _batch(rng)
    b = dict(a, loss_mask=(rng.random(a["loss_mask"].shape) < 0.5).astype(np.int32) * a["attention_mask"],
             input_ids=np.where(a["input_ids"] == CFG.image_token_id, a["input_ids"],
                                rng.integers(0, 290, a["input_ids"].shape)).astype(np.int32))

    def loss_sum(params, mb):
        model = nnx.merge(graphdef, params)
        logits, _ = model.forward(*(jnp.asarray(mb[k]) for k in ("input_ids", "attention_mask", "position_ids",
                                                                  "pixel_values")), jax.tree.map(jnp.asarray, mb["vision"]))
        return sft_cross_entropy(logits, jnp.asarray(mb["input_ids"]), jnp.asarray(mb["loss_mask"]))

    (sa, na), (sb, nb) = loss_sum(state.params, a), loss_sum(state.params, b)
    step = make_sft_step(graphdef, tx)
    _, m = step(state, stack_micro_batches([a, b]))
    np.testing.assert_allclose(float(m["loss"]), float((sa + sb) / (na + nb)), rtol=1e-5)
    assert float(m["tokens"]) == float(na + nb)
    longer = dict(b, input_ids=np.pad(b["input_ids"], [(0, 0), (0, 1)]))
    with pytest.raises(ValueError, match="differ in shape"):
        stack_micro_batches([a, longer])


def test_weight_decay_applies_to_matrices_only(rng):
    from rsground_jax.train.optim import _decay_mask

    _, _, state = _setup(rng)
    mask = _decay_mask(state.params)
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    decayed = {k for k, v in flat.items() if v}
    assert any("q_ldnh" in k for k in decayed) and any("patch_embed_pc" in k for k in decayed)
    assert not any("norm" in k or "bias" in k for k in decayed), sorted(decayed)
    assert any("norm1_lc" in k for k in flat) and any("qkv_bias_l3nh" in k for k in flat)


def test_vision_lr_scale_scales_only_the_vision_updates(rng):
    """Adam's first step moves every parameter by lr * g / (|g| + eps): with `vision_lr_scale` the tower's
    updates are that fraction of the unscaled run's, the decoder's are unchanged, and clipping still acts on
    the global norm of all gradients (the same clipped gradients reach both groups)."""
    params = {"vision": {"w_dd": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)},
              "text": {"w_dd": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)}}
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 5.0, jnp.float32), params)

    def first_update(**kw):
        tx = make_optimizer(OptimConfig(lr=1e-2, total_steps=10, eps=1e-3, **kw))
        return tx.update(grads, tx.init(params), params)[0]

    full, scaled = first_update(), first_update(vision_lr_scale=0.1)
    np.testing.assert_allclose(scaled["vision"]["w_dd"], 0.1 * full["vision"]["w_dd"], rtol=1e-6)
    np.testing.assert_allclose(scaled["text"]["w_dd"], full["text"]["w_dd"], rtol=1e-6)
    assert float(jnp.abs(full["vision"]["w_dd"]).max()) > 0
    # eps = 1e-3 is not negligible next to the clipped gradients, so the update shows the clipping:
    unclipped = first_update(clip_norm=None, vision_lr_scale=0.1)
    assert not np.allclose(unclipped["text"]["w_dd"], scaled["text"]["w_dd"])
    with pytest.raises(ValueError, match="vision_lr_scale"):
        make_optimizer(OptimConfig(vision_lr_scale=0.0))
