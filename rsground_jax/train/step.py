"""Train state and the jitted CoT-SFT step.

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

from ..models.qwen2_5_vl.config import VisionConfig
from ..models.qwen2_5_vl.vision import vision_inputs
from .losses import LOSSES

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
    def create(cls, params, tx: optax.GradientTransformation) -> "TrainState":
        # distinct buffers: the step donates the state, and a buffer cannot be donated twice
        zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731
        return cls(params=params, opt_state=tx.init(params), step=zero(), skipped_in_row=zero(), skipped_total=zero())


def add_vision_inputs(batch: dict, vcfg: VisionConfig, *, num_windows: int, frame_slots: int) -> dict:
    """Host side: add the vision tower's index arrays for a pipeline batch (one image per sample).

    `num_windows` and `frame_slots` are static sizes chosen for the whole run (see `static_vision_sizes`).
    """
    grid = np.asarray(batch["image_grid_thw"])
    num_patches = batch["pixel_values"].shape[0]
    vi = vision_inputs(grid, vcfg, num_patches=num_patches, num_windows=num_windows,
                       num_frames=len(grid) + max(1, -(-num_patches // frame_slots)), frame_slots=frame_slots)
    return {**batch, "vision": vi.arrays()}


def static_vision_sizes(grids: np.ndarray, vcfg: VisionConfig, batch_size: int, num_patches: int) -> tuple[int, int]:
    """(num_windows, frame_slots) that hold any batch of `batch_size` images with grids among `grids`,
    plus the padding patches of a `num_patches` bucket."""
    m = vcfg.spatial_merge_size
    vw = vcfg.window_size // vcfg.patch_size // m
    grids = np.asarray(grids).reshape(-1, 3)
    windows = (-(-grids[:, 1] // m // vw)) * (-(-grids[:, 2] // m // vw)) * grids[:, 0]
    slots = vw * vw * vcfg.merge_unit
    frame_slots = int((grids[:, 1] * grids[:, 2]).max())
    return int(windows.max()) * batch_size + -(-num_patches // slots) + 1, frame_slots


def make_sft_step(graphdef, tx: optax.GradientTransformation, *, loss: str = "sft_ce", freeze_vision: bool = False):
    """Build the jitted SFT step `step(state, batch) -> (state, metrics)`.

    `batch` leaves have a leading micro-batch axis [accum, ...] (accum may be 1); the loss is the token-mean
    over all micro-batches. Metrics are device scalars (fetch them only when logging).
    `freeze_vision` stops gradients at the vision tower, so its backward pass is not computed at all (pair it
    with `OptimConfig(freeze_vision=True)`, which keeps its parameters fixed).
    """
    loss_fn = LOSSES[loss]

    def micro_loss(params, mb):
        if freeze_vision:
            params = {**params, "vision": jax.lax.stop_gradient(params["vision"])}
        model = nnx.merge(graphdef, params)
        logits, _ = model.forward(mb["input_ids"], mb["attention_mask"], mb["position_ids"], mb["pixel_values"],
                                  mb["vision"])
        s, n = loss_fn(logits, mb["input_ids"], mb["loss_mask"])
        return s, n

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def step(state: TrainState, batch: dict):
        def accumulate(carry, mb):
            g_acc, s_acc, n_acc = carry
            (s, n), g = grad_fn(state.params, mb)
            return (jax.tree.map(jnp.add, g_acc, g), s_acc + s, n_acc + n), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (g_sum, s_sum, n_sum), _ = jax.lax.scan(accumulate, (zeros, jnp.zeros(()), jnp.zeros(())), batch)
        n_sum = jnp.maximum(n_sum, 1.0)
        grads = jax.tree.map(lambda g: g / n_sum, g_sum)
        loss_value = s_sum / n_sum
        grad_norm = optax.tree.norm(grads)
        updates, new_opt = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        (params, opt_state), ok = keep_if_finite(loss_value, grad_norm, (new_params, new_opt),
                                                 (state.params, state.opt_state))
        skipped = (~ok).astype(jnp.int32)
        new_state = TrainState(
            params=params, opt_state=opt_state,
            step=state.step + 1, skipped_in_row=jnp.where(ok, 0, state.skipped_in_row + 1),
            skipped_total=state.skipped_total + skipped)
        metrics = {"loss": loss_value, "grad_norm": grad_norm, "tokens": n_sum, "skipped": skipped,
                   "skipped_in_row": new_state.skipped_in_row}
        return new_state, metrics

    return jax.jit(step, donate_argnums=0)


def keep_if_finite(loss, grad_norm, new, old):
    """(`new` if the loss and the gradient norm are finite, else `old`, leaf by leaf; ok): how a step with a
    non-finite loss or gradient keeps the previous parameters and optimizer state."""
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old), ok


def stack_micro_batches(batches: list[dict]) -> dict:
    """[accum] host batches with identical shapes -> one batch with a leading micro-batch axis."""
    shapes = {k: {np.shape(b[k]) for b in batches} for k in MODEL_KEYS}
    shapes.update({f"vision.{k}": {np.shape(b["vision"][k]) for b in batches} for k in batches[0]["vision"]})
    bad = [k for k, s in shapes.items() if len(s) > 1]
    if bad:
        raise ValueError(f"micro-batches differ in shape for {bad}; gradient accumulation needs one length "
                         f"bucket and one patch bucket")
    out = {k: np.stack([b[k] for b in batches]) for k in MODEL_KEYS}
    out["vision"] = {k: np.stack([b["vision"][k] for b in batches]) for k in batches[0]["vision"]}
    return out
