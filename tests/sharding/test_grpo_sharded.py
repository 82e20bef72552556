"""The GRPO loss and gradients and the sampler's greedy tokens over (data, fsdp, tensor) meshes of 8 fake CPU
devices equal the unsharded computation, and a decoded token moves no weights between devices."""

import pytest

from .test_sft_sharded import run_child

_GRPO_CHILD = r"""
import json, sys, tempfile
import jax
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rsground_jax import sharding
from rsground_jax.data import load_split
from rsground_jax.data.chat import prompt_from_spec
from rsground_jax.data.pipeline import PipelineConfig, rl_pipeline
from rsground_jax.data.synthetic import PRESETS, generate_dataset
from rsground_jax.data.tokenizer import load_tokenizer
from rsground_jax.generate.sampler import DECODE_SCOPE, SamplingConfig, generate_fn
from rsground_jax.models.model_dir import BASE_MODEL_DIR, load_model, read_prompt_spec
from rsground_jax.models.qwen2_5_vl.inputs import add_vision_inputs, static_vision_sizes
from rsground_jax.rl import GRPOConfig
from rsground_jax.rl.grpo import grpo_loss_terms
from rsground_jax.rl.step import completion_logprobs

seed = int(sys.argv[1])
P, G, NEW = 8, 2, 12
template, proc, _ = prompt_from_spec(read_prompt_spec(BASE_MODEL_DIR))
tok = load_tokenizer(BASE_MODEL_DIR)
with tempfile.TemporaryDirectory() as d:
    generate_dataset(d, 24, seed=seed, config=PRESETS["demo"])
    pl = rl_pipeline(load_split(d, "train"), tok, proc, PipelineConfig(batch_size=P, length_buckets=(96,), seed=seed),
                     template=template)
    b = next(iter(pl))
# trained weights (decisive logits, so greedy tokens are a fair check), cut to 2 decoder layers and 1 vision
# block for the compile time
import dataclasses
from rsground_jax.models import Qwen25VL
full = load_model(BASE_MODEL_DIR)
cut = full.config.replace(text=dataclasses.replace(full.config.text, num_hidden_layers=2),
                          vision=dataclasses.replace(full.config.vision, depth=1, fullatt_block_indexes=(0,)))
model = Qwen25VL(cut, rngs=nnx.Rngs(0))
nnx.update(model, jax.tree.map(lambda a, b: a if a.shape == b.shape else a[:b.shape[0]],
                               nnx.state(full, nnx.Param), nnx.state(model, nnx.Param)))
vcfg = model.config.vision
nw, fs = static_vision_sizes(pl.plan.grid_thw, vcfg, P, b["pixel_values"].shape[0])
b = add_vision_inputs(b, vcfg, num_windows=nw, frame_slots=fs)
prompt = {k: jax.tree.map(np.asarray, b[k]) for k in ("input_ids", "attention_mask", "position_ids", "pixel_values", "vision")}
graphdef, params = nnx.split(model, nnx.Param)
greedy = SamplingConfig(max_new_tokens=NEW)
sample = jax.jit(lambda p, x, k, cfg, g, rows: generate_fn(graphdef, p, x, k, cfg, rows, g), static_argnums=(3, 4, 5))
ref_tokens, ref_lengths, _ = sample(params, prompt, jax.random.key(0), greedy, 1, None)


def decode_collectives(compiled_text):  # the collectives of the per-token decode work (DECODE_SCOPE), by kind
    import re
    out = {}
    for line in compiled_text.splitlines():
        m = re.search(r"= \S+ (all-gather|all-reduce|reduce-scatter|collective-permute|all-to-all)(?:-start)?\(", line)
        if m and DECODE_SCOPE in line:
            out[m.group(1)] = out.get(m.group(1), 0) + 1
    return out

# a GRPO micro-batch: G sampled completions per prompt (drawn once, on one device), advantages, a reference
rng = np.random.default_rng(seed)
# the completions: each prompt's greedy answer for its G rows (the loss and gradients do not need them to differ)
tokens, lengths = np.repeat(np.asarray(ref_tokens), G, 0), np.repeat(np.asarray(ref_lengths), G, 0)
mask = (np.arange(NEW)[None] < lengths[:, None]).astype(np.float32)
micro = dict(prompt=prompt, tokens=np.asarray(tokens), mask=mask, advantages=rng.normal(size=P * G).astype(np.float32),
             rows=np.ones(P * G, np.float32), ref_logp=(-rng.random(mask.shape) * 2).astype(np.float32))
cfg = GRPOConfig(num_generations=G, max_new_tokens=NEW, beta=0.04)

def grpo_loss(p, mb):
    logp = completion_logprobs(nnx.merge(graphdef, p), mb["prompt"], mb["tokens"], G, 1.0)
    total, count, _ = grpo_loss_terms(logp, jax.lax.stop_gradient(logp), mb["ref_logp"], mb["advantages"], mb["mask"],
                                      cfg, rows=mb["rows"])
    return total / count

value_and_grad = jax.value_and_grad(grpo_loss)
ref_loss, ref_grads = jax.jit(value_and_grad)(params, micro)
results = {}
# data parallelism alone is the SFT test's (8, 1, 1); here it is part of (2, 2, 2)
for sizes in ((1, 8, 1), (2, 2, 2), (1, 2, 4)):
    mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, sizes)))
    p_sh = sharding.param_shardings(params, mesh)
    placed = sharding.place(params, p_sh)
    m_sh = sharding.batch_shardings(micro, mesh, micro=False)
    def pinned(p, mb, mesh=mesh):  # the activations pinned by the rules, as the GRPO step pins them
        with sharding.activation_layout(mesh):
            return value_and_grad(p, mb)
    fn = jax.jit(pinned, in_shardings=(p_sh, m_sh), out_shardings=(NamedSharding(mesh, PartitionSpec()), p_sh))
    loss, grads = fn(placed, sharding.place(micro, m_sh))
    # relative to each gradient's own scale, floored at a thousandth of the largest: a parameter whose
    # gradient all but cancels would otherwise compare float32 rounding with nothing
    top = max(float(jnp.max(jnp.abs(r))) for r in jax.tree.leaves(ref_grads))
    worst = max(float(jnp.max(jnp.abs(g - r)) / (jnp.max(jnp.abs(r)) + 1e-3 * top))
                for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)))
    x_sh = sharding.batch_shardings(prompt, mesh, micro=False)
    # the sampler as the GRPO step runs it: rows split over data x fsdp, the decode weights placed by DECODE_RULES
    rows = (mesh, sharding.batch_mesh_axes(mesh))
    dynamic = (placed, sharding.place(prompt, x_sh), jax.random.key(0))
    compiled = sample.lower(*dynamic, greedy, 1, rows).compile()  # compiled once: run, and its program read
    toks, lens, _ = compiled(*dynamic)
    results[str(sizes)] = dict(loss=float(loss), ref_loss=float(ref_loss), worst_rel_grad=worst,
                               same_tokens=bool(np.array_equal(np.asarray(toks), np.asarray(ref_tokens))),
                               same_lengths=bool(np.array_equal(np.asarray(lens), np.asarray(ref_lengths))),
                               decode=decode_collectives(compiled.as_text()))
results["distinct_greedy_rows"] = len({tuple(r) for r in np.asarray(ref_tokens).tolist()})
print("RESULT " + json.dumps(results))
"""


