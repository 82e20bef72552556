"""`run_grpo`: the GRPO step driven by the shared training loop (`train.run_loop`), so checkpoints, exact
resume, SIGTERM, metrics and the non-finite skip policy are SFT's own."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ..sharding import batch_groups, param_shardings, place, state_shardings
from ..train.loop import LoopConfig, LoopResult, PipelineData, mesh_step, micro_batches, run_loop
from ..train.step import RLTrainState
from .step import GRPOStepConfig, make_grpo_step


def run_grpo(model, ref_params, pipeline, tx: optax.GradientTransformation, step_cfg: GRPOStepConfig,
             tables: dict[str, np.ndarray], cfg: LoopConfig, workdir: str, *, seed: int, resume: bool = False,
             schedule: Callable[[int], float] | None = None, on_log: Callable[[dict], None] | None = None,
             run_info: dict | None = None, mesh=None) -> LoopResult:
    """Train `model` (NNX, updated in place at the end) with GRPO on the prompts of `pipeline` (an RL pipeline:
    left-padded prompts with their targets), `cfg.accum_steps` prompt micro-batches a step.

    ref_params: the frozen reference policy's parameters (None with beta 0); tables: `TokenBytes.tables()`;
    seed: the rollouts' base key (checkpointed with the state: a resumed run samples what the uninterrupted
    run sampled).

    `mesh` (a (data, fsdp, tensor) mesh, or None for one device): the policy, its optimizer state and the
    reference placed by the sharding rules, each micro-batch's prompts split over data x fsdp with their
    images packed per device, rollouts and update in one program over the mesh; with several processes
    `pipeline` is this process's shard of the prompts (as `train.run_sft`)."""
    graphdef, params = nnx.split(model, nnx.Param)
    state = RLTrainState.create(params, tx, rng=jax.random.key_data(jax.random.key(seed)))
    data = PipelineData(pipeline)
    tables = jax.tree.map(jnp.asarray, tables)
    groups = 1 if mesh is None else batch_groups(mesh)
    next_inputs = micro_batches(data, model.config.vision, cfg.accum_steps, step_cfg.batch_keys, step_cfg.grpo.num_generations,
                                groups=groups)
    if mesh is None:
        step = make_grpo_step(graphdef, tx, step_cfg)
    else:
        state_sh = state_shardings(state, mesh)
        state = place(state, state_sh)
        ref_sh = None if ref_params is None else param_shardings(ref_params, mesh)
        ref_params = None if ref_params is None else place(ref_params, ref_sh)
        tables = place(tables, jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), tables))
        step = mesh_step(lambda b_sh: make_grpo_step(graphdef, tx, step_cfg, shardings=(state_sh, ref_sh, b_sh)), mesh)
    return run_loop(state, lambda s, batch: step(s, ref_params, tables, batch), next_inputs, data, cfg, workdir,
                    resume=resume, name="grpo", schedule=schedule, on_log=on_log,
                    on_exit=lambda s: nnx.update(model, s.params), run_info=run_info, shown=("reward", "rollout_iou"))
