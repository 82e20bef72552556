"""`group_advantages` and `grpo_loss` against a direct NumPy transcription of the formulas in REFERENCE.md
section 5 (and the issue), on random inputs with padding, for every setting; zero gradients on padding."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsground_jax.rl import GRPOConfig, group_advantages, grpo_loss
from rsground_jax.rl.grpo import GRPOConfigError, select_groups


def np_advantages(r, scale):
    r = np.asarray(r, np.float64)
    out = np.zeros_like(r)
    for p in range(r.shape[0]):
        mean = r[p].mean()
        if scale == "none":
            out[p] = r[p] - mean
        elif scale == "group":
            out[p] = (r[p] - mean) / (np.std(r[p], ddof=1) + 1e-4)
        else:
            out[p] = (r[p] - mean) / (np.std(r, ddof=1) + 1e-4)
    return out


def np_loss(logp, old, ref, adv, mask, cfg):
    B, T = mask.shape
    hi = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
    per = np.zeros((B, T))
    kls, clipped = [], []
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            ratio = np.exp(logp[b, t] - old[b, t])
            A = adv[b]
            per[b, t] = -min(ratio * A, np.clip(ratio, 1 - cfg.epsilon, 1 + hi) * A)
            clipped.append((ratio < 1 - cfg.epsilon and A < 0) or (ratio > 1 + hi and A > 0))
            if cfg.beta > 0:
                kl = logp[b, t] - ref[b, t] if cfg.kl_estimator == "k1" else \
                    np.exp(ref[b, t] - logp[b, t]) - (ref[b, t] - logp[b, t]) - 1
                per[b, t] += cfg.beta * kl
                kls.append(kl)
    if cfg.loss_agg_mode == "seq-mean-token-mean":
        loss = np.mean([per[b].sum() / max(mask[b].sum(), 1) for b in range(B)])
    elif cfg.loss_agg_mode == "token-mean":
        loss = per.sum() / mask.sum()
    else:
        loss = per.sum() / (B * T)
    return loss, (np.mean(kls) if kls else None), np.mean(clipped)


def _inputs(rng, B=6, T=9):
    mask = (np.arange(T)[None] < rng.integers(1, T + 1, B)[:, None]).astype(np.float32)
    logp = -rng.exponential(1.0, (B, T)).astype(np.float32)
    old = logp + rng.normal(0, 0.3, (B, T)).astype(np.float32)  # ratios on both sides of the clip range
    ref = logp + rng.normal(0, 0.5, (B, T)).astype(np.float32)
    for x in (logp, old, ref):  # padding holds anything: the loss must not see it
        x[mask == 0] = rng.choice([-1e4, 1e4, np.nan], int((mask == 0).sum()))
    return logp, old, ref, rng.normal(0, 1, B).astype(np.float32), mask


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_equal_numpy(rng, scale):
    r = rng.normal(0, 1, (5, 8)).astype(np.float32)
    r[1] = 0.7  # a group whose rewards are all equal: advantages 0, not NaN
    np.testing.assert_allclose(group_advantages(jnp.asarray(r), scale), np_advantages(r, scale), rtol=1e-5, atol=1e-6)


SETTINGS = list(itertools.product(["k1", "k3"], ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"],
                                  [None, 0.28], [0.0, 0.04]))


@pytest.mark.parametrize("kl,agg,eps_high,beta", SETTINGS)
def test_grpo_loss_equals_numpy(rng, kl, agg, eps_high, beta):
    cfg = GRPOConfig(kl_estimator=kl, loss_agg_mode=agg, epsilon_high=eps_high, beta=beta)
    logp, old, ref, adv, mask = _inputs(rng)
    loss, metrics = grpo_loss(*map(jnp.asarray, (logp, old, ref, adv, mask)), cfg)
    want, want_kl, want_clip = np_loss(logp, old, ref, adv, mask, cfg)
    # the loss averages O(1) per-token terms that can cancel to ~1e-4: float32 rounding is absolute at that scale
    np.testing.assert_allclose(float(loss), want, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics["clip_fraction"]), want_clip, rtol=1e-6)
    if beta > 0:
        # k1's per-token terms are signed and cancel too (one draw in 300 gave a KL of 2.4e-4, off by 6e-9)
        np.testing.assert_allclose(float(metrics["kl"]), want_kl, rtol=2e-5, atol=1e-6)
    else:
        assert "kl" not in metrics

    grad = jax.grad(lambda lp: grpo_loss(lp, *map(jnp.asarray, (old, ref, adv, mask)), cfg)[0])(jnp.asarray(logp))
    grad = np.asarray(grad)
    assert np.all(grad[mask == 0] == 0) and np.all(np.isfinite(grad))
    assert np.any(grad[mask == 1] != 0)


def test_config_refusals():
    for bad in [dict(num_generations=1), dict(kl_estimator="k2"), dict(loss_agg_mode="sum"),
                dict(scale_rewards="std"), dict(num_iterations=0), dict(temperature=0.0),
                dict(dynamic_sampling=True, dynamic_sampling_oversample=1),
                dict(num_generations=4, greedy_rollouts=4), dict(greedy_rollouts=-1), dict(box_temperature=0.0),
                dict(box_temperature=-0.5)]:
        with pytest.raises(GRPOConfigError):
            GRPOConfig(**bad)
    from rsground_jax.rl.step import GRPOStepConfig

    # a greedy rollout a group reaches the step's sampler (tests/generate/test_sampler.py: what it decodes)
    assert GRPOStepConfig(grpo=GRPOConfig(num_generations=4, greedy_rollouts=3), rewards=()).sampling.greedy_rows == 3
    # so do the box temperature and the tokens that open and close a box (the small tokenizer's '>[' and ']</')
    from rsground_jax.data.answers import TokenBytes
    from rsground_jax.data.tokenizer import load_small_tokenizer

    tok = load_small_tokenizer()
    opens, closes = TokenBytes.from_tokenizer(tok).bracket_ids()
    box = tok.encode("<answer>[12,3,45,6]</answer>")
    assert [tok.decode([i]) for i in box if i in opens] == [">["]
    assert [tok.decode([i]) for i in box if i in closes] == ["]</"]
    assert not set(tok.encode("0123456789, 7.5 <think>a</think>")) & set(opens + closes)
    s = GRPOStepConfig(grpo=GRPOConfig(box_temperature=0.3), rewards=(), box_open_ids=opens, box_close_ids=closes).sampling
    assert (s.box_temperature, s.box_open_ids, s.box_close_ids, s.temperature) == (0.3, opens, closes, 1.0)


def test_dynamic_sampling_keeps_informative_groups_first_then_in_order():
    spread = jnp.asarray([0.0, 0.3, 0.0, 0.1, 0.2, 0.0, 0.5, 0.0])
    valid = jnp.asarray([1, 1, 1, 1, 1, 1, 0, 1])
    keep = np.asarray(select_groups(spread, valid, 4))
    assert keep.tolist() == [True, True, False, True, True, False, False, False]  # 1, 3, 4 informative; then 0
    all_flat = np.asarray(select_groups(jnp.zeros(6), jnp.ones(6, jnp.int32), 3))
    assert all_flat.tolist() == [True, True, True, False, False, False]


def test_rows_left_out_are_as_if_absent(rng):
    """grpo_loss over B rows with some weighted 0 equals grpo_loss over the kept rows only, for every
    aggregation (what dynamic sampling's static-shape batch relies on)."""
    from rsground_jax.rl.grpo import grpo_loss_terms

    logp, old, ref, adv, mask = _inputs(rng, B=8)
    rows = np.array([1, 0, 1, 1, 0, 1, 0, 1], np.float32)
    kept = rows > 0
    for agg in ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"]:
        cfg = GRPOConfig(loss_agg_mode=agg)
        s, n, _ = grpo_loss_terms(*map(jnp.asarray, (logp, old, ref, adv, mask)), cfg, rows=jnp.asarray(rows))
        want, _ = grpo_loss(*(jnp.asarray(x[kept]) for x in (logp, old, ref, adv, mask)), cfg)
        np.testing.assert_allclose(float(s / n), float(want), rtol=1e-5)
