"""The jitted sampler: greedy output equals step-by-step full forwards; stops per sequence; sampling filters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rsground_jax.generate import Sampler, SamplingConfig
from rsground_jax.generate.sampler import _filter_logits, _pick
from rsground_jax.models import Qwen25VL, prepare_inputs
from rsground_jax.models.qwen2_5_vl import tiny

from ..models.hf_reference import random_images

CFG = tiny(vocab_size=300, text_layers=2, vision_depth=2)


def _prompts(rng, model_cfg, n=3):
    from rsground_jax.models.processor import ImageProcessor

    proc = ImageProcessor(max_pixels=112 * 112)
    sizes = [(int(rng.integers(56, 140)), int(rng.integers(56, 140))) for _ in range(n - 1)]
    pix = proc(random_images(rng, sizes))
    seqs = []
    for g in pix["image_grid_thw"]:
        k = int(g.prod() // 4)
        seqs.append([model_cfg.vision_start_token_id] + [model_cfg.image_token_id] * k +
                    [model_cfg.vision_end_token_id] + list(rng.integers(0, 290, int(rng.integers(2, 8)))))
    seqs.append(list(rng.integers(0, 290, 6)))  # a text-only prompt
    L = max(map(len, seqs))
    ids = np.zeros((n, L), np.int64)
    mask = np.zeros((n, L), np.int64)
    for i, s in enumerate(seqs):
        ids[i, L - len(s):], mask[i, L - len(s):] = s, 1
    batch = prepare_inputs(model_cfg, ids, mask, pix["image_grid_thw"])
    batch["pixel_values"] = pix["pixel_values"]
    return batch, pix


def test_greedy_equals_step_by_step_full_forwards(rng):
    NEW = 6  # noqa: N806 (each token is one more compiled full forward)
    model = Qwen25VL(CFG, rngs=nnx.Rngs(int(rng.integers(2**31))))
    batch, pix = _prompts(rng, CFG)
    tokens, lengths = Sampler(model)(batch, SamplingConfig(max_new_tokens=NEW))
    ids, mask = batch["input_ids"].astype(np.int64), batch["attention_mask"].astype(np.int64)
    # One compiled program per length (op-by-op dispatch made this test take minutes on a GPU); the M-RoPE
    # positions of the whole grown sequence are recomputed on the host each time, as for a fresh prompt.
    forward = nnx.jit(lambda m, p, pixels: m(p["input_ids"], p["attention_mask"], pixels,
                                             position_ids=p["position_ids"], vision=p["vision"]))
    for i in range(NEW):  # grow the sequence by the argmax of a full forward pass each time
        prep = prepare_inputs(CFG, ids, mask, pix["image_grid_thw"])
        logits = np.asarray(forward(model, {k: prep[k] for k in ("input_ids", "attention_mask", "position_ids",
                                                                 "vision")}, pix["pixel_values"]))
        nxt = logits[:, -1].argmax(-1)
        np.testing.assert_array_equal(tokens[:, i], nxt, err_msg=f"token {i}")
        ids = np.concatenate([ids, nxt[:, None]], 1)
        mask = np.concatenate([mask, np.ones_like(nxt)[:, None]], 1)
    assert (lengths == NEW).all()


def test_stops_per_sequence_at_end_token(rng):
    model = Qwen25VL(CFG, rngs=nnx.Rngs(int(rng.integers(2**31))))
    batch, _ = _prompts(rng, CFG)
    free, _ = Sampler(model)(batch, SamplingConfig(max_new_tokens=10))
    eos = int(free[0, 3])  # make sequence 0's fourth token the end token
    tokens, lengths = Sampler(model)(batch, SamplingConfig(max_new_tokens=10, eos_ids=(eos,), pad_id=299))
    for b in range(len(tokens)):
        hits = np.flatnonzero(free[b] == eos)
        stop = hits[0] + 1 if len(hits) else 10
        assert lengths[b] == stop
        np.testing.assert_array_equal(tokens[b, :stop], free[b, :stop])
        assert (tokens[b, stop:] == 299).all()
    assert lengths[0] <= 4


def test_sampling_respects_top_k_and_top_p(rng):
    logits = jnp.asarray(rng.normal(size=(4, 50)), jnp.float32)
    k = _filter_logits(logits, SamplingConfig(temperature=1.0, top_k=5))
    assert (np.isfinite(np.asarray(k)).sum(-1) == 5).all()
    p = np.asarray(_filter_logits(logits, SamplingConfig(temperature=1.0, top_p=0.5)))
    probs = np.asarray(jax.nn.softmax(logits, -1))
    for b in range(4):
        kept = np.isfinite(p[b])
        order = np.argsort(-probs[b])
        n = kept.sum()
        assert set(np.flatnonzero(kept)) == set(order[:n])  # a prefix of the sorted tokens
        assert probs[b][kept].sum() >= 0.5 and probs[b][order[: n - 1]].sum() < 0.5  # the smallest such prefix
    model = Qwen25VL(CFG, rngs=nnx.Rngs(0))
    batch, _ = _prompts(rng, CFG)
    cfg = SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=3)
    a, _ = Sampler(model)(batch, cfg, jax.random.key(1))
    b, _ = Sampler(model)(batch, cfg, jax.random.key(1))
    np.testing.assert_array_equal(a, b)  # deterministic for a key


def test_sampled_token_is_jax_categorical_draw(rng):
    """`_pick` draws exactly what `jax.random.categorical` draws from the filtered logits with the same key."""
    logits = jnp.asarray(rng.normal(size=(16, 300)) * 2, jnp.float32)
    for cfg in (SamplingConfig(temperature=0.7), SamplingConfig(temperature=1.0, top_k=20, top_p=0.9)):
        for seed in range(5):
            key = jax.random.key(int(rng.integers(2**31)) + seed)
            want = jax.random.categorical(key, _filter_logits(logits, cfg), axis=-1)
            token, logprob = _pick(logits, cfg, key)
            np.testing.assert_array_equal(token, want)
            # the log-probability under the distribution drawn from: filtered, renormalized
            filtered = jax.nn.log_softmax(_filter_logits(logits, cfg), axis=-1)
            # float32 log-softmax rounds absolutely near 0 (a token of probability 0.965: off by 4e-7, 1e-5 relative)
            np.testing.assert_allclose(logprob, np.take_along_axis(np.asarray(filtered), np.asarray(want)[:, None], 1)[:, 0],
                                       rtol=1e-5, atol=1e-6)
    token, logprob = _pick(logits, SamplingConfig(), None)
    np.testing.assert_array_equal(token, jnp.argmax(logits, -1))
    np.testing.assert_allclose(logprob, np.asarray(jax.nn.log_softmax(logits, -1)).max(-1), rtol=1e-5)


def test_shared_prefill_equals_separately_prefilled_copies(rng):
    """G completions per prompt from one prefill each are exactly the tokens of G separately prefilled copies
    of each prompt, for the same key (sampled, with a stop token that ends one row early), and their
    log-probabilities."""
    model = Qwen25VL(CFG, rngs=nnx.Rngs(int(rng.integers(2**31))))
    batch, pix = _prompts(rng, CFG, n=3)
    G = 4
    grids = np.asarray(pix["image_grid_thw"])
    offsets = np.concatenate([[0], np.cumsum(grids.prod(-1))])
    ids = np.repeat(batch["input_ids"], G, axis=0)
    mask = np.repeat(batch["attention_mask"], G, axis=0)
    rep_grid = np.repeat(grids, G, axis=0)  # the two image prompts come first, the text-only one last
    copies = prepare_inputs(CFG, ids, mask, rep_grid)
    copies["pixel_values"] = np.concatenate([pix["pixel_values"][offsets[i]:offsets[i + 1]]
                                             for i in range(len(grids)) for _ in range(G)])
    sampler = Sampler(model)
    key = jax.random.key(int(rng.integers(2**31)))
    sampled = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=50)
    free = sampler.sample(copies, sampled, key)[0]
    for cfg in (SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=50, eos_ids=(int(free[1, 2]),), pad_id=299),):
        shared = sampler.sample(batch, cfg, key, num_generations=G)
        separate = sampler.sample(copies, cfg, key)
        np.testing.assert_array_equal(shared[0], separate[0], err_msg=str(cfg))
        np.testing.assert_array_equal(shared[1], separate[1], err_msg=str(cfg))
        np.testing.assert_allclose(shared[2], separate[2], rtol=1e-4, atol=1e-5)
    assert len({tuple(r) for r in free[:G].tolist()}) > 1  # a prompt's sampled completions differ
    assert shared[1][1] <= 3


_SPLIT_CHILD = r"""
import sys
import jax
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_default_matmul_precision", "highest")
import numpy as np
from flax import nnx
from rsground_jax.generate import Sampler, SamplingConfig
from rsground_jax.models import Qwen25VL
from tests.generate.test_sampler import CFG, _prompts

