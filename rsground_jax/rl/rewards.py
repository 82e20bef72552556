"""Rewards computed on device from generated token ids, vectorized over all completions of a step.

`parse_completions` reads the answer grammar of `parse.py` straight from token ids: each token's reduced
bytes (`parse.TokenBytes`) are gathered and packed into one byte stream per completion, tags are found by
shifted comparisons, and the box content is read by a small finite automaton scanned over the bytes, which
accumulates the four numbers as it goes. No detokenizing, no host round trip.

Reward terms (`REWARDS`, by name; a config gives each a weight, `weighted_reward` sums them), all in the
resized-pixel frame the model answers in, boxes clipped to the image first:
  format      {0, 1}: `parse.format_ok` (think block, then an answer block holding a box)
  iou         [0, 1]: IoU with the target (`eval.metrics.box_iou`, the metric's own formula); 0 without a box
  giou        [-1, 1]: generalized IoU; -1 without a box
  positional  [0, 1]: `positional_reward`; 0 without a box
A new term is a function `(RewardInputs, **options) -> [N]` added to `REWARDS`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..eval.metrics import box_giou, box_iou
from . import parse

_PRE, _NUM_START, _INT, _DOT, _FRAC, _AFTER, _DONE, _FAIL = range(8)
# byte classes the automaton reads
_WS, _DIGIT, _POINT, _COMMA_NEXT, _COMMA_LAST, _CLOSE_LAST, _CLOSE_EARLY, _OPEN, _OTHER = range(9)


def _transitions() -> np.ndarray:
    """[state, class] -> next state of the box-content automaton (see `parse._BOX`)."""
    t = np.full((8, 9), _FAIL, np.int32)
    t[_PRE, _WS], t[_PRE, _OPEN] = _PRE, _NUM_START
    t[_NUM_START, _WS], t[_NUM_START, _DIGIT] = _NUM_START, _INT
    for s in (_INT, _FRAC, _AFTER):
        t[s, _WS], t[s, _COMMA_NEXT], t[s, _CLOSE_LAST] = _AFTER, _NUM_START, _DONE
    t[_INT, _DIGIT], t[_INT, _POINT] = _INT, _DOT
    t[_DOT, _DIGIT] = _FRAC
    t[_FRAC, _DIGIT] = _FRAC
    t[_DONE, _WS] = _DONE
    return t


TRANSITIONS = _transitions()


def completion_bytes(tokens: jax.Array, lengths: jax.Array, table: jax.Array) -> jax.Array:
    """tokens [N, T] int, lengths [N] (tokens past a row's length are ignored), table [V, W] uint8 ->
    [N, T * W] uint8: each completion's reduced bytes packed to the left, 0 after them."""
    n, t = tokens.shape
    w = table.shape[1]
    live = jnp.arange(t)[None, :] < lengths[:, None]
    raw = jnp.where(live[..., None], table[jnp.clip(tokens, 0, table.shape[0] - 1)], 0).reshape(n, t * w)
    keep = raw > 0
    slot = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, t * w)  # dropped bytes go to a spare column
    rows = jnp.broadcast_to(jnp.arange(n)[:, None], slot.shape)
    return jnp.zeros((n, t * w + 1), jnp.uint8).at[rows, slot].set(raw)[:, :-1]


def _matches(s: jax.Array, pattern: str) -> jax.Array:
    """[N, C] bool: True at the positions where `pattern` starts."""
    c = s.shape[1]
    hit = jnp.ones(s.shape, bool)
    for j, ch in enumerate(pattern.encode()):
        shifted = jnp.pad(s[:, j:], ((0, 0), (0, min(j, c))))[:, :c]
        hit &= shifted == ch
    return hit


def _last(mask: jax.Array) -> jax.Array:
    return jnp.max(jnp.where(mask, jnp.arange(mask.shape[1]), -1), axis=1)


