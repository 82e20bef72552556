"""Parity of the NNX Qwen2.5-VL against transformers' PyTorch Qwen2_5_VLForConditionalGeneration."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from rsground_jax.generate import SamplingConfig, generate
from rsground_jax.models import KVCache, load_pretrained, prepare_inputs
from rsground_jax.models.qwen2_5_vl import get_rope_index

from .hf_reference import IMAGE, make_batch, make_hf_model, hf_logits

TOL = 1e-4


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def models(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_tied" if request.param else "hf_untied")
    seed = int(np.random.SeedSequence().entropy % 2**31)
    hf = make_hf_model(path, tied=request.param, seed=seed)
    return hf, load_pretrained(path), path


def _non_square(rng, lo=40, hi=340):
    while True:
        h, w = (int(x) for x in rng.integers(lo, hi, 2))
        if abs(h - w) > 20:
            return h, w


def _untied_only(models, what: str) -> None:
    """Skip the tied model for a path its head does not enter: one random model covers it (suite time)."""
    if models[1].config.tie_word_embeddings:
        pytest.skip(f"{what} does not reach the LM head's tying: checked once, on the untied model")


def _max_diff(a, b, mask):
    return float(np.abs(a - b)[mask.astype(bool)].max())


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_logits_match_transformers_mixed_batch(models, rng, pad_side):
    """Two images of different non-square sizes in one sample, a one-image sample, a text-only sample."""
    hf, ours, _ = models
    sizes = [[_non_square(rng), _non_square(rng)], [_non_square(rng)], []]
    batch = make_batch(rng, sizes, pad_side=pad_side)
    assert batch["attention_mask"].min() == 0, "the batch must contain padding"
    ref = hf_logits(hf, batch)
    got = np.asarray(ours(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"]))
    assert got.shape == ref.shape
    diff = _max_diff(got, ref, batch["attention_mask"])
    assert diff <= TOL, f"max |logit diff| {diff:.2e} (sizes {sizes})"


def test_multi_window_image_uses_window_and_full_blocks(models, rng):
    """A large image spans many 112-px windows, some partial; blocks alternate window/full attention."""
    _untied_only(models, "the vision tower's window and full blocks")
    hf, ours, _ = models
    assert hf.config.vision_config.fullatt_block_indexes == [1, 3]
    h, w = int(rng.integers(380, 460)), int(rng.integers(250, 330))
    batch = make_batch(rng, [[(h, w)]])
    ref = hf_logits(hf, batch)
    got = np.asarray(ours(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"]))
    assert _max_diff(got, ref, batch["attention_mask"]) <= TOL


def test_image_features_match_transformers_vision_tower(models, rng):
    _untied_only(models, "the vision tower")
    hf, ours, _ = models
    batch = make_batch(rng, [[_non_square(rng), _non_square(rng)]])
    with torch.no_grad():
        ref = hf.model.visual(torch.tensor(batch["pixel_values"]), grid_thw=torch.tensor(batch["image_grid_thw"]))
        ref = ref.pooler_output.numpy()
    prep = prepare_inputs(ours.config, batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"])
    got = np.asarray(ours.encode_images(jnp.asarray(batch["pixel_values"]), jax.tree.map(jnp.asarray, prep["vision"])))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_rope_index_matches_transformers(models, rng):
    hf, _, _ = models
    batch = make_batch(rng, [[_non_square(rng)], [_non_square(rng), _non_square(rng)], []])
    ref_pos, ref_delta = hf.model.get_rope_index(
        torch.tensor(batch["input_ids"]), torch.tensor(batch["mm_token_type_ids"]),
        image_grid_thw=torch.tensor(batch["image_grid_thw"]), attention_mask=torch.tensor(batch["attention_mask"]))
    pos, delta = get_rope_index(batch["input_ids"], batch["image_grid_thw"], batch["attention_mask"], image_token_id=IMAGE)
    np.testing.assert_array_equal(pos, ref_pos.numpy())
    np.testing.assert_array_equal(delta, ref_delta.numpy().reshape(-1))


def test_jit_forward_with_static_padding_matches_eager(models, rng):
    """The jittable path (prepared inputs, patch count and groups padded to static sizes) gives the same logits."""
    _untied_only(models, "padding to static sizes")
    _, ours, _ = models
    batch = make_batch(rng, [[_non_square(rng)], [_non_square(rng)]])
    eager = np.asarray(ours(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"]))
    n = batch["pixel_values"].shape[0]
    P = n + 4 * int(rng.integers(1, 40))
    prep = prepare_inputs(ours.config, batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"],
                          num_patches=P, num_windows=64, num_frames=4, frame_slots=2048)
    pixels = np.concatenate([batch["pixel_values"], rng.normal(size=(P - n, batch["pixel_values"].shape[1]))]).astype(np.float32)

    @jax.jit
    def f(ids, mask, pos, px, vision):
        return ours.forward(ids, mask, pos, px, vision)[0]

    got = np.asarray(f(prep["input_ids"], prep["attention_mask"], prep["position_ids"], pixels, prep["vision"]))
    assert _max_diff(got, eager, batch["attention_mask"]) <= 1e-5


def test_kv_cache_prefill_then_one_token_at_a_time_equals_full_forward(models, rng):
    _, ours, _ = models
    # Each decode path once: the tied model through the unrolled layers (the sampler's), the untied one through
    # the scanned stack; the two differ only in the LM head, which the full forward checks against transformers.
    unrolled = ours.config.tie_word_embeddings
    layers = ours.text.layer_params() if unrolled else None
    batch = make_batch(rng, [[_non_square(rng)], [_non_square(rng)], []], pad_side="left")
    prep = prepare_inputs(ours.config, batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"])
    ids, mask, pos = (jnp.asarray(prep[k]) for k in ("input_ids", "attention_mask", "position_ids"))
    px, vision = jnp.asarray(batch["pixel_values"]), jax.tree.map(jnp.asarray, prep["vision"])
    full, _ = ours.forward(ids, mask, pos, px, vision)
    L = ids.shape[1]
    # prefill up to `split` (past every image), then feed the remaining text tokens one by one
    last_image = int(np.nonzero((prep["input_ids"] == IMAGE).any(0))[0].max())
    split = max(L - int(rng.integers(4, 9)), last_image + 2)
    assert split < L
    cache = KVCache.init(ours.config.text, ids.shape[0], L + 2)
    first, cache = ours.forward(ids[:, :split], mask[:, :split], pos[:, :, :split], px, vision, cache=cache, cache_index=0,
                                layers=layers)
    steps = [first]
    for t in range(split, L):
        lg, cache = ours.forward(ids[:, t:t + 1], mask[:, t:t + 1], pos[:, :, t:t + 1], cache=cache, cache_index=t,
                                 layers=layers)
        steps.append(lg)
    got = np.concatenate([np.asarray(s) for s in steps], axis=1)
    assert _max_diff(got, np.asarray(full), prep["attention_mask"]) <= TOL


def test_greedy_generation_matches_transformers_generate(models, rng):
    hf, ours, _ = models
    batch = make_batch(rng, [[_non_square(rng), _non_square(rng)], [_non_square(rng)], []], pad_side="left")
    prep = prepare_inputs(ours.config, batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"])
    prep["pixel_values"] = batch["pixel_values"]
    tokens, lengths = generate(ours, prep, SamplingConfig(max_new_tokens=16))
    kw = {k: torch.tensor(v) for k, v in batch.items() if v is not None}
    with torch.no_grad():
        ref = hf.generate(**kw, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=2)
    ref = ref[:, batch["input_ids"].shape[1]:].numpy()
    np.testing.assert_array_equal(tokens, ref)
    assert (lengths == 16).all()


def test_bfloat16_compute_with_float32_params_tracks_float32(models, rng):
    _, ours, path = models
    if ours.config.tie_word_embeddings:
        pytest.skip("the compute dtype is applied alike to a tied and an untied head: checked once, on the untied "
                    "model (eager, 20 s of the suite)")
    f32 = load_pretrained(path)
    mixed = load_pretrained(path, dtype=jnp.float32, compute_dtype=jnp.bfloat16)
    pure = load_pretrained(path, dtype=jnp.bfloat16)
    batch = make_batch(rng, [[_non_square(rng)]])
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"])
    ref = np.asarray(f32(*args))
    for m in (mixed, pure):
        got = np.asarray(m(*args))
        assert np.isfinite(got).all()
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err < 0.05, f"bf16 relative error {err:.3f}"
        assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.8
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(mixed, nnx.Param)))
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(nnx.state(pure, nnx.Param)))


def test_scanned_and_unrolled_decoder_agree_with_transformers(models, rng, monkeypatch):
    """Decoders of at most `UNROLL_LAYERS` layers run as a Python loop; deeper ones (every real checkpoint) as
    one `lax.scan`. Forcing the scan on this 2-layer model: its logits match transformers and its gradients
    equal the unrolled loop's."""
    from rsground_jax.models.qwen2_5_vl import text

    hf, ours, _ = models
    if ours.config.tie_word_embeddings:
        pytest.skip("the layer loop does not touch the embeddings: checked once, on the untied model")
    batch = make_batch(rng, [[_non_square(rng, 40, 90)], []], pad_side="right")
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"])
    weights = jnp.asarray(rng.normal(size=(*batch["input_ids"].shape, ours.config.text.vocab_size)), jnp.float32)
    graphdef, params = nnx.split(ours, nnx.Param)

    def logits_and_grads():  # traced afresh on each call, so UNROLL_LAYERS is read again
        logits = jax.jit(lambda p: nnx.merge(graphdef, p)(*args))
        grads = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(*args) * weights)))
        return np.asarray(logits(params)), grads(params)

    assert ours.config.text.num_hidden_layers <= text.UNROLL_LAYERS
    unrolled_logits, unrolled_grads = logits_and_grads()
    monkeypatch.setattr(text, "UNROLL_LAYERS", 0)
    scanned_logits, scanned_grads = logits_and_grads()
    assert _max_diff(scanned_logits, hf_logits(hf, batch), batch["attention_mask"]) <= TOL
    np.testing.assert_allclose(scanned_logits, unrolled_logits, rtol=1e-5, atol=1e-5)
    flat_u, flat_s = jax.tree.leaves(unrolled_grads), jax.tree.leaves(scanned_grads)
    assert len(flat_u) == len(flat_s) and any(float(jnp.abs(g).max()) > 0 for g in flat_u)
    for a, b in zip(flat_u, flat_s):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_attention_kernel_and_remat_paths_match(models, rng):
    """The other paths a config can pick compute the same thing: the decoder's attention through
    `jax.nn.dot_product_attention` (its XLA version on the CPU) matches transformers' logits on a padded
    batch, and its gradients, like those of each rematerialization policy, equal the default path's."""
    hf, ours, path = models
    if hf.config.tie_word_embeddings:
        pytest.skip("the untied model covers these paths")
    batch = make_batch(rng, [[_non_square(rng)], []], pad_side="right")
    mask = batch["attention_mask"]
    assert mask.min() == 0, "the batch must contain padding"
    prep = prepare_inputs(ours.config, batch["input_ids"], mask, batch["image_grid_thw"])
    args = (jnp.asarray(prep["input_ids"]), jnp.asarray(mask), jnp.asarray(prep["position_ids"]),
            jnp.asarray(batch["pixel_values"]), jax.tree.map(jnp.asarray, prep["vision"]))
    weights = jnp.asarray(rng.normal(size=(*mask.shape, 1)), jnp.float32) * jnp.asarray(mask)[..., None]

    def grads(model):
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(p):  # a random linear function of every real position's logits
            logits, _ = nnx.merge(graphdef, p).forward(*args)
            return jnp.sum(logits * weights)

        return jax.jit(jax.grad(loss))(params)

    ref = grads(ours)
    for variant in ("dot_product_attention", "full", "dots"):
        other = load_pretrained(path, remat="none" if variant == "dot_product_attention" else variant)
        if variant == "dot_product_attention":
            other.text.attention = variant
            got = np.asarray(other(batch["input_ids"], mask, batch["pixel_values"], batch["image_grid_thw"]))
            assert _max_diff(got, hf_logits(hf, batch), mask) <= TOL
        for (key, a), b in zip(jax.tree_util.tree_flatten_with_path(ref)[0], jax.tree.leaves(grads(other))):
            scale = float(jnp.max(jnp.abs(a))) + 1e-6
            assert float(jnp.max(jnp.abs(a - b))) <= 1e-4 * scale, (variant, jax.tree_util.keystr(key))
