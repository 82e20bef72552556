"""The SFT loss and gradients over a (data, fsdp, tensor) mesh of 8 fake CPU devices equal the unsharded
computation, and every array sits where the rules table says (the GRPO loss and the sampler:
test_grpo_sharded.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rsground_jax.sharding import MeshError, make_mesh, mesh_shape

ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
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
from rsground_jax.data.pipeline import PipelineConfig, sft_pipeline
from rsground_jax.data.synthetic import PRESETS, generate_dataset
from rsground_jax.data.tokenizer import load_tokenizer
from rsground_jax.models.model_dir import BASE_MODEL_DIR, load_model, read_prompt_spec
from rsground_jax.models.qwen2_5_vl.inputs import (add_vision_inputs, group_vision_inputs, group_vision_sizes,
                                                   static_vision_sizes)
import optax
from rsground_jax.train import TrainState, make_sft_step, stack_micro_batches
from rsground_jax.train.losses import LOSSES

seed = int(sys.argv[1])
template, proc, _ = prompt_from_spec(read_prompt_spec(BASE_MODEL_DIR))
tok = load_tokenizer(BASE_MODEL_DIR)
with tempfile.TemporaryDirectory() as d:
    generate_dataset(d, 24, seed=seed, config=PRESETS["demo"])
    pl = sft_pipeline(load_split(d, "train"), tok, proc, PipelineConfig(batch_size=8, length_buckets=(128,), seed=seed,
                                                                      on_overflow="skip", answer_style="brief_cot"),
                      template=template)
    b = next(iter(pl))
import dataclasses
from rsground_jax.models import Qwen25VL
base = load_model(BASE_MODEL_DIR).config  # its tokenizer and image processor make the batch
# a shallower copy of the packaged base (1 decoder layer, 1 vision block), freshly initialized: the same
# shapes per layer, a fraction of the compile time
cfg = base.replace(text=dataclasses.replace(base.text, num_hidden_layers=1),
                   vision=dataclasses.replace(base.vision, depth=1, fullatt_block_indexes=(0,)))
model = Qwen25VL(cfg, rngs=nnx.Rngs(seed))
vcfg = model.config.vision
nw, fs = static_vision_sizes(np.asarray(b["image_grid_thw"]), vcfg, 8, b["pixel_values"].shape[0])
batch = jax.tree.map(np.asarray, stack_micro_batches([add_vision_inputs(b, vcfg, num_windows=nw, frame_slots=fs)]))
graphdef, params = nnx.split(model, nnx.Param)
# norms' scales drawn away from 1 too, so their gradients are generic (a fresh draw per run)
rng = np.random.default_rng(seed)
params = jax.tree.map(lambda x: x + jnp.asarray(rng.normal(size=x.shape) * 0.01, x.dtype), params)

def loss_and_count(p, batch):
    s, n, _ = LOSSES["sft_ce"](nnx.merge(graphdef, p), jax.tree.map(lambda x: x[0], batch))
    return s / n

value_and_grad = jax.value_and_grad(loss_and_count)
ref_loss, ref_grads = jax.jit(value_and_grad)(params, batch)
ref_flat = jax.tree_util.tree_flatten_with_path(ref_grads)[0]
top = max(float(jnp.max(jnp.abs(r))) for r in jax.tree.leaves(ref_grads))  # a floor for near-zero gradients
results = {}
def grouped(mesh):  # the images packed per device, as `rsground sft` over a mesh feeds them
    groups = sharding.batch_groups(mesh)
    g = group_vision_inputs(b, vcfg, groups, **group_vision_sizes(np.asarray(b["image_grid_thw"]), vcfg, 8 // groups))
    return jax.tree.map(np.asarray, stack_micro_batches([g]))

for sizes in ((8, 1, 1), (2, 2, 2), (1, 2, 4)):  # fsdp alone over 8: test_grpo_sharded.py
    mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, sizes)))
    fallback = []
    p_sh = sharding.param_shardings(params, mesh, report=fallback)
    batch = grouped(mesh)
    b_sh = sharding.batch_shardings(batch, mesh)
    def pinned(p, b, mesh=mesh):  # the activations pinned by the rules, as the training step pins them
        with sharding.activation_layout(mesh):
            return value_and_grad(p, b)
    fn = jax.jit(pinned, in_shardings=(p_sh, b_sh), out_shardings=(NamedSharding(mesh, PartitionSpec()), p_sh))
    loss, grads = fn(sharding.place(params, p_sh), sharding.place(batch, b_sh))
    worst, split = 0.0, 0
    for (path, g), (_, r), sh in zip(jax.tree_util.tree_flatten_with_path(grads)[0], ref_flat, jax.tree.leaves(p_sh)):
        assert g.sharding.is_equivalent_to(sh, g.ndim), (path, g.sharding, sh)
        worst = max(worst, float(jnp.max(jnp.abs(g - r)) / (jnp.max(jnp.abs(r)) + 1e-3 * top)))
        split += g.addressable_shards[0].data.size < g.size
    placed = sharding.place(batch, b_sh)
    def embedded(p, ids, mesh=mesh):  # the decoder's input rows as the rules lay out its activations
        with sharding.activation_layout(mesh):
            return nnx.merge(graphdef, p).text.embed(ids, jnp.float32)
    rows = jax.jit(embedded)(sharding.place(params, p_sh), placed["input_ids"][0])
    want = NamedSharding(mesh, sharding.logical_spec(("batch", "seq", "act_embed"), rows.shape, mesh))
    results[str(sizes)] = dict(rows_pinned=rows.sharding.is_equivalent_to(want, 3),loss=float(loss), ref_loss=float(ref_loss), worst_rel_grad=worst, split_params=split,
                               params=len(ref_flat), fallback=[list(f[0]) for f in fallback],
                               ids_shard=list(placed["input_ids"].addressable_shards[0].data.shape),
                               pixels_shard=list(placed["pixel_values"].addressable_shards[0].data.shape),
                               window_shard=list(placed["vision"]["window_index"].addressable_shards[0].data.shape))

# the train step itself over the (2, 2, 2) mesh: one program, the state kept where the rules put it
mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
# SGD with momentum: an update linear in the gradient, so the comparison is as tight as the gradients' (Adam's
# first step, lr * g / |g|, would turn float32 noise in a near-zero gradient into a full step)
tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9))
state = TrainState.create(params, tx)
batch = grouped(mesh)
s_sh, b_sh = sharding.state_shardings(state, mesh), sharding.batch_shardings(batch, mesh)
sharded_step = make_sft_step(graphdef, tx, shardings=(s_sh, b_sh))
new, m = sharded_step(sharding.place(state, s_sh), sharding.place(batch, b_sh))
# the one-device update from the one-device gradients: momentum starts at the clipped gradient
norm = float(jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(ref_grads))))
clipped = jax.tree.map(lambda g: g * min(1.0, 1.0 / norm), ref_grads)
for a, sh in zip(jax.tree.leaves(new), jax.tree.leaves(s_sh)):
    assert a.sharding.is_equivalent_to(sh, a.ndim), (a.sharding, sh)
for got, p0, g in zip(jax.tree.leaves(new.params), jax.tree.leaves(params), jax.tree.leaves(clipped)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(p0 - 0.1 * g), rtol=1e-4, atol=1e-6)
mu_split = sum(x.addressable_shards[0].data.size < x.size for x in jax.tree.leaves(new.opt_state))
results["step"] = dict(loss=float(m["loss"]), ref_loss=float(ref_loss), opt_state_split=mu_split)
print("RESULT " + json.dumps(results))
"""