def parse_completions(s: jax.Array) -> dict[str, jax.Array]:
    """Answer boxes and the format check from packed bytes [N, C] (`completion_bytes`).

    Returns box [N, 4] float32 (0 where there is none), has_box [N] bool and format [N] bool: on the same
    text, `has_box` and `box` equal `parse.parse_box` (values to float32 precision) and `format` equals
    `parse.format_ok`.
    """
    n, c = s.shape
    idx = jnp.arange(c)
    close = _last(_matches(s, parse.CLOSE))
    opens = _matches(s, parse.OPEN)
    start = _last(opens & (idx[None] < close[:, None]))
    block = (close >= 0) & (start >= 0)
    active = block[:, None] & (idx[None] >= (start + len(parse.OPEN))[:, None]) & (idx[None] < close[:, None])

    table = jnp.asarray(TRANSITIONS)

    def step(carry, xs):
        state, k, ints, fracs, scale = carry
        byte, on = xs
        digit = (byte >= ord("0")) & (byte <= ord("9"))
        d = (byte.astype(jnp.int32) - ord("0")).astype(jnp.float32)
        last = k == 3
        cls = jnp.select(
            [byte == parse.SPACE, digit, byte == ord("."), (byte == ord(",")) & ~last, byte == ord(","),
             (byte == ord("]")) & last, byte == ord("]"), byte == ord("[")],
            [_WS, _DIGIT, _POINT, _COMMA_NEXT, _COMMA_LAST, _CLOSE_LAST, _CLOSE_EARLY, _OPEN], _OTHER)
        nxt = table[state, cls]
        which = jax.nn.one_hot(k, 4, dtype=bool)
        new_number = on & (state == _NUM_START) & digit
        ints = jnp.where(which & new_number[:, None], d[:, None], ints)
        ints = jnp.where(which & (on & (state == _INT) & digit)[:, None], ints * 10 + d[:, None], ints)
        in_frac = on & ((state == _DOT) | (state == _FRAC)) & digit
        fracs = jnp.where(which & in_frac[:, None], fracs + d[:, None] * scale[:, None], fracs)
        scale = jnp.where(new_number, 0.1, jnp.where(in_frac, scale * 0.1, scale))
        k = jnp.where(on & (cls == _COMMA_NEXT) & (nxt == _NUM_START), k + 1, k)
        return (jnp.where(on, nxt, state), k, ints, fracs, scale), None

    zeros4 = jnp.zeros((n, 4), jnp.float32)
    init = (jnp.full((n,), _PRE, jnp.int32), jnp.zeros((n,), jnp.int32), zeros4, zeros4, jnp.full((n,), 0.1))
    (state, _, ints, fracs, _), _ = jax.lax.scan(step, init, (s.T, active.T), unroll=8)
    has_box = block & (state == _DONE)
    box = jnp.where(has_box[:, None], ints + fracs, 0.0)

    # format: one of each tag, <think> first, </answer> last, only whitespace between </think> and <answer>
    text = s > 0
    solid = text & (s != parse.SPACE)
    first = jnp.argmax(solid, axis=1)
    last_solid = _last(solid)
    think_open, think_close = _matches(s, parse.THINK_OPEN), _matches(s, parse.THINK_CLOSE)
    ones = [m.sum(1) == 1 for m in (think_open, think_close, opens, _matches(s, parse.CLOSE))]
    tc = _last(think_close)
    between = (idx[None] >= (tc + len(parse.THINK_CLOSE))[:, None]) & (idx[None] < start[:, None])
    fmt = (ones[0] & ones[1] & ones[2] & ones[3] & (_last(think_open) == first)
           & (close + len(parse.CLOSE) - 1 == last_solid) & (tc < start) & ~jnp.any(between & solid, axis=1)
           & has_box)
    return {"box": box, "has_box": has_box, "format": fmt}


# ------------------------------------------------------------------------------------------- box terms


def clip_to_image(boxes: jax.Array, image_hw: jax.Array) -> jax.Array:
    """[N, 4] boxes clamped to their images ([N, 2] height, width); an infinite coordinate lands on the edge."""
    h, w = image_hw[:, 0:1].astype(jnp.float32), image_hw[:, 1:2].astype(jnp.float32)
    x = jnp.clip(boxes[:, 0::2], 0.0, w)
    y = jnp.clip(boxes[:, 1::2], 0.0, h)
    return jnp.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


