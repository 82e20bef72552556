"""Reward terms: ranges over random token sequences and boxes, the positional reward's properties, the
coherence hook, the registry's refusals."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from rsground_jax.data.tokenizer import load_small_tokenizer
from rsground_jax.eval.metrics import box_diou, box_iou
from rsground_jax.rl import REWARDS, TokenBytes, positional_reward
from rsground_jax.rl.rewards import (
    COHERENCE, REWARD_RANGES, RewardConfigError, check_reward_weights, coherence_weights, gaussian_point_reward,
    reward_terms,
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
        # a quarter near the target (so IoU > 0.5 occurs), a quarter anywhere
        box = np.maximum(gt[i].astype(int) + rng.integers(-4, 5, 4), 0) if i % 4 else rng.integers(0, 3000, 4)
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
    # the hit term is what Pr@0.5 counts, answer by answer
    np.testing.assert_array_equal(np.asarray(terms["hit"]), (iou > 0.5) & has)
    assert 0 < np.asarray(terms["hit"]).sum() < has.sum()


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


def _groups(rng, P, G, hw):
    return _boxes(rng, P * G, np.repeat(hw, G, axis=0)).reshape(P, G, 4)


def _score(kind, boxes, valid, gt, hw):
    return np.asarray(COHERENCE[kind](*(jnp.asarray(x) for x in (boxes, valid, gt, hw))))


@pytest.mark.parametrize("kind", sorted(COHERENCE))
def test_coherence_scores_stay_in_range_and_identical_boxes_on_the_target_score_1(rng, kind):
    P, G = 64, 8
    hw = rng.integers(56, 900, (P, 2)).astype(np.float32)
    gt = _boxes(rng, P, hw)
    gt[:, 2] = np.maximum(gt[:, 2], gt[:, 0] + 4)  # targets with an area
    gt[:, 3] = np.maximum(gt[:, 3], gt[:, 1] + 4)
    valid = rng.random((P, G)) < 0.8
    for boxes in (_groups(rng, P, G, hw), np.repeat(gt[:, None], G, axis=1)):
        s = _score(kind, boxes, valid, gt, hw)
        assert s.shape == (P,) and np.all(np.isfinite(s)) and s.min() >= 0 and s.max() <= 1 + 1e-6
    same = np.repeat(gt[:, None], G, axis=1)
    np.testing.assert_allclose(_score(kind, same, np.ones((P, G), bool), gt, hw), 1.0, rtol=1e-5)
    # no answer with a box: the least coherent
    np.testing.assert_allclose(_score(kind, same, np.zeros((P, G), bool), gt, hw), 0.0)
    # half the answers without a box: at most what the valid half alone could earn
    half = np.arange(G) < G // 2
    assert np.all(_score(kind, same, np.broadcast_to(half, (P, G)), gt, hw) <= 0.5 + 1e-6)


@pytest.mark.parametrize("kind", sorted(COHERENCE))
def test_scattered_boxes_score_below_agreeing_ones(rng, kind):
    P, G = 32, 8
    hw = np.full((P, 2), 800.0, np.float32)
    gt = np.tile(np.array([[380, 380, 420, 420]], np.float32), (P, 1))
    valid = np.ones((P, G), bool)
    jitter = rng.normal(0, 2, (P, G, 4)).astype(np.float32)
    agree = np.repeat(gt[:, None], G, axis=1) + jitter
    centres = rng.uniform(20, 780, (P, G, 2))
    scattered = np.concatenate([centres - 20, centres + 20], -1).astype(np.float32)
    scattered[:, 0] = gt  # one rollout still on the target
    assert np.all(_score(kind, scattered, valid, gt, hw) < _score(kind, agree, valid, gt, hw))


def test_coherent_and_wrong_earns_no_weight(rng):
    P, G = 16, 8
    hw = np.full((P, 2), 600.0, np.float32)
    gt = np.tile(np.array([[100, 100, 140, 140]], np.float32), (P, 1))
    wrong = np.tile(np.array([[400, 400, 440, 440]], np.float32), (P, 1))  # another object, no overlap
    on_wrong = np.repeat(wrong[:, None], G, axis=1) + rng.normal(0, 1, (P, G, 4)).astype(np.float32)
    valid = np.ones((P, G), bool)
    # the target-blind forms call such a group coherent ...
    assert np.all(_score("pairwise_iou", on_wrong, valid, gt, hw) > 0.8)
    # ... the method's form gives it none of the coherence weight, while the same agreement on the target gets it
    w = np.asarray(coherence_weights(*(jnp.asarray(x) for x in (on_wrong, valid, gt, hw)), min_weight=0.3))
    np.testing.assert_allclose(w, 0.3)
    on_target = on_wrong - wrong[:, None] + gt[:, None]
    w_right = np.asarray(coherence_weights(*(jnp.asarray(x) for x in (on_target, valid, gt, hw)), min_weight=0.3))
    assert np.all(w_right > 0.85) and np.all(w_right <= 1)


def test_weights_span_min_weight_to_1(rng):
    P, G = 16, 8
    hw = np.full((P, 2), 500.0, np.float32)
    gt = np.tile(np.array([[10, 10, 60, 60]], np.float32), (P, 1))
    boxes = _groups(rng, P, G, hw)
    valid = rng.random((P, G)) < 0.7
    for m in (0.0, 0.25, 1.0):
        w = np.asarray(coherence_weights(*(jnp.asarray(x) for x in (boxes, valid, gt, hw)), min_weight=m))
        s = _score("target_pairwise_iou", boxes, valid, gt, hw)
        np.testing.assert_allclose(w, m + (1 - m) * s, rtol=1e-6)


def test_diou_and_gaussian_equal_their_formulas(rng):
    n = 2000
    hw = rng.integers(28, 1000, (n, 2)).astype(np.float32)
    pred, gt = _boxes(rng, n, hw).astype(np.float64), _boxes(rng, n, hw).astype(np.float64)
    iou = box_iou(pred, gt)[0]
    c = lambda b: np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)  # noqa: E731
    xs, ys = np.stack([pred[:, 0], pred[:, 2], gt[:, 0], gt[:, 2]]), np.stack([pred[:, 1], pred[:, 3], gt[:, 1], gt[:, 3]])
    enclosing = np.stack([xs.min(0), ys.min(0), xs.max(0), ys.max(0)], 1)
    d2 = (enclosing[:, 2] - enclosing[:, 0]) ** 2 + (enclosing[:, 3] - enclosing[:, 1]) ** 2
    want = iou - np.where(d2 > 0, np.sum((c(pred) - c(gt)) ** 2, 1) / np.where(d2 > 0, d2, 1), 0)
    got = np.asarray(box_diou(jnp.asarray(pred, jnp.float32), jnp.asarray(gt, jnp.float32), jnp))
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(box_diou(pred, gt), want, atol=1e-12)  # the numpy path is the same formula
    s = np.maximum(0.5 * (gt[:, 2:] - gt[:, :2]), 1.0)
    want_g = np.exp(-0.5 * np.sum(((c(pred) - c(gt)) / s) ** 2, 1))
    got_g = np.asarray(gaussian_point_reward(jnp.asarray(pred, jnp.float32), jnp.asarray(gt, jnp.float32)))
    np.testing.assert_allclose(got_g, want_g, atol=1e-5)


def test_unknown_reward_is_refused():
    with pytest.raises(RewardConfigError, match="reward 'iuo' does not exist"):
        check_reward_weights({"iuo": 1.0})
    with pytest.raises(RewardConfigError, match="finite number"):
        check_reward_weights({"iou": "high"})
    for options, words in (({"positional": {"iou_wieght": 0.8}}, "takes no option 'iou_wieght'"),
                           ({"iou": {"scale": 0.1}}, "its options: none"),
                           ({"positional": {"scale": 0}}, r"scale=0 must be a number > 0"),
                           ({"hit": {"threshold": float("nan")}}, r"must be a number in \[0, 1\]"),
                           ({"positional": 0.8}, "must be a dict")):
        with pytest.raises(RewardConfigError, match=words):
            check_reward_weights({"positional": 1.0}, options)
    check_reward_weights({"positional": 1.0, "hit": 0.5}, {"positional": {"iou_weight": 0.8, "scale": 0.2},
                                                         "hit": {"threshold": 0.7}, "gaussian": {"sigma_scale": 1.0}})
