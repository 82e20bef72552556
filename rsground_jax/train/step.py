"""Train state and the one training step builder, shared by every loss (SFT, GRPO).

One `jax.jit` program per step: micro-batches are scanned for gradient accumulation, the update is applied
only when the loss and the gradient norm are finite (otherwise parameters and optimizer state are kept
bit-for-bit and the skip is counted), and the state buffers are donated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ..sharding import activation_layout
from .losses import LOSSES, LossFn

# Batch keys the step consumes (the pipeline's batch has more, for evaluation and logging).
MODEL_KEYS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "loss_mask")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    params: Any
    opt_state: Any
    step: jax.Array  # batches processed (applied + skipped)
    skipped_in_row: jax.Array
    skipped_total: jax.Array

    @classmethod
    def create(cls, params, tx: optax.GradientTransformation, **extra) -> "TrainState":
        # distinct buffers: the step donates the state, and a buffer cannot be donated twice
        zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731
        return cls(params=params, opt_state=tx.init(params), step=zero(), skipped_in_row=zero(), skipped_total=zero(),
                   **extra)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RLTrainState(TrainState):
    """A train state that also holds the rollouts' base key, as raw uint32 key data: step s samples with
    `fold_in(key, s)`, so the key is saved with the checkpoint and never advanced on the host."""

    rng: Any = None


def make_update(graphdef, tx: optax.GradientTransformation, loss_fn: LossFn, *, freeze_vision: bool = False,
                param_shardings=None):
    """The un-jitted update `update(state, batch) -> (state, metrics)`, for programs that run it inside a larger
    jitted step (the GRPO step runs rollouts first); `make_train_step` jits it on its own.

    `loss_fn(model, micro_batch) -> (loss_sum, count, aux)`: the step's loss is the sum of `loss_sum` over all
    micro-batches divided by the sum of `count` (tokens for a token mean, sequences for a sequence mean), so
    gradient accumulation gives exactly the full batch's gradient. `aux` maps metric names to (numerator,
    denominator) pairs, both summed over micro-batches and reported as their ratio.
    `batch` leaves have a leading micro-batch axis [accum, ...] (accum may be 1).
    `freeze_vision` stops gradients at the vision tower, so its backward pass is not computed at all (pair it
    with `OptimConfig(freeze_vision=True)`, which keeps its parameters fixed).
    `param_shardings`: the parameters' shardings over a mesh; the gradients and their accumulator are
    constrained to them, so no device holds a whole gradient whatever the partitioner would have chosen, and
    the model's activations to the rules' layout (`sharding.activation_layout`).
    """
    constrain = ((lambda g: jax.tree.map(jax.lax.with_sharding_constraint, g, param_shardings))
                 if param_shardings is not None else (lambda g: g))
    mesh = jax.tree.leaves(param_shardings)[0].mesh if param_shardings is not None else None

    def micro_loss(params, mb):
        if freeze_vision:
            params = {**params, "vision": jax.lax.stop_gradient(params["vision"])}
        with activation_layout(mesh):  # the model's activations pinned by the rules (traced here)
            loss_sum, count, aux = loss_fn(nnx.merge(graphdef, params), mb)
        return loss_sum, (count, aux)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def update(state: TrainState, batch: dict):
        def accumulate(carry, mb):
            g_acc, s_acc, n_acc, aux_acc = carry
            (s, (n, aux)), g = grad_fn(state.params, mb)
            return (constrain(jax.tree.map(jnp.add, g_acc, constrain(g))), s_acc + s, n_acc + n,
                    jax.tree.map(jnp.add, aux_acc, aux)), None

        first = jax.tree.map(lambda x: x[0], batch)
        aux_shape = jax.eval_shape(lambda: loss_fn(nnx.merge(graphdef, state.params), first)[2])
        zeros = (constrain(jax.tree.map(jnp.zeros_like, state.params)), jnp.zeros(()), jnp.zeros(()),
                 jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), aux_shape))
        (g_sum, s_sum, n_sum, aux_sum), _ = jax.lax.scan(accumulate, zeros, batch)
        n_sum = jnp.maximum(n_sum, 1.0)
        grads = jax.tree.map(lambda g: g / n_sum, g_sum)
        loss_value = s_sum / n_sum
        grad_norm = optax.tree.norm(grads)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        (params, opt_state), ok = keep_if_finite(loss_value, grad_norm, (new_params, new_opt),
                                                 (state.params, state.opt_state))
        skipped = (~ok).astype(jnp.int32)
        new_state = dataclasses.replace(
            state, params=params, opt_state=opt_state,
            step=state.step + 1, skipped_in_row=jnp.where(ok, 0, state.skipped_in_row + 1),
            skipped_total=state.skipped_total + skipped)
        metrics = {"loss": loss_value, "grad_norm": grad_norm, "count": n_sum, "skipped": skipped,
                   "skipped_in_row": new_state.skipped_in_row}
        metrics.update({k: num / jnp.maximum(den, 1e-12) for k, (num, den) in aux_sum.items()})
        return new_state, metrics

    return update


def make_train_step(graphdef, tx: optax.GradientTransformation, loss_fn: LossFn, *, freeze_vision: bool = False,
                    shardings: tuple | None = None):
    """The jitted training step `step(state, batch) -> (state, metrics)` for any `loss_fn` (see `make_update`):
    one program per step, micro-batches scanned, the state's buffers donated. Metrics are device scalars
    (fetch them only when logging).

    `shardings`: (the state's, the batch's), from `sharding.state_shardings` and `sharding.batch_shardings`:
    the step then runs over their mesh, takes its inputs placed so and returns the state placed alike (the
    metrics whole on every device)."""
    if shardings is None:
        return jax.jit(make_update(graphdef, tx, loss_fn, freeze_vision=freeze_vision), donate_argnums=0)
    state_sh, batch_sh = shardings
    update = make_update(graphdef, tx, loss_fn, freeze_vision=freeze_vision, param_shardings=state_sh.params)
    everywhere = NamedSharding(jax.tree.leaves(state_sh)[0].mesh, PartitionSpec())
    return jax.jit(update, in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, everywhere), donate_argnums=0)


def make_sft_step(graphdef, tx: optax.GradientTransformation, *, loss: str = "sft_ce", freeze_vision: bool = False,
                  shardings: tuple | None = None):
    """`make_train_step` with a loss of the `LOSSES` registry (SFT cross-entropy by default); its metrics name
    the count `tokens`."""
    step = make_train_step(graphdef, tx, LOSSES[loss], freeze_vision=freeze_vision, shardings=shardings)

    def sft_step(state, batch):
        state, metrics = step(state, batch)
        metrics["tokens"] = metrics.pop("count")
        return state, metrics

    return sft_step


def keep_if_finite(loss, grad_norm, new, old):
    """(`new` if the loss and the gradient norm are finite, else `old`, leaf by leaf; ok): how a step with a
    non-finite loss or gradient keeps the previous parameters and optimizer state."""
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old), ok


def stack_micro_batches(batches: list[dict], keys: tuple[str, ...] = MODEL_KEYS) -> dict:
    """[accum] host batches with identical shapes -> one batch with a leading micro-batch axis, holding `keys`
    and the `vision` index arrays."""
    shapes = {k: {np.shape(b[k]) for b in batches} for k in keys if k != "vision"}
    shapes.update({f"vision.{k}": {np.shape(b["vision"][k]) for b in batches} for k in batches[0]["vision"]})
    bad = [k for k, s in shapes.items() if len(s) > 1]
    if bad:
        raise ValueError(f"micro-batches differ in shape for {bad}; gradient accumulation needs one length "
                         f"bucket and one patch bucket")
    out = {k: np.stack([b[k] for b in batches]) for k in keys if k != "vision"}
    out["vision"] = {k: np.stack([b["vision"][k] for b in batches]) for k in batches[0]["vision"]}
    return out
