"""The GRPO step in-process: teacher-forced log-probs equal the sampler's, a non-finite step is skipped with the
state untouched, several iterations reuse one rollout batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rsground_jax.data import load_split
from rsground_jax.data.chat import DEFAULT_QUESTION, ChatTemplate
from rsground_jax.data.pipeline import PipelineConfig, rl_pipeline
from rsground_jax.data.synthetic import PRESETS, generate_dataset
from rsground_jax.data.tokenizer import load_small_tokenizer, special_token_ids
from rsground_jax.generate import Sampler, SamplingConfig
from rsground_jax.models import ImageProcessor, Qwen25VL
from rsground_jax.models.qwen2_5_vl.inputs import add_vision_inputs, static_vision_sizes
from rsground_jax.rl import GRPOConfig, TokenBytes
from rsground_jax.rl.step import PROMPT_KEYS, GRPOStepConfig, completion_logprobs, make_grpo_step, prompt_prefill
from rsground_jax.train import OptimConfig, make_optimizer, stack_micro_batches
from rsground_jax.train.experiment import tiny_for
from rsground_jax.train.step import RLTrainState

G = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root / "d", 6, seed=5, config=PRESETS["tiny"])
    tok = load_small_tokenizer()
    model = Qwen25VL(tiny_for(tok, text_layers=1, vision_depth=1), rngs=nnx.Rngs(3))
    pl = rl_pipeline(load_split(root / "d", "train"), tok, ImageProcessor(max_pixels=56 * 56),
                     PipelineConfig(batch_size=2, seed=0, length_buckets=(96,)),
                     template=ChatTemplate(system=None, question=DEFAULT_QUESTION))
    batch = next(iter(pl))
    nw, fs = static_vision_sizes(pl.plan.grid_thw, model.config.vision, 2, batch["pixel_values"].shape[0])
    return tok, model, add_vision_inputs(batch, model.config.vision, num_windows=nw, frame_slots=fs)


def test_teacher_forced_logprobs_equal_the_samplers(setup):
    tok, model, batch = setup
    sp = special_token_ids(tok)
    cfg = SamplingConfig(max_new_tokens=12, temperature=1.0, eos_ids=(sp.im_end,), pad_id=sp.pad)
    tokens, lengths, sampled = Sampler(model).sample(batch, cfg, jax.random.key(7), num_generations=G)
    prompt = {k: jax.tree.map(jnp.asarray, batch[k]) for k in ("input_ids", "attention_mask", "position_ids",
                                                                "pixel_values", "vision")}
    forced = np.asarray(nnx.jit(lambda m, p, t: completion_logprobs(m, p, t, G, 1.0))(model, prompt, jnp.asarray(tokens)))
    live = np.arange(tokens.shape[1])[None] < lengths[:, None]
    np.testing.assert_allclose(forced[live], sampled[live], rtol=1e-4, atol=1e-4)


def _step(setup, rewards=(("format", 1.0), ("positional", 1.0)), eos_ids=None, **grpo):
    tok, model, batch = setup
    sp = special_token_ids(tok)
    graphdef, params = nnx.split(model, nnx.Param)
    tx = make_optimizer(OptimConfig(lr=1e-3, total_steps=10))
    cfg = GRPOStepConfig(grpo=GRPOConfig(num_generations=G, max_new_tokens=8, **grpo), rewards=rewards,
                         eos_ids=eos_ids or (sp.im_end,), pad_id=sp.pad)
    state = RLTrainState.create(jax.tree.map(jnp.copy, params), tx, rng=jax.random.key_data(jax.random.key(0)))
    table = jax.tree.map(jnp.asarray, TokenBytes.from_tokenizer(tok, model.config.text.vocab_size).tables())
    return make_grpo_step(graphdef, tx, cfg), state, jax.tree.map(jnp.copy, params), table, \
        stack_micro_batches([batch], PROMPT_KEYS)


def test_iterations_reuse_one_rollout_batch_and_a_non_finite_step_is_skipped(setup, monkeypatch):
    """num_iterations=2 with dynamic sampling: the first update sees ratio 1 (old log-probs = the rollout
    policy's), the second a
    moved policy against the same old log-probs, and the step counts once. A step whose loss is not finite
    (a NaN pixel) keeps the state bit for bit and is counted. The reward is a term a user adds to the
    registry (shorter answers score higher), which an untrained model's rollouts already vary in."""
    from rsground_jax.rl import rewards

    monkeypatch.setitem(rewards.REWARDS, "short", lambda x: -x.lengths.astype(jnp.float32) / 10)
    # a third of the vocabulary ends a completion, so the random model's completions differ in length
    # dynamic sampling on: of the batch's 2 prompts the update keeps 1 group, an informative one if any
    step, state, ref, table, batch = _step(setup, rewards=(("short", 1.0), ("format", 1.0)),
                                           eos_ids=tuple(range(0, 676, 3)), num_iterations=2, dynamic_sampling=True)
    state, m = step(state, ref, table, batch)
    assert float(m["advantage_std"]) > 0 and np.isfinite(float(m["loss"])) and int(m["skipped"]) == 0
    assert float(m["kept_informative_groups"]) == 1.0
    assert int(state.step) == 1  # one GRPO step, two updates in it
    assert abs(float(m["ratio"]) - 1.0) > 1e-6  # the second update's policy moved away from the rollouts'
    assert float(m["kl"]) > 0

    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    bad = dict(batch, pixel_values=batch["pixel_values"].copy())
    bad["pixel_values"][0, 0, 0] = np.nan
    state, m = step(state, ref, table, bad)
    assert int(m["skipped"]) == 1 and int(state.skipped_total) >= 1 and int(state.step) == 2
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, (state.params, state.opt_state)))
    state, m = step(state, ref, table, batch)
    assert int(m["skipped"]) == 0 and int(state.skipped_in_row) == 0


