"""Reward terms: ranges over random token sequences and boxes, the positional reward's properties, the
coherence hook, the registry's refusals."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from rsground_jax.data.tokenizer import load_small_tokenizer
from rsground_jax.eval.metrics import box_iou
from rsground_jax.rl import REWARDS, TokenBytes, positional_reward
from rsground_jax.rl.rewards import (
    REWARD_RANGES, RewardConfigError, check_reward_weights, coherence_weights, reward_terms,
)


def _boxes(rng, n, hw):
    x = np.sort(rng.uniform(-0.2, 1.2, (n, 2)), axis=1) * hw[:, 1:2]
    y = np.sort(rng.uniform(-0.2, 1.2, (n, 2)), axis=1) * hw[:, 0:1]
    b = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)
    degenerate = rng.random(n) < 0.1
    b[degenerate, 2] = b[degenerate, 0]  # zero width
    return b.astype(np.float32)


def test_every_term_stays_in_its_range_on_random_tokens_and_boxes(rng):
    tok = load_small_tokenizer()
    import jax

    table = jax.tree.map(jnp.asarray, TokenBytes.from_tokenizer(tok).tables())
    n, T = 512, 40
    hw = rng.integers(28, 1000, (n, 2)).astype(np.int32)
    gt = _boxes(rng, n, hw)
    tokens = rng.integers(0, len(tok), (n, T)).astype(np.int32)
    # half the rows hold a real answer (random numbers, some far outside the image), so every term is exercised
    for i in range(0, n, 2):
        box = rng.integers(0, 3000, 4)
        ids = tok.encode(f"<think>a</think><answer>[{box[0]}, {box[1]}, {box[2]}, {box[3]}]</answer>",
                         add_special_tokens=False)
        tokens[i, : len(ids)] = ids
    lengths = rng.integers(0, T + 1, n).astype(np.int32)
    lengths[::2] = T
    terms, parsed = reward_terms(jnp.asarray(tokens), jnp.asarray(lengths), table, jnp.asarray(gt), jnp.asarray(hw),
                                 {name: 1.0 for name in REWARDS})
    assert np.asarray(parsed["has_box"]).mean() > 0.4
    for name, values in terms.items():
        v = np.asarray(values)
        lo, hi = REWARD_RANGES[name]
        assert v.shape == (n,) and np.all(np.isfinite(v)) and v.min() >= lo and v.max() <= hi + 1e-6, name
    iou = np.asarray(terms["iou"])
    has = np.asarray(parsed["has_box"])
    np.testing.assert_allclose(iou[has], box_iou(np.asarray(parsed["pred"], np.float64)[has], gt[has].astype(np.float64))[0],
                               rtol=1e-5, atol=1e-6)  # the metric's IoU
    assert np.all(iou[~has] == 0) and np.all(np.asarray(terms["giou"])[~has] == -1)


def test_positional_reward_properties(rng):
    n = 256
    hw = rng.integers(28, 2000, (n, 2)).astype(np.float32)
    gt = _boxes(rng, n, hw)
    r = np.asarray(positional_reward(jnp.asarray(gt), jnp.asarray(gt), jnp.asarray(hw)))
    nondegenerate = (gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])
    np.testing.assert_allclose(r[nondegenerate], 1.0, rtol=1e-6)  # a perfect box

    # strictly decreasing as the box moves away along any direction, overlapping or not (up to a diagonal)
    direction = rng.normal(size=(n, 2))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    diag = np.linalg.norm(hw, axis=1)
    previous = None
    for step in np.linspace(0, 1.0, 41):
        shift = direction * (step * diag)[:, None]
        moved = gt + np.concatenate([shift, shift], axis=1)
        v = np.asarray(positional_reward(jnp.asarray(moved, jnp.float32), jnp.asarray(gt), jnp.asarray(hw)))
        assert np.all(np.isfinite(v)) and np.all((v >= 0) & (v <= 1 + 1e-6))
        if previous is not None:
            assert np.all(v < previous)
        previous = v

    # unchanged when the image and both boxes are scaled together
    pred = _boxes(rng, n, hw)
    k = rng.uniform(0.1, 10, (n, 1)).astype(np.float32)
    a = positional_reward(jnp.asarray(pred), jnp.asarray(gt), jnp.asarray(hw))
    b = positional_reward(jnp.asarray(pred * k), jnp.asarray(gt * k), jnp.asarray(hw * k))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)

    # finite for degenerate boxes: points, lines, both boxes empty
    point = np.repeat(gt[:, :2], 2, axis=1)
    for p, g in [(point, gt), (gt, point), (point, point)]:
        v = np.asarray(positional_reward(jnp.asarray(p), jnp.asarray(g), jnp.asarray(hw)))
        assert np.all(np.isfinite(v)) and np.all((v >= 0) & (v <= 1 + 1e-6))


def test_coherence_weights(rng):
    P, G = 6, 8
    hw = np.full((P, 2), 500.0, np.float32)
    gt = _boxes(rng, P, hw)
    same = np.repeat(gt[:, None], G, axis=1)
    valid = np.ones((P, G), bool)
    w = np.asarray(coherence_weights(jnp.asarray(same), jnp.asarray(valid), jnp.asarray(gt), jnp.asarray(hw),
                                     min_weight=0.3))
    nondegenerate = (gt[:, 2] > gt[:, 0]) & (gt[:, 3] > gt[:, 1])
    np.testing.assert_allclose(w[nondegenerate], 1.0, rtol=1e-6)  # a group in full agreement keeps its advantages
    scattered = _boxes(rng, P * G, np.repeat(hw, G, axis=0)).reshape(P, G, 4)
    w2 = np.asarray(coherence_weights(jnp.asarray(scattered), jnp.asarray(valid), jnp.asarray(gt), jnp.asarray(hw),
                                      min_weight=0.3))
    w3 = np.asarray(coherence_weights(jnp.asarray(same), jnp.zeros((P, G), bool), jnp.asarray(gt), jnp.asarray(hw),
                                      min_weight=0.3))
    assert np.all((w2 >= 0.3) & (w2 <= 1)) and np.all(w2[nondegenerate] < 1)
    np.testing.assert_allclose(w3, 0.3)  # no box at all: the least weight


def test_unknown_reward_is_refused():
    with pytest.raises(RewardConfigError, match="reward 'iuo' does not exist"):
        check_reward_weights({"iuo": 1.0})
    with pytest.raises(RewardConfigError, match="finite number"):
        check_reward_weights({"iou": "high"})