seed = int(sys.argv[1])
rng = np.random.default_rng(seed)
model = Qwen25VL(CFG, rngs=nnx.Rngs(seed))
batch, _ = _prompts(rng, CFG, n=4)
one, two = Sampler(model), Sampler(model, jax.make_mesh((2,), ("data",)))
key = jax.random.key(seed)
sampled = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=20)
free, _ = one(batch, sampled, key)
eos = int(free[1, 2])  # row 1 (on the first device) stops at its third token, the others run on
# (greedy tokens over meshes: tests/sharding/test_grpo_sharded.py)
stopping = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=20, eos_ids=(eos,), pad_id=299)
a, b = one(batch, stopping, key), two(batch, stopping, key)
np.testing.assert_array_equal(a[0], b[0])
np.testing.assert_array_equal(a[1], b[1])
for r in range(len(free)):  # sampled: each row the same draws as without the stop token, up to its stop
    hits = np.flatnonzero(free[r] == eos)
    stop = hits[0] + 1 if len(hits) else 10
    np.testing.assert_array_equal(a[0][r, :stop], free[r, :stop])
assert a[1][1] <= 3 and (a[0][1, a[1][1]:] == 299).all(), a
assert len(set(map(tuple, free.tolist()))) > 1  # the rows differ, so a row landing in the wrong place shows