def positional_reward(pred: jax.Array, gt: jax.Array, image_hw: jax.Array, *, iou_weight: float = 0.5,
                      scale: float = 0.1) -> jax.Array:
    """Continuous, distance-aware box reward in [0, 1]:

        r = iou_weight * IoU + (1 - iou_weight) * exp(-||c_pred - c_gt|| / (scale * diag(image)))

    with c the box centres and diag the image diagonal. 1 for a perfect box; strictly decreasing as a box
    moves away from the target, overlapping or not (the exponential falls with distance while IoU does not
    grow); unchanged when the image and both boxes are scaled together (distances are measured in image
    diagonals); finite for degenerate boxes (IoU is 0 when the union has no area). With `scale` 0.1 a box
    a tenth of the diagonal away keeps e^-1 of the distance term. Candidates and the choice: docs/grpo.md.

    pred, gt: [N, 4] x1, y1, x2, y2 in pixels; image_hw: [N, 2] height, width. Returns [N] float32.
    """
    pred, gt = pred.astype(jnp.float32), gt.astype(jnp.float32)
    hw = image_hw.astype(jnp.float32)
    iou, _, _ = box_iou(pred, gt, jnp)
    centre = lambda b: jnp.stack([b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1) / 2  # noqa: E731
    dist = jnp.linalg.norm(centre(pred) - centre(gt), axis=1)
    diag = jnp.sqrt(jnp.sum(hw**2, axis=1))
    return iou_weight * iou + (1.0 - iou_weight) * jnp.exp(-dist / (scale * diag))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RewardInputs:
    """What every reward term may read, one row per completion.

    pred [N, 4]: the parsed box clipped to the image (0 where there is none); has_box [N] bool; format [N]
    bool; gt [N, 4] the target; image_hw [N, 2] (height, width), all in the resized frame; lengths [N]: the
    completion's tokens (its end token included).
    """

    pred: jax.Array
    has_box: jax.Array
    format: jax.Array
    gt: jax.Array
    image_hw: jax.Array
    lengths: jax.Array


def _format(x: RewardInputs) -> jax.Array:
    return x.format.astype(jnp.float32)


def _iou(x: RewardInputs) -> jax.Array:
    return jnp.where(x.has_box, box_iou(x.pred, x.gt, jnp)[0], 0.0)


def _giou(x: RewardInputs) -> jax.Array:
    return jnp.where(x.has_box, box_giou(x.pred, x.gt, jnp), -1.0)


def _positional(x: RewardInputs, **options) -> jax.Array:
    return jnp.where(x.has_box, positional_reward(x.pred, x.gt, x.image_hw, **options), 0.0)


REWARDS: dict[str, Callable[..., jax.Array]] = {
    "format": _format,
    "iou": _iou,
    "giou": _giou,
    "positional": _positional,
}
REWARD_RANGES = {"format": (0.0, 1.0), "iou": (0.0, 1.0), "giou": (-1.0, 1.0), "positional": (0.0, 1.0)}


class RewardConfigError(ValueError):
    pass


def check_reward_weights(weights: dict, options: dict | None = None) -> None:
    """A clear error for a reward name that is not in `REWARDS` or a weight that is not a number."""
    for name in list(weights) + list(options or {}):
        if name not in REWARDS:
            raise RewardConfigError(f"reward {name!r} does not exist; known rewards: {sorted(REWARDS)}")
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w):
            raise RewardConfigError(f"reward weight {name}={w!r} must be a finite number")


def reward_terms(tokens, lengths, table, gt, image_hw, weights: dict, options: dict | None = None):
    """All reward terms of a batch of completions: (terms {name: [N]}, parsed {box, has_box, format}).

    tokens [N, T], lengths [N], table: `TokenBytes.table` as an array, gt [N, 4], image_hw [N, 2]."""
    parsed = parse_completions(completion_bytes(tokens, lengths, table))
    x = RewardInputs(pred=clip_to_image(parsed["box"], image_hw), has_box=parsed["has_box"], format=parsed["format"],
                     gt=gt.astype(jnp.float32), image_hw=image_hw, lengths=lengths)
    options = options or {}
    terms = {name: REWARDS[name](x, **dict(options.get(name, {}))) for name in weights}
    return terms, {**parsed, "pred": x.pred}


def weighted_reward(terms: dict, weights: dict) -> jax.Array:
    return functools.reduce(jnp.add, [float(weights[k]) * v for k, v in terms.items()])


# ----------------------------------------------------------------------------------- group coherence


def pairwise_iou_coherence(boxes: jax.Array, valid: jax.Array, gt: jax.Array, image_hw: jax.Array) -> jax.Array:
    """[P] in [0, 1]: the mean IoU over the G (G - 1) / 2 pairs of a group's boxes [P, G, 4]; a pair with an
    answer without a box counts 0. (The target is not used: a group that agrees on a wrong object is
    coherent; its rewards, not this weight, say it is wrong.)"""
    g = boxes.shape[1]
    iou, _, _ = box_iou(boxes[:, :, None, :], boxes[:, None, :, :], jnp)
    both = valid[:, :, None] & valid[:, None, :]
    upper = jnp.triu(jnp.ones((g, g), bool), k=1)
    return jnp.sum(jnp.where(both & upper, iou, 0.0), axis=(1, 2)) / (g * (g - 1) / 2)


COHERENCE: dict[str, Callable[..., jax.Array]] = {"pairwise_iou": pairwise_iou_coherence}


def coherence_weights(boxes, valid, gt, image_hw, *, kind: str = "pairwise_iou", min_weight: float = 0.5):
    """The spatial-consistency hook: per-group weights [P] in [min_weight, 1] that scale the group's
    advantages, from the coherence score `COHERENCE[kind]` of its boxes [P, G, 4] (validity [P, G], target
    [P, 4], image [P, 2]). The form is the next issue's subject; this is the switchable place for it."""
    return min_weight + (1.0 - min_weight) * COHERENCE[kind](boxes, valid, gt, image_hw)