def run_child(script: str) -> dict:
    """Run `script` in a fresh Python (its own 8 CPU devices; JAX in this process is already started) with a
    seed drawn afresh; its `RESULT {json}` line."""
    seed = int(np.random.SeedSequence().entropy % 2**31)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        env.pop(name, None)  # compiled afresh: a program loaded from the cache would print no XLA warning
    env["TF_CPP_MIN_LOG_LEVEL"] = "1"  # XLA's warnings shown
    out = subprocess.run([sys.executable, "-c", script, str(seed)], capture_output=True, text=True, env=env,
                         timeout=900, cwd=ROOT)
    assert out.returncode == 0, f"seed {seed}:\n" + out.stderr[-4000:]
    # with the activations pinned, the partitioner never falls back to replicating a tensor to reshard it
    assert "Involuntary full rematerialization" not in out.stderr, out.stderr[-4000:]
    return json.loads(out.stdout.split("RESULT ", 1)[1])


@pytest.mark.slow
def test_sft_loss_and_gradients_over_three_meshes_equal_one_device():
    """For meshes (data, fsdp, tensor) = (8,1,1), (2,2,2), (1,2,4) of fake CPU devices: the loss and
    every parameter's gradient equal the one-device computation (relative to the gradient's scale), each
    gradient carries the sharding `sharding.RULES` gives its parameter, the activations are pinned by the rules
    (the decoder's input rows split like the batch; no involuntary full rematerialization anywhere), parameters
    are really split where fsdp or tensor > 1, and the batch is split over data x fsdp with each device's images packed apart
    (grouped; the one-device reference packs them as one). Then one SFT step over (2, 2, 2): the new
    parameters equal the update from the one-device gradients and stay, with the momentum, where the rules
    put them."""
    results = run_child(_CHILD)
    for mesh, r in results.items():
        if mesh == "step":
            continue
        data, fsdp, tensor = (int(x) for x in mesh.strip("()").split(","))
        assert abs(r["loss"] - r["ref_loss"]) <= 1e-5 * abs(r["ref_loss"]), (mesh, r)
        assert r["worst_rel_grad"] <= 3e-4, (mesh, r)
        assert r["rows_pinned"], (mesh, r)
        assert r["ids_shard"] == [1, 8 // (data * fsdp), 128], (mesh, r)
        # the images too: one group of rows per device, each device's pixels and window indices its own
        assert r["pixels_shard"][:2] == r["window_shard"][:2] == [1, 1], (mesh, r)
        if fsdp > 1 or tensor > 1:
            assert r["split_params"] >= r["params"] // 2, (mesh, r)
        else:
            assert r["split_params"] == 0, (mesh, r)
        if tensor == 4:  # 2 key/value heads do not split 4 ways: kept whole, and reported
            assert any("kv_heads" in axes for axes in r["fallback"]), r["fallback"]
    step = results["step"]
    assert abs(step["loss"] - step["ref_loss"]) <= 1e-5 * abs(step["ref_loss"]), step
    assert step["opt_state_split"] > 0, step


def test_mesh_shape_fills_in_and_refuses():
    assert mesh_shape({"fsdp": -1}, 8) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert mesh_shape({"data": 2, "tensor": -1}, 8) == {"data": 2, "fsdp": 1, "tensor": 4}
    for bad, words in (({"data": 3}, "needs 3 devices"), ({"data": -1, "fsdp": -1}, "at most one -1"),
                       ({"data": 3, "fsdp": -1}, "do not divide"), ({"pipeline": 2}, "mesh axes must be"),
                       ({"data": 0}, "positive")):
        with pytest.raises(MeshError, match=words):
            mesh_shape(bad, 8)
    mesh = make_mesh({"data": -1})
    assert dict(mesh.shape) == {"data": len(mesh.devices.flat), "fsdp": 1, "tensor": 1}

