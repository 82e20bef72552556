"""Rewards computed on device from generated token ids, vectorized over all completions of a step.

`parse_completions` reads the answer grammar of `data/answers.py` straight from token ids, one token per step:
the tag matcher and the box-content automaton are lifted from bytes to tokens on the host
(`data.answers.TokenBytes.tables`), so the device does a few table lookups per token, not per byte. No
detokenizing, no host round trip.

Reward terms (`REWARDS`, by name; a config gives each a weight, `weighted_reward` sums them), all in the
resized-pixel frame the model answers in, boxes clipped to the image first:
  format      {0, 1}: `parse.format_ok` (think block, then an answer block holding a box)
  iou         [0, 1]: IoU with the target (`eval.metrics.box_iou`, the metric's own formula); 0 without a box
  giou        [-1, 1]: generalized IoU; -1 without a box
  positional  [0, 1]: `positional_reward`; 0 without a box
  diou        [-1, 1]: distance IoU (DeepGrounder's box reward); -1 without a box
  gaussian    [0, 1]: GUI-G2's Gaussian point reward of the predicted centre under the target's Gaussian; 0
              without a box
A new term is a function `(RewardInputs, **options) -> [N]` added to `REWARDS`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..data import answers as parse
from ..eval.metrics import box_diou, box_giou, box_iou

_PHASE = {name: i for i, name in enumerate(parse.BOX_PHASES)}


def _content_bytes(q, tables, tok, start, lo, hi):
    """Run the box automaton over the bytes of one token per row ([N] ids starting at byte `start`) that lie in
    [lo, hi): a token the answer content covers only in part (it holds a tag's edge, so no digit)."""
    data = tables["bytes"][tok].astype(jnp.int32)  # [N, W]
    pos = start[:, None] + jnp.arange(data.shape[1])[None]
    inside = (pos >= lo[:, None]) & (pos < hi[:, None]) & (data > 0)
    flat = tables["box_bytes"].reshape(-1).astype(jnp.int32)  # one-index gathers: XLA:CPU's fast path
    for j in range(data.shape[1]):
        q = jnp.where(inside[:, j], flat[q * 256 + data[:, j]], q)
    return q


def _field(word, layout, name):
    shift, bits = layout[name]
    return ((word >> shift) & ((1 << bits) - 1)).astype(jnp.int32)


def _the(mask, values):
    """[N]: per row the value of `values` [T, N] at the one position where `mask` [T, N] holds (0 where none): a
    masked reduction over the leading axis, which XLA:CPU vectorizes across rows, unlike an argmax."""
    return jnp.where(mask, values, 0).sum(0)


_TOKEN = parse.unpack_offsets(parse.TOKEN_FIELDS)
_TAG1 = parse.unpack_offsets(parse.TAG_FIELDS)
_TAG2 = parse.unpack_offsets(parse.TAG_FIELDS_2)


def parse_completions(tokens: jax.Array, lengths: jax.Array, tables: dict) -> dict[str, jax.Array]:
    """Answer boxes and the format check of completions, from token ids, stepping token by token.

    tokens [N, T] int (ids past a row's length are ignored), lengths [N], tables: `TokenBytes.tables()` as
    arrays. Returns box [N, 4] float32 (0 where there is none), has_box [N] bool and format [N] bool: on the
    decoded text, `has_box` and `box` equal `parse.parse_box` (values to float32 precision) and `format`
    equals `parse.format_ok`.

    Bytes are counted in the reduced stream (`parse.reduce_bytes`), which preserves every tag and answer. A
    scan over the tokens runs the tag matcher (one packed word per token and state gives its next state and
    the tags completed inside the token, and where) and counts bytes; the answer block is the last `</answer>`
    and the last `<answer>` that ends before it; a second scan runs the box automaton over the whole tokens
    between them, accumulating the digits, with the at most two tokens the content covers in part read byte by
    byte. Everything runs time-major ([T, N]): reductions over tokens then vectorize across completions.
    """
    n, t = tokens.shape
    vocab, states = tables["tag_word"].shape[:2]
    live = (jnp.arange(t)[:, None] < lengths[None, :])  # [T, N]
    tok = jnp.clip(tokens.T, 0, vocab - 1).astype(jnp.int32)
    word = tables["token_word"][tok]
    size = jnp.where(live, _field(word, _TOKEN, "len"), 0)
    tag_rows = tables["tag_word"].reshape(vocab * states, 2)  # one-index row gathers: XLA:CPU's fast path

    def tag_step(carry, xs):
        m, pos = carry
        ids, on, nbytes = xs
        w = tag_rows[ids * states + m]  # [N, 2]
        return (jnp.where(on, _field(w[:, 0], _TAG1, "next"), m), pos + nbytes), (w, pos)

    _, (words, start) = jax.lax.scan(tag_step, (jnp.zeros((n,), jnp.int32), jnp.zeros((n,), jnp.int32)),
                                     (tok, live, size))
    end = start + size  # start [T, N]: the token's first byte in the completion's stream
    w1 = jnp.where(live, words[..., 0], 0)
    w2 = jnp.where(live, words[..., 1], 0)
    none = jnp.int32(-1)

    def at(w, layout, name):  # a tag's '>' as a stream position, -1 where the token completes none
        off = _field(w, layout, name)
        return jnp.where(off > 0, start + off - 1, none)

    close_end = at(w1, _TAG1, "close_last").max(0)
    close_start = close_end - (len(parse.CLOSE) - 1)
    opens = [at(w1, _TAG1, f) for f in ("open_first", "open_last")]
    open_end = jnp.maximum(*[jnp.where(o < close_start[None], o, none).max(0) for o in opens])
    block = (close_end >= 0) & (open_end >= 0)
    lo, hi = open_end + 1, close_start  # the content's bytes [lo, hi)

    whole = live & (size > 0) & (start >= lo[None]) & (end <= hi[None])
    partial = live & (size > 0) & (start < hi[None]) & (end > lo[None]) & ~whole
    head = partial & (start < lo[None])  # the one token holding the '>' of <answer>
    tail = partial & (end > hi[None])  # the one token holding the '<' of </answer>
    has_head, has_tail = head.any(0), tail.any(0)
    head_start, tail_start = _the(head, start), _the(tail, start)
    q = jnp.full((n,), parse.box_state("pre"), jnp.int32)
    q = jnp.where(has_head, _content_bytes(q, tables, _the(head, tok), head_start, lo, hi), q)

    digits = jnp.where(whole & (_field(word, _TOKEN, "is_digit") > 0), _field(word, _TOKEN, "digit"), -1)
    box_rows = tables["box_next"].reshape(-1)
    nq = tables["box_next"].shape[1]
    slots = jnp.arange(4)[:, None]

    def box_step(carry, xs):
        q, ints, fracs, scale = carry  # ints, fracs [4, N]: the numbers read so far
        ids, on, d = xs
        phase, k = q // 4, q % 4
        digit = d >= 0
        df = d.astype(jnp.float32)[None]
        which = slots == k[None]
        new_number = digit & (phase == _PHASE["num_start"])
        in_int = digit & (phase == _PHASE["int"])
        in_frac = digit & ((phase == _PHASE["dot"]) | (phase == _PHASE["frac"]))
        ints = jnp.where(which & new_number[None], df, ints)
        ints = jnp.where(which & in_int[None], ints * 10 + df, ints)
        fracs = jnp.where(which & in_frac[None], fracs + df * scale[None], fracs)
        scale = jnp.where(new_number, 0.1, jnp.where(in_frac, scale * 0.1, scale))
        q = jnp.where(on, box_rows[ids * nq + q].astype(jnp.int32), q)
        return (q, ints, fracs, scale), None

    zeros4 = jnp.zeros((4, n), jnp.float32)
    (q, ints, fracs, _), _ = jax.lax.scan(box_step, (q, zeros4, zeros4, jnp.full((n,), 0.1)), (tok, whole, digits))
    separate_tail = has_tail & ~(has_head & (tail_start == head_start))
    q = jnp.where(separate_tail, _content_bytes(q, tables, _the(tail, tok), tail_start, lo, hi), q)
    has_box = block & (q == parse.box_state("done", 3))
    box = jnp.where(has_box[:, None], (ints + fracs).T, 0.0)

    # format: one tag of each kind, <think> first, </answer> last, only whitespace between </think> and <answer>
    counts = [_field(w1, _TAG1, "open_count"), _field(w1, _TAG1, "close_count"),
              _field(w1, _TAG1, "think_open_count"), _field(w2, _TAG2, "think_close_count")]
    once = jnp.all(jnp.stack([c.sum(0) for c in counts]) == 1, axis=0)
    fs, ls = _field(word, _TOKEN, "first_solid"), _field(word, _TOKEN, "last_solid")
    first_solid = jnp.where(live & (fs > 0), start + fs - 1, jnp.int32(2**30)).min(0)
    last_solid = jnp.where(live & (ls > 0), start + ls - 1, none).max(0)
    think_open_start = at(w1, _TAG1, "think_open_last").max(0) - (len(parse.THINK_OPEN) - 1)
    think_close_end = at(w2, _TAG2, "think_close_last").max(0)
    answer_open_start = opens[1].max(0) - (len(parse.OPEN) - 1)
    a, b = think_close_end + 1, answer_open_start  # whitespace only in [a, b)
    inside = live & (start >= a[None]) & (end <= b[None])
    solid_between = jnp.where(inside, _field(word, _TOKEN, "solid"), 0).sum(0)
    prefixes = tables["nonws_prefix"]
    width = prefixes.shape[1]
    flat_prefix = prefixes.reshape(-1).astype(jnp.int32)
    for edge in (a, b):  # the tokens the region covers in part, read from the prefix table
        straddle = live & (start < edge[None]) & (end > edge[None])
        s_e, n_e, t_e = _the(straddle, start), _the(straddle, size), _the(straddle, tok)
        lo_e, hi_e = jnp.clip(a - s_e, 0, n_e), jnp.clip(b - s_e, 0, n_e)
        cut = straddle.any(0) & (hi_e > lo_e)
        if edge is b:  # a token holding both edges is counted once
            cut &= ~((s_e < a) & (s_e + n_e > a))
        solid_between += jnp.where(cut, flat_prefix[t_e * width + hi_e] - flat_prefix[t_e * width + lo_e], 0)
    fmt = (once & (think_open_start == first_solid) & (close_end == last_solid) & (think_close_end < answer_open_start)
           & (solid_between == 0) & has_box)
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


def gaussian_point_reward(pred: jax.Array, gt: jax.Array, *, sigma_scale: float = 0.5) -> jax.Array:
    """GUI-G2's point reward, [N] in [0, 1]: exp(-1/2 [(dx / s_x)^2 + (dy / s_y)^2]), d the centre offset and
    s = sigma_scale x the target's width and height (at least a pixel). A candidate for the positional reward
    that docs/method.md compares: it is local (it underflows to 0 a few target sizes away, so a box far off gets
    no signal, which is what the positional reward is for)."""
    pred, gt = pred.astype(jnp.float32), gt.astype(jnp.float32)
    sx = jnp.maximum(sigma_scale * (gt[:, 2] - gt[:, 0]), 1.0)
    sy = jnp.maximum(sigma_scale * (gt[:, 3] - gt[:, 1]), 1.0)
    dx = (pred[:, 0] + pred[:, 2] - gt[:, 0] - gt[:, 2]) / 2
    dy = (pred[:, 1] + pred[:, 3] - gt[:, 1] - gt[:, 3]) / 2
    return jnp.exp(-0.5 * ((dx / sx) ** 2 + (dy / sy) ** 2))


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


def _hit(x: RewardInputs, threshold: float = 0.5) -> jax.Array:
    """1 where the box counts towards Pr@threshold (IoU > threshold, `eval.metrics.grounding_metrics`' test)."""
    return jnp.where(x.has_box, box_iou(x.pred, x.gt, jnp)[0] > threshold, False).astype(jnp.float32)


def _diou(x: RewardInputs) -> jax.Array:
    return jnp.where(x.has_box, box_diou(x.pred, x.gt, jnp), -1.0)


def _gaussian(x: RewardInputs, **options) -> jax.Array:
    return jnp.where(x.has_box, gaussian_point_reward(x.pred, x.gt, **options), 0.0)


REWARDS: dict[str, Callable[..., jax.Array]] = {
    "format": _format,
    "iou": _iou,
    "giou": _giou,
    "positional": _positional,
    "diou": _diou,
    "gaussian": _gaussian,
    "hit": _hit,
}
REWARD_RANGES = {"format": (0.0, 1.0), "iou": (0.0, 1.0), "giou": (-1.0, 1.0), "positional": (0.0, 1.0),
                 "diou": (-1.0, 1.0), "gaussian": (0.0, 1.0), "hit": (0.0, 1.0)}


_UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
_POSITIVE = (lambda v: 0 < v < float("inf"), "> 0")
# each reward's options (`reward_options.<name>.<key>`) and what they may be
REWARD_OPTIONS = {("positional", "iou_weight"): _UNIT, ("positional", "scale"): _POSITIVE,
                  ("gaussian", "sigma_scale"): _POSITIVE, ("hit", "threshold"): _UNIT}


class RewardConfigError(ValueError):
    pass


def _finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def check_reward_weights(weights: dict, options: dict | None = None) -> None:
    """A clear error for a reward name that is not in `REWARDS`, a weight that is not a number, or an option
    (`options`: {name: {key: value}}) that the term does not take or that is out of `REWARD_OPTIONS`' range."""
    for name in list(weights) + list(options or {}):
        if name not in REWARDS:
            raise RewardConfigError(f"reward {name!r} does not exist; known rewards: {sorted(REWARDS)}")
    for name, w in weights.items():
        if not _finite_number(w):
            raise RewardConfigError(f"reward weight {name}={w!r} must be a finite number")
    for name, opts in (options or {}).items():  # checked here, not as a TypeError while the step is traced
        if not isinstance(opts, dict):
            raise RewardConfigError(f"reward_options.{name}={opts!r} must be a dict of options")
        known = {key: bounds for (term, key), bounds in REWARD_OPTIONS.items() if term == name}
        for key, value in opts.items():
            if key not in known:
                raise RewardConfigError(f"reward_options.{name}.{key}: {name} takes no option {key!r}; its options: "
                                        f"{sorted(known) or 'none'}")
            ok, text = known[key]
            if not _finite_number(value) or not ok(value):
                raise RewardConfigError(f"reward_options.{name}.{key}={value!r} must be a number {text}")


def reward_terms(tokens, lengths, tables, gt, image_hw, weights: dict, options: dict | None = None):
    """All reward terms of a batch of completions: (terms {name: [N]}, parsed {box, has_box, format, pred}).

    tokens [N, T], lengths [N], tables: `TokenBytes.tables()` as arrays, gt [N, 4], image_hw [N, 2]."""
    parsed = parse_completions(tokens, lengths, tables)
    x = RewardInputs(pred=clip_to_image(parsed["box"], image_hw), has_box=parsed["has_box"], format=parsed["format"],
                     gt=gt.astype(jnp.float32), image_hw=image_hw, lengths=lengths)
    options = options or {}
    terms = {name: REWARDS[name](x, **dict(options.get(name, {}))) for name in weights}
    return terms, {**parsed, "pred": x.pred}


def weighted_reward(terms: dict, weights: dict) -> jax.Array:
    return functools.reduce(jnp.add, [float(weights[k]) * v for k, v in terms.items()])


# ----------------------------------------------------------------------------------- group coherence
#
# A coherence score [P] in [0, 1] of each group's G boxes [P, G, 4] (validity [P, G], target [P, 4], image
# [P, 2]); `coherence_weights` maps it to the weight that scales the group's advantages. Answers without a box
# count as incoherent. Forms and the reading of the ablation: docs/method.md.


def _pair_mean(values, mask):
    """The mean of [P, G, G] pair values over the G (G - 1) / 2 unordered pairs, pairs outside `mask` counting 0."""
    g = values.shape[1]
    upper = jnp.triu(jnp.ones((g, g), bool), k=1)
    return jnp.sum(jnp.where(mask & upper, values, 0.0), axis=(1, 2)) / (g * (g - 1) / 2)


def pairwise_iou_coherence(boxes: jax.Array, valid: jax.Array, gt: jax.Array, image_hw: jax.Array) -> jax.Array:
    """The mean IoU over the pairs of a group's boxes; a pair with an answer without a box counts 0. It does not
    look at the target: a group that agrees on a wrong object scores 1."""
    iou, _, _ = box_iou(boxes[:, :, None, :], boxes[:, None, :, :], jnp)
    return _pair_mean(iou, valid[:, :, None] & valid[:, None, :])


def target_coherence(boxes: jax.Array, valid: jax.Array, gt: jax.Array, image_hw: jax.Array) -> jax.Array:
    """The method's form: the mean pairwise IoU counting only pairs whose two boxes both overlap the target.
    Rollouts that agree on the target score near 1; scattered ones low; answers without a box, and rollouts
    that agree on a wrong object, 0 (coherent and wrong earns no weight)."""
    iou, _, _ = box_iou(boxes[:, :, None, :], boxes[:, None, :, :], jnp)
    on = valid & (box_iou(boxes, gt[:, None, :], jnp)[0] > 0)
    return _pair_mean(iou, on[:, :, None] & on[:, None, :])


def centre_spread_coherence(boxes: jax.Array, valid: jax.Array, gt: jax.Array, image_hw: jax.Array, *,
                            scale: float = 0.1) -> jax.Array:
    """share of valid answers x exp(-rms distance of the valid boxes' centres from their mean / (scale x image
    diagonal)): 1 when every answer has a box and all centres coincide. Blind to the target, like pairwise_iou."""
    c = (boxes[..., :2] + boxes[..., 2:]) / 2  # [P, G, 2]
    n = valid.sum(1)
    w = valid.astype(jnp.float32)[..., None]
    mean = jnp.sum(c * w, axis=1) / jnp.maximum(n, 1)[:, None]
    rms = jnp.sqrt(jnp.sum(jnp.sum((c - mean[:, None]) ** 2, -1) * w[..., 0], axis=1) / jnp.maximum(n, 1))
    diag = jnp.sqrt(jnp.sum(image_hw.astype(jnp.float32) ** 2, axis=1))
    return jnp.where(n > 0, n / boxes.shape[1] * jnp.exp(-rms / (scale * diag)), 0.0)


COHERENCE: dict[str, Callable[..., jax.Array]] = {"target_pairwise_iou": target_coherence,
                                                  "pairwise_iou": pairwise_iou_coherence,
                                                  "centre_spread": centre_spread_coherence}


def coherence_weights(boxes, valid, gt, image_hw, *, kind: str = "target_pairwise_iou", min_weight: float = 0.5):
    """Per-group weights [P] in [min_weight, 1] that scale the group's advantages: min_weight + (1 - min_weight)
    x the coherence score `COHERENCE[kind]` of its boxes [P, G, 4] (validity [P, G], target [P, 4], image
    [P, 2])."""
    return min_weight + (1.0 - min_weight) * COHERENCE[kind](boxes, valid, gt, image_hw)