# the program really splits: its token buffer comes back one half on each device
arrays, k = two._inputs(batch, key)
out = two._fn(two.graphdef, two.state, arrays, k, stopping, two._rows, 1)[0]
assert {tuple(s.data.shape) for s in out.addressable_shards} == {(2, 10)}, out.sharding

odd, _ = _prompts(rng, CFG, n=3)
try:
    two(odd, sampled, key)
except ValueError as e:
    assert "does not split evenly" in str(e), e
else:
    raise AssertionError("an odd batch split over 2 devices did not raise")
try:
    Sampler(model, jax.make_mesh((2,), ("fsdp",)))
except ValueError as e:
    assert "no axis 'data'" in str(e), e
else:
    raise AssertionError("a mesh without a data axis did not raise")
print("ok")
"""


def test_greedy_rows_take_the_mode_and_leave_the_other_rows_as_sampled(rng):
    """`greedy_rows` = 1 (GRPO's `greedy_rollouts`): each prompt's first completion is the greedy decode, its
    other G - 1 rows are exactly what the same key samples without it."""
    model = Qwen25VL(CFG, rngs=nnx.Rngs(int(rng.integers(2**31))))
    batch, _ = _prompts(rng, CFG, n=2)
    G, sampler = 3, Sampler(model)
    key = jax.random.key(int(rng.integers(2**31)))
    sampled = SamplingConfig(max_new_tokens=6, temperature=1.0)
    free = sampler.sample(batch, sampled, key, num_generations=G)[0]
    mixed = sampler.sample(batch, SamplingConfig(max_new_tokens=6, temperature=1.0, greedy_rows=1), key,
                           num_generations=G)[0]
    greedy = sampler.sample(batch, SamplingConfig(max_new_tokens=6), key)[0]
    np.testing.assert_array_equal(mixed[0::G], greedy)
    for g in range(1, G):
        np.testing.assert_array_equal(mixed[g::G], free[g::G])
    assert not np.array_equal(free[0::G], greedy)  # at temperature 1 the first rows would have differed


def test_batch_split_over_devices_matches_one_device(rng):
    """With a 2-device mesh each device generates half the rows: sampled (the same key), also with a row that
    stops early, the tokens and lengths equal the one-device run's; a batch that does not split
    and a mesh without the data axis are refused."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-c", _SPLIT_CHILD, str(int(rng.integers(2**31)))], cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout[-2000:] + res.stderr[-4000:]


