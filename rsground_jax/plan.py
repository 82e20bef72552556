"""`rsground plan`: will a training step fit a pod's devices, and how long will it take? Answered before renting.

The step is compiled ahead of time from abstract shapes: the model's parameters, the optimizer state and the
batch exist only as shapes and dtypes (nothing is allocated), and the mesh is made of fake CPU devices, one
per accelerator of the planned slice. XLA's memory analysis of the compiled per-device program gives the
arguments (parameters and optimizer state, sharded by `sharding.RULES`), the outputs and the temporaries
(activations, gradients); the FLOPs are counted from the model's shapes (the MFU convention: 6 x parameters x
tokens for the matmuls, plus attention), and the step time follows at a stated MFU.

The temporaries come from XLA:CPU's compiler, whose scheduling differs from a TPU's or a GPU's: they are an
estimate of the order of magnitude, and the parameter and optimizer bytes are exact. Those are checked
against an independent count (parameters x bytes / shards) in `docs/sharding.md`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import sharding
from .accelerators import DEVICES
from .errors import UserError

GiB = 2**30


class PlanError(UserError, ValueError):
    """A plan that cannot be made as asked (a stage, model or device this planner does not know)."""


@dataclasses.dataclass(frozen=True)
class PlanRequest:
    model: str  # a preset: tiny, 3b, 7b, 32b, 72b
    mesh: dict  # {data, fsdp, tensor} sizes
    stage: str = "sft"
    batch: int = 0  # sequences a step (0: one per data x fsdp shard)
    seq: int = 1024  # tokens a sequence, image included
    image_side: int = 448  # pixels: one square image per sequence
    generations: int = 8  # GRPO: completions per prompt (the batch counts prompts)
    new_tokens: int = 256  # GRPO: tokens a completion
    device: str = "tpu-v5p"
    mfu: float = 0.4
    remat: str = "full"
    compute_dtype: str = "bfloat16"


def parse_mesh(text: str) -> dict:
    """'data=2,fsdp=16,tensor=4' -> {'data': 2, 'fsdp': 16, 'tensor': 4} (missing axes are 1)."""
    sizes = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in sharding.MESH_AXES:
            raise PlanError(f"--mesh {text!r}: expected axis=size pairs over {sharding.MESH_AXES}, e.g. "
                            f"data=2,fsdp=16,tensor=4")
        try:
            sizes[name.strip()] = int(value)
        except ValueError:
            raise PlanError(f"--mesh {text!r}: {value!r} is not an integer") from None
    if any(v < 1 for v in sizes.values()):
        raise PlanError(f"--mesh {text!r}: sizes must be positive")
    return {a: sizes.get(a, 1) for a in sharding.MESH_AXES}


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)


def sft_batch(cfg, batch: int, seq: int, side: int, groups: int = 1) -> dict:
    """A stacked SFT batch of `batch` sequences of `seq` tokens, each with one `side` x `side` image, as host
    arrays (zeros where values do not matter): the shapes `rsground sft` feeds its step, the images packed in
    `groups` groups (one per device the batch is split over)."""
    from .train import stack_micro_batches

    b = _image_batch(cfg, batch, seq, side, groups)
    b["loss_mask"] = np.ones((batch, seq), np.float32)
    return stack_micro_batches([b])


def grpo_batch(cfg, prompts: int, seq: int, side: int, groups: int = 1) -> dict:
    """A stacked GRPO prompt batch ([1, prompts, ...], `rl.step.PROMPT_KEYS`) as `rsground grpo` feeds it."""
    from .rl.step import PROMPT_KEYS
    from .train import stack_micro_batches

    b = _image_batch(cfg, prompts, seq, side, groups)
    b.update(gt_box_resized=np.zeros((prompts, 4), np.float32), resized_hw=np.full((prompts, 2), side, np.int32),
             sample_valid=np.ones(prompts, np.int32))
    return stack_micro_batches([b], PROMPT_KEYS)


def _image_batch(cfg, batch: int, seq: int, side: int, groups: int) -> dict:
    from .models.qwen2_5_vl.inputs import group_vision_inputs, group_vision_sizes, prepare_inputs

    grid_side = side // cfg.vision.patch_size
    grid_side -= grid_side % cfg.vision.spatial_merge_size
    patches = grid_side * grid_side
    k = patches // cfg.vision.spatial_merge_size**2
    if k + 2 >= seq:
        raise PlanError(f"--seq {seq} leaves no room for text after the {k + 2} tokens of a {side}-pixel image")
    ids = np.concatenate([np.full((batch, 1), cfg.vision_start_token_id), np.full((batch, k), cfg.image_token_id),
                          np.full((batch, 1), cfg.vision_end_token_id), np.ones((batch, seq - k - 2), np.int64)],
                         1).astype(np.int32)
    grid = np.tile(np.array([[1, grid_side, grid_side]]), (batch, 1))
    b = prepare_inputs(cfg, ids, None, grid)
    b.update(pixel_values=np.zeros((batch * patches, 3 * 2 * cfg.vision.patch_size**2), np.float32),
             image_grid_thw=grid, image_num_patches=np.full(batch, patches))
    return group_vision_inputs(b, cfg.vision, groups, **group_vision_sizes(grid, cfg.vision, batch // groups))


def model_flops(cfg, batch: int, seq: int, image_tokens: int) -> float:
    """Training FLOPs of one step (forward + backward, no recomputation counted): 6 x matmul parameters x
    tokens for the decoder and the vision tower (which sees 4 patches per image token), plus attention's
    12 x layers x hidden x seq^2 per sequence (the MFU convention)."""
    text, vision = _matmul_parameters(cfg, image_tokens)
    attention = 12 * cfg.text.num_hidden_layers * cfg.text.hidden_size * seq * seq
    return batch * (6 * text * seq + 6 * vision + attention)


def _matmul_parameters(cfg, image_tokens: int) -> tuple[int, int]:
    """(the decoder's matmul parameters, output projection included; the vision tower's matmul
    parameter-uses for one image of `image_tokens` tokens, 4 patches each)."""
    t, v = cfg.text, cfg.vision
    heads_dim = t.num_attention_heads * t.head_dim
    kv_dim = t.num_key_value_heads * t.head_dim
    per_layer = t.hidden_size * (heads_dim + 2 * kv_dim) + heads_dim * t.hidden_size + 3 * t.hidden_size * t.intermediate_size
    text = t.num_hidden_layers * per_layer + t.hidden_size * t.vocab_size  # the output projection
    vis_layer = 4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size
    patches = image_tokens * v.spatial_merge_size**2
    return text, v.depth * vis_layer * patches + (v.hidden_size * v.spatial_merge_size**2) ** 2 * image_tokens


def grpo_flops(cfg, prompts: int, seq: int, image_tokens: int, generations: int, new_tokens: int,
               reference: bool = True) -> dict:
    """FLOPs of one GRPO step by phase (the MFU convention, as `model_flops`; a frozen vision tower):
    prefill (each prompt once, image included), decode (P x G rows, T tokens, attention over the growing
    context), the reference policy's teacher-forced forward (with beta > 0), and the update's forward and
    backward over the prompts once and the completions (shared prefill)."""
    t = cfg.text
    text, vision_params = _matmul_parameters(cfg, image_tokens)
    vision = 2 * vision_params  # one image's forward
    rows, ctx = prompts * generations, seq + new_tokens / 2  # a decoded token attends to the mean context
    attn_prompt = 4 * t.num_hidden_layers * t.hidden_size * seq * seq  # forward, per prompt
    prefill = prompts * (2 * text * seq + vision + attn_prompt)
    decode = rows * new_tokens * (2 * text + 4 * t.num_hidden_layers * t.hidden_size * ctx)
    teacher = prefill + rows * new_tokens * (2 * text + 4 * t.num_hidden_layers * t.hidden_size * ctx)
    return {"prefill": prefill, "decode": decode, "reference": teacher if reference else 0.0,
            "update": 3 * teacher - 2 * prompts * vision}  # forward + backward, no backward into the tower


def plan(req: PlanRequest) -> dict:
    """Compile one training step of `req` (`stage` sft or grpo) for its mesh of fake devices and report
    per-device memory, FLOPs, whether it fits `req.device` and the step time at `req.mfu`. Needs prod(mesh)
    JAX devices (the command makes that many CPU devices before JAX starts)."""
    from .models import Qwen25VL
    from .models.qwen2_5_vl.config import PRESETS, preset
    from .train import OptimConfig, TrainState, make_optimizer
    from .train.losses import LOSSES
    from .train.step import make_train_step

    if req.stage not in ("sft", "grpo"):
        raise PlanError(f"--stage {req.stage}: expected sft or grpo")
    if req.model not in PRESETS:
        raise PlanError(f"--model {req.model!r}: expected one of {sorted(PRESETS)}")
    if req.device not in DEVICES:
        raise PlanError(f"--device {req.device!r}: expected one of {sorted(DEVICES)}")
    mesh = sharding.make_mesh(req.mesh, jax.devices()[: math.prod(req.mesh.values())])
    shards = req.mesh["data"] * req.mesh["fsdp"]
    batch = req.batch or shards
    sharding.check_batch_splits(batch, mesh, "--batch")
    cfg = preset(req.model)
    dtype = jnp.dtype(req.compute_dtype)
    model = nnx.eval_shape(lambda: Qwen25VL(cfg, rngs=nnx.Rngs(0), dtype=dtype, remat=req.remat))
    graphdef, params = nnx.split(model, nnx.Param)
    fallback: list = []
    sharding.param_specs(params, mesh, report=fallback)
    groups = sharding.batch_groups(mesh)
    if req.stage == "sft":
        tx = make_optimizer(OptimConfig(lr=1e-5, warmup_steps=0, total_steps=100))
        state = jax.eval_shape(lambda p: TrainState.create(p, tx), params)
        host_batch = sft_batch(cfg, batch, req.seq, req.image_side, groups)
        abstract_batch = _abstract(host_batch)
        state_sh = sharding.state_shardings(state, mesh)
        step = make_train_step(graphdef, tx, LOSSES["sft_ce"],
                               shardings=(state_sh, sharding.batch_shardings(abstract_batch, mesh)))
        mem = step.lower(state, abstract_batch).compile().memory_analysis()
    else:
        host_batch, state, state_sh, mem = _grpo_compiled(req, cfg, graphdef, params, mesh, batch, groups)

    def shard_bytes(leaves, shardings):  # the bytes of the shards the compiled program takes, one device's
        return sum(math.prod(sh.shard_shape(x.shape)) * x.dtype.itemsize for x, sh in zip(leaves, shardings))

    p_leaves, p_sh = jax.tree.leaves(params), jax.tree.leaves(state_sh.params)
    per_device_params = shard_bytes(p_leaves, p_sh)
    opt_bytes = shard_bytes(jax.tree.leaves(state.opt_state), jax.tree.leaves(state_sh.opt_state))
    # the independent count: every parameter's bytes over the product of the mesh sizes its spec names
    n_params, naive = 0, 0.0
    for leaf, sh in zip(p_leaves, p_sh):
        n = math.prod(leaf.shape)
        n_params += n
        split = math.prod(mesh.shape[a] for entry in sh.spec if entry
                          for a in ((entry,) if isinstance(entry, str) else entry))
        naive += n * leaf.dtype.itemsize / split
    image_tokens = int((host_batch["input_ids"][0, 0] == cfg.image_token_id).sum())
    devices = math.prod(req.mesh.values())
    hbm, peak, bandwidth = DEVICES[req.device]
    total = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    out = {
        "model": req.model, "parameters": n_params, "mesh": req.mesh, "devices": devices, "stage": req.stage,
        "batch": batch, "seq": req.seq, "image_side": req.image_side, "remat": req.remat,
        "compute_dtype": req.compute_dtype, "device": req.device,
        "per_device_gib": {
            "parameters": per_device_params / GiB, "parameters_independent": naive / GiB,
            "optimizer_state": opt_bytes / GiB, "arguments": mem.argument_size_in_bytes / GiB,
            "outputs_not_donated": (mem.output_size_in_bytes - mem.alias_size_in_bytes) / GiB,
            "temporaries": mem.temp_size_in_bytes / GiB, "total": total / GiB},
        "device_memory_gib": hbm, "fits": total <= hbm * GiB, "mfu": req.mfu,
        "kept_whole": sorted({"/".join(a for a in axes if a) for axes, _, _ in fallback}),
    }
    if req.stage == "sft":
        flops = model_flops(cfg, batch, req.seq, image_tokens)
        step_s = flops / devices / (peak * 1e12 * req.mfu)
        out.update(flops_per_step=flops, tokens_per_step=batch * req.seq, step_seconds=step_s,
                   tokens_per_second=batch * req.seq / step_s)
        return out
    phases = grpo_flops(cfg, batch, req.seq, image_tokens, req.generations, req.new_tokens)
    t = cfg.text
    rows_per_device = batch * req.generations // (req.mesh["data"] * req.mesh["fsdp"])
    kv_heads = t.num_key_value_heads // req.mesh["tensor"] if t.num_key_value_heads % req.mesh["tensor"] == 0 \
        else t.num_key_value_heads
    itemsize = jnp.dtype(req.compute_dtype).itemsize
    kv = 2 * t.num_hidden_layers * rows_per_device * (req.seq + req.new_tokens) * kv_heads * t.head_dim * itemsize
    # decoding is bound by memory traffic, not FLOPs: each token reads this device's tensor slice of every
    # weight (fsdp gathers the rest) and its rows' KV cache
    weights = n_params * itemsize / req.mesh["tensor"]
    decode_s = req.new_tokens * (weights + kv / 2) / (bandwidth * 1e9)
    compute = phases["prefill"] + phases["reference"] + phases["update"]
    compute_s = compute / devices / (peak * 1e12 * req.mfu)
    out["per_device_gib"]["kv_cache"] = kv / GiB
    tokens = batch * (req.seq + req.generations * req.new_tokens)
    out.update(generations=req.generations, new_tokens=req.new_tokens, flops_by_phase=phases,
               flops_per_step=sum(phases.values()), tokens_per_step=tokens, compute_seconds=compute_s,
               decode_seconds=decode_s, step_seconds=compute_s + decode_s,
               tokens_per_second=tokens / (compute_s + decode_s))
    return out


def _grpo_compiled(req: PlanRequest, cfg, graphdef, params, mesh, prompts: int, groups: int):
    """The GRPO step (rollouts, rewards, reference log-probs, the update) compiled for `mesh`: the host batch,
    the abstract state, its shardings and XLA's memory analysis."""
    from .data.answers import TokenBytes
    from .data.tokenizer import load_small_tokenizer
    from .rl.config import GRPOConfig
    from .rl.step import GRPOStepConfig, make_grpo_step
    from .train import OptimConfig, make_optimizer
    from .train.step import RLTrainState

    tx = make_optimizer(OptimConfig(lr=1e-6, warmup_steps=0, total_steps=100, freeze_vision=True))
    state = jax.eval_shape(lambda p: RLTrainState.create(p, tx, rng=jax.random.key_data(jax.random.key(0))), params)
    # the reward tables' shapes: the small tokenizer's widths over this model's vocabulary (a few MB; values
    # do not matter to the plan)
    small = TokenBytes.from_tokenizer(load_small_tokenizer(), None).tables()
    V = cfg.text.vocab_size
    tables = {k: jax.ShapeDtypeStruct((V, *v.shape[1:]) if k != "box_bytes" else v.shape, v.dtype)
              for k, v in small.items()}
    host_batch = grpo_batch(cfg, prompts, req.seq, req.image_side, groups)
    abstract_batch = _abstract(host_batch)
    step_cfg = GRPOStepConfig(grpo=GRPOConfig(num_generations=req.generations, max_new_tokens=req.new_tokens),
                              rewards=(("format", 0.25), ("iou", 1.0)), eos_ids=(2,), pad_id=0, freeze_vision=True)
    state_sh = sharding.state_shardings(state, mesh)
    ref_sh = sharding.param_shardings(params, mesh)
    step = make_grpo_step(graphdef, tx, step_cfg,
                          shardings=(state_sh, ref_sh, sharding.batch_shardings(abstract_batch, mesh)))
    mem = step.lower(state, params, tables, abstract_batch).compile().memory_analysis()
    return host_batch, state, state_sh, mem