@pytest.mark.slow
def test_grpo_loss_and_greedy_rollouts_over_three_meshes_equal_one_device():
    """Over (1, 8, 1), (2, 2, 2) and (1, 2, 4), with the packaged base's weights placed by the rules table and
    the batch split over data x fsdp: the GRPO loss (clipped surrogate + k3 KL, teacher-forced log-probs of G = 2
    completions per prompt from one shared prefill) and its gradients equal the one-device computation, and
    the sampler's greedy tokens are the same tokens."""
    results = run_child(_GRPO_CHILD)
    assert results.pop("distinct_greedy_rows") > 1  # prompts answered differently: a misplaced row would show
    for mesh, r in results.items():
        assert abs(r["loss"] - r["ref_loss"]) <= 1e-5 * max(abs(r["ref_loss"]), 1.0), (mesh, r)
        assert r["worst_rel_grad"] <= 3e-4, (mesh, r)
        assert r["same_tokens"] and r["same_lengths"], (mesh, r)
    # A decoded token moves no weights: they were gathered over fsdp once before the loop (the training layout
    # would gather every layer for every token), and nothing is resharded between devices. What remains is
    # tensor parallelism's all-reduces (attention output and MLP down projection of each of the 2 layers, the
    # embedding lookup and the vocabulary-split sampling); without a tensor axis, nothing at all.
    assert results["(1, 8, 1)"]["decode"] == {}, results
    for mesh in ("(2, 2, 2)", "(1, 2, 4)"):
        assert set(results[mesh]["decode"]) == {"all-reduce"} and results[mesh]["decode"]["all-reduce"] <= 8, results