def test_sft_anchor_is_the_sft_loss_of_each_prompts_target(tmp_path):
    """GRPO's SFT anchor (`grpo.sft_coef`): the RL pipeline's targets are the SFT pipeline's target tokens for the
    same records, their teacher-forced negative log-likelihood after the prompt's cache equals SFT's cross-entropy
    on the joined sequence, and with rewards that carry no signal (one weight 0, so every advantage is 0) and no
    KL the step's loss is sft_coef times that token mean."""
    from rsground_jax.data.pipeline import sft_pipeline
    from rsground_jax.rl.step import sft_anchor_terms
    from rsground_jax.train.losses import LOSSES
    from rsground_jax.train.step import MODEL_KEYS

    generate_dataset(tmp_path / "d", 4, seed=11, config=PRESETS["tiny"])
    records = load_split(tmp_path / "d", "train")[:3]
    tok = load_small_tokenizer()
    model = Qwen25VL(tiny_for(tok, text_layers=1, vision_depth=1), rngs=nnx.Rngs(int(np.random.default_rng().integers(1000))))
    proc, template = ImageProcessor(max_pixels=56 * 56), ChatTemplate(system=None, question=DEFAULT_QUESTION)
    common = dict(batch_size=3, shuffle=False, answer_style="brief_cot", cot_seed=4)
    rl = next(iter(rl_pipeline(records, tok, proc, PipelineConfig(length_buckets=(96,), rl_targets=True, **common),
                               template=template)))
    sft = next(iter(sft_pipeline(records, tok, proc, PipelineConfig(length_buckets=(160,), **common), template=template)))
    for b in range(3):
        np.testing.assert_array_equal(rl["target_ids"][b][rl["target_mask"][b] > 0], sft["input_ids"][b][sft["loss_mask"][b] > 0])

    nw, fs = static_vision_sizes(np.asarray(rl["image_grid_thw"]), model.config.vision, 3, rl["pixel_values"].shape[0])
    rl = add_vision_inputs(rl, model.config.vision, num_windows=nw, frame_slots=fs)
    sft = add_vision_inputs(sft, model.config.vision, num_windows=nw, frame_slots=fs)
    prompt = {k: jax.tree.map(jnp.asarray, rl[k]) for k in ("input_ids", "attention_mask", "position_ids", "pixel_values", "vision")}
    nll, n = nnx.jit(sft_anchor_terms)(model, prompt, jnp.asarray(rl["target_ids"]), jnp.asarray(rl["target_mask"]))
    want, want_n, _ = nnx.jit(LOSSES["sft_ce"])(model, jax.tree.map(jnp.asarray, {k: sft[k] for k in MODEL_KEYS + ("vision",)}))
    assert float(n) == float(want_n) > 0
    np.testing.assert_allclose(float(nll), float(want), rtol=2e-5)
    # the step runs one prefill for both, with room for the longer of completions and targets: the completions'
    # log-probs against its longer cache (empty slots masked) are those against their own
    toks = jnp.asarray(np.random.default_rng().integers(0, len(tok), size=(6, 4)), jnp.int32)
    own = nnx.jit(lambda m, p, t: completion_logprobs(m, p, t, 2, 0.7))(model, prompt, toks)
    shared = nnx.jit(lambda m, p, t: completion_logprobs(m, p, t, 2, 0.7, prefill=prompt_prefill(m, p, 40)))(
        model, prompt, toks)
    np.testing.assert_allclose(np.asarray(shared), np.asarray(own), rtol=1e-5, atol=1e-5)

    sp = special_token_ids(tok)
    graphdef, params = nnx.split(model, nnx.Param)
    tx = make_optimizer(OptimConfig(lr=1e-3, total_steps=10))
    cfg = GRPOStepConfig(grpo=GRPOConfig(num_generations=2, max_new_tokens=4, beta=0.0, sft_coef=0.5),
                         rewards=(("format", 0.0),), eos_ids=(sp.im_end,), pad_id=sp.pad)
    assert cfg.batch_keys[-2:] == ("target_ids", "target_mask")
    state = RLTrainState.create(params, tx, rng=jax.random.key_data(jax.random.key(0)))
    table = jax.tree.map(jnp.asarray, TokenBytes.from_tokenizer(tok, model.config.text.vocab_size).tables())
    _, m = make_grpo_step(graphdef, tx, cfg)(state, None, table, stack_micro_batches([rl], cfg.batch_keys))
    assert float(m["advantage_std"]) == 0.0
    np.testing.assert_allclose(float(m["sft_nll"]), float(want / want_n), rtol=2e-5)
    np.testing.assert_allclose(float(m["loss"]), 0.5 * float(want / want_n), rtol=2e-5)