def format_plan(p: dict) -> str:
    m = p["per_device_gib"]
    mesh = ",".join(f"{k}={v}" for k, v in p["mesh"].items())
    lines = [
        f"{p['model']} ({p['parameters'] / 1e9:.2f}B parameters), {p['stage']} step, mesh {mesh} ({p['devices']} "
        f"devices), batch {p['batch']} x {p['seq']} tokens (one {p['image_side']}-px image each), "
        f"{p['compute_dtype']} compute, float32 weights and AdamW, remat {p['remat']}",
        "per device (GiB):",
        f"  parameters        {m['parameters']:9.2f}   (independent count: {m['parameters_independent']:.2f})",
        f"  optimizer state   {m['optimizer_state']:9.2f}",
        f"  arguments         {m['arguments']:9.2f}   (parameters + optimizer state + batch)",
        f"  outputs (new)     {m['outputs_not_donated']:9.2f}   (the rest reuse donated inputs)",
        f"  temporaries       {m['temporaries']:9.2f}   (activations, gradients; XLA:CPU's estimate)",
        f"  total             {m['total']:9.2f}   of {p['device_memory_gib']} on a {p['device']}: "
        f"{'fits' if p['fits'] else 'DOES NOT FIT'}",
    ]
    if p["stage"] == "sft":
        lines.append(f"FLOPs a step {p['flops_per_step']:.3g}; at {p['mfu']:.0%} MFU on {p['devices']} x "
                     f"{p['device']}: {p['step_seconds']:.2f} s a step, {p['tokens_per_second']:,.0f} tokens/s")
    else:
        f = p["flops_by_phase"]
        lines[0] = lines[0].replace(f"batch {p['batch']} x", f"{p['batch']} prompts x {p['generations']} completions "
                                    f"of {p['new_tokens']} tokens, prompts of")
        lines.insert(-1, f"  KV cache          {m['kv_cache']:9.2f}   (of the rollouts; inside the temporaries)")
        lines[4] = lines[4].replace("(parameters + optimizer state + batch)",
                                    "(parameters + optimizer state + reference policy + batch)")
        lines.append(f"FLOPs a step {p['flops_per_step']:.3g} (prefill {f['prefill']:.2g}, decode {f['decode']:.2g}, "
                     f"reference {f['reference']:.2g}, update {f['update']:.2g}); on {p['devices']} x {p['device']}: "
                     f"{p['compute_seconds']:.2f} s of compute at {p['mfu']:.0%} MFU + {p['decode_seconds']:.2f} s "
                     f"of decoding bound by memory bandwidth = {p['step_seconds']:.2f} s a step")
    if p["kept_whole"]:
        lines.append("kept whole (dimension does not divide over its mesh axes): " + ", ".join(p["kept_whole"]))
    return "\n".join(lines)