def test_box_temperature_draws_the_box_at_its_own_temperature(rng):
    """`box_temperature` (GRPO's rollouts drawing a box's digits nearer the mode): with every token opening a
    box and box_temperature 1e-6, each token after the first is the argmax of a full forward over the sequence
    so far while the first is sampled at temperature 1; with no token opening a box the draws are exactly
    those of plain sampling with the same key; the box state opens, holds and closes as the tokens say."""
    from rsground_jax.generate.sampler import box_state

    model = Qwen25VL(CFG, rngs=nnx.Rngs(int(rng.integers(2**31))))
    batch, pix = _prompts(rng, CFG)
    NEW, sampler = 6, Sampler(model)  # noqa: N806
    key = jax.random.key(int(rng.integers(2**31)))
    plain = SamplingConfig(max_new_tokens=NEW, temperature=1.0)
    boxed = SamplingConfig(max_new_tokens=NEW, temperature=1.0, box_temperature=1e-6,
                           box_open_ids=tuple(range(CFG.text.vocab_size)))
    tokens, lengths, logp = sampler.sample(batch, boxed, key)
    ids = np.concatenate([batch["input_ids"], tokens], 1).astype(np.int64)
    mask = np.concatenate([batch["attention_mask"], np.ones_like(tokens)], 1).astype(np.int64)
    prep = prepare_inputs(CFG, ids, mask, pix["image_grid_thw"])
    logits = np.asarray(model(prep["input_ids"], prep["attention_mask"], pix["pixel_values"],
                              position_ids=prep["position_ids"], vision=prep["vision"]))
    L = batch["input_ids"].shape[1]  # noqa: N806
    np.testing.assert_array_equal(tokens[:, 1:], logits[:, L:-1].argmax(-1))
    assert (logp[:, 1:] > -1e-3).all()  # drawn from a distribution that is (almost) all on the argmax
    assert (logp[:, 0] < -1.0).all()  # the first from the temperature-1 softmax of an untrained model

    free = sampler.sample(batch, plain, key)[0]
    never = SamplingConfig(max_new_tokens=NEW, temperature=1.0, box_temperature=1e-6, box_open_ids=(-7,))
    np.testing.assert_array_equal(sampler.sample(batch, never, key)[0], free)

    cfg = SamplingConfig(temperature=1.0, box_temperature=0.5, box_open_ids=(5, 6), box_close_ids=(9,))
    state = jnp.array([False, False, True, True, True])
    step = box_state(state, jnp.array([5, 1, 1, 9, 6]), cfg)
    np.testing.assert_array_equal(np.asarray(step), [True, False, True, False, True])
    try:
        SamplingConfig(temperature=1.0, box_temperature=0.5)
    except ValueError as e:
        assert "box_open_ids" in str(e), e
    else:
        raise AssertionError("a box temperature without the tokens that open a box did not raise")
