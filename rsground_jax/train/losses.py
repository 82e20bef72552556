"""Losses, by name (`LOSSES`): the `loss_fn`s of `step.make_train_step`, `loss_fn(model, micro_batch) ->
(loss_sum, count, aux)`, which return sums so that callers can average over tokens across micro-batches and
devices exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def sft_cross_entropy(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Next-token cross-entropy on target tokens only.

    Args:
      logits: [b, l, vocab] float32, position t predicts token t + 1.
      input_ids: [b, l] int.
      loss_mask: [b, l], aligned to labels: 1 where input_ids[b, t] is a target (assistant tokens).
    Returns:
      (sum of -log p(target), number of targets), both float32 scalars.
    """
    logits = logits[:, :-1].astype(jnp.float32)
    targets = input_ids[:, 1:]
    weights = loss_mask[:, 1:].astype(jnp.float32)
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.sum((logz - picked) * weights), jnp.sum(weights)


LossFn = Callable[[Any, dict], tuple[jax.Array, jax.Array, dict[str, tuple[jax.Array, jax.Array]]]]


def sft_loss(model, mb: dict):
    """CoT-SFT: the token-mean cross-entropy of the assistant tokens of a pipeline micro-batch (with `vision`)."""
    logits, _ = model.forward(mb["input_ids"], mb["attention_mask"], mb["position_ids"], mb["pixel_values"],
                              mb["vision"])
    loss_sum, tokens = sft_cross_entropy(logits, mb["input_ids"], mb["loss_mask"])
    return loss_sum, tokens, {}


LOSSES: dict[str, LossFn] = {
    "sft_ce": sft_loss,
}
