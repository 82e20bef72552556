"""GRPO: the config, group-relative advantages and the clipped surrogate loss with a KL penalty.

The vocabulary is TRL's and Tunix's, so a config moves across without a dictionary. Formulas
(../shared/REFERENCE.md section 5):

  advantages   "group": (r - group mean) / (group std, ddof=1, + 1e-4); "batch": the same with the std of
               the whole batch; "none": r - group mean (Dr.GRPO)
  ratio        exp(logp - old_logp) per token (1 on the first of `num_iterations` updates of a rollout batch)
  pg           -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon_high) * A)
  KL           k1 = logp - ref_logp; k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1
  per token    pg + beta * KL
  aggregation  "seq-mean-token-mean": mean over sequences of (sum of masked loss / its tokens) (a sequence
               with no tokens adds 0); "token-mean": sum of masked loss / all masked tokens;
               "seq-mean-token-sum-norm" (Dr.GRPO): sum of masked loss / (B * T)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import ADV_EPS, SCALES, GRPOConfig, GRPOConfigError

def group_advantages(rewards: jax.Array, scale: str = "group") -> jax.Array:
    """rewards [P, G] -> advantages [P, G] (see the module docstring for `scale`)."""
    if scale not in SCALES:
        raise GRPOConfigError(f"scale={scale!r}: one of {SCALES}")
    rewards = rewards.astype(jnp.float32)
    # shifted by the first reward: a group of equal rewards centres to exactly 0 (a plain float32 mean may not)
    shifted = rewards - rewards[:, :1]
    centred = shifted - shifted.mean(axis=1, keepdims=True)
    if scale == "none":
        return centred
    if scale == "group":
        std = jnp.std(shifted, axis=1, ddof=1, keepdims=True)
    else:
        std = jnp.std(rewards, ddof=1)
    return centred / (std + ADV_EPS)


def grpo_loss_terms(logp, old_logp, ref_logp, advantages, mask, cfg: GRPOConfig, rows=None):
    """The loss as (sum, count, aux) for `train.make_update`: loss = sum / count exactly, also summed over
    micro-batches; aux maps metric names to (numerator, denominator). Shapes as in `grpo_loss`; `rows` [B]
    (1 or 0) leaves sequences out of the batch altogether, as if they were not in it (dynamic sampling's dropped
    groups under static shapes)."""
    mask = mask.astype(jnp.float32)
    b, t = mask.shape
    if rows is not None:
        mask = mask * rows.astype(jnp.float32)[:, None]
    n_rows = jnp.float32(b) if rows is None else rows.astype(jnp.float32).sum()
    # padding may hold any log-prob: zero it first, so no inf or NaN reaches the loss or its gradient
    live = mask > 0
    logp, old_logp = jnp.where(live, logp, 0.0), jnp.where(live, old_logp, 0.0)
    ref_logp = jnp.where(live, ref_logp, 0.0) if ref_logp is not None else None
    adv = advantages.astype(jnp.float32)[:, None]
    ratio = jnp.exp(logp - old_logp)
    clipped = jnp.clip(ratio, 1.0 - cfg.epsilon, 1.0 + cfg.clip_high)
    per_token = -jnp.minimum(ratio * adv, clipped * adv)
    tokens = mask.sum()
    aux = {}
    if cfg.beta > 0:
        delta = ref_logp - logp
        kl = -delta if cfg.kl_estimator == "k1" else jnp.exp(delta) - delta - 1.0
        per_token = per_token + cfg.beta * kl
        aux["kl"] = ((kl * mask).sum(), tokens)
    masked = per_token * mask
    if cfg.loss_agg_mode == "seq-mean-token-mean":
        total, count = (masked.sum(1) / jnp.maximum(mask.sum(1), 1.0)).sum(), n_rows
    elif cfg.loss_agg_mode == "token-mean":
        total, count = masked.sum(), tokens
    else:
        total, count = masked.sum() / t, n_rows
    low = (ratio < 1.0 - cfg.epsilon) & (adv < 0)
    high = (ratio > 1.0 + cfg.clip_high) & (adv > 0)
    aux["clip_fraction"] = (((low | high) * mask).sum(), tokens)
    aux["ratio"] = ((ratio * mask).sum(), tokens)
    return total, count, aux


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, cfg: GRPOConfig):
    """The GRPO loss of one batch.

    logp, old_logp, ref_logp, mask: [B, T] (mask 1 on completion tokens; ref_logp is unused with beta 0);
    advantages: [B]. Returns (loss scalar, metrics {kl (with beta > 0), clip_fraction, ratio}), token means.
    """
    total, count, aux = grpo_loss_terms(logp, old_logp, ref_logp, advantages, mask, cfg)
    return total / jnp.maximum(count, 1.0), {k: n / jnp.maximum(d, 1.0) for k, (n, d) in aux.items()}


def select_groups(spread, valid, keep: int):
    """Dynamic sampling under static shapes: which of the drawn groups [G_drawn] the update keeps, `keep` of them,
    those whose rewards differ (`spread` > 0) first, each kind in drawing order; invalid prompts (`valid` 0,
    the copies that fill a last partial batch) last. Returns a [G_drawn] bool mask."""
    informative = (spread > 0) & (valid > 0)
    rank = jnp.where(informative, 0, jnp.where(valid > 0, 1, 2)) * spread.shape[0] + jnp.arange(spread.shape[0])
    order = jnp.argsort(rank)
    return jnp.zeros(spread.shape, bool).at[order[:keep]].set(True)
