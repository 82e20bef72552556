"""Building blocks shared by the vision tower and the language model: pure functions over arrays.

Shape letters used in names: b batch, t query length, s key length, d model width, n query heads,
k key/value heads, g query heads per kv head (n = k * g), h head dim, f MLP width, l layers.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
from flax import nnx

NEG_INF = -1e30  # finite, so a fully masked row (padding) gives a uniform, not NaN, softmax

# How activations are pinned while a program is traced: `(array, logical_axes) -> array`, set by
# `sharding.activation_layout(mesh)` around the traced code; None (one device, or no mesh given) leaves them
# to the partitioner. The model names logical axes only; the mesh and rules stay in `sharding`.
_ACTIVATION_LAYOUT: contextvars.ContextVar = contextvars.ContextVar("activation_layout", default=None)


@contextlib.contextmanager
def activation_layout(pin):
    """Within this block, `constrain(x, axes)` calls `pin(x, axes)` (None: no pinning)."""
    token = _ACTIVATION_LAYOUT.set(pin)
    try:
        yield
    finally:
        _ACTIVATION_LAYOUT.reset(token)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """`x` pinned to the layout its logical `axes` get under the active `activation_layout`; `x` itself outside."""
    pin = _ACTIVATION_LAYOUT.get()
    return x if pin is None else pin(x, axes)


def param(rngs: nnx.Rngs | None, shape, axes: tuple[str | None, ...], dtype, init: str = "normal", std: float = 0.02):
    """An `nnx.Param` carrying its logical axis names (`logical_axes`), which the sharding rules map to mesh axes.

    With `rngs=None` the value is zeros (used for abstract or to-be-loaded models).
    """
    assert len(axes) == len(shape), (shape, axes)
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros" or rngs is None:
        value = jnp.zeros(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, logical_axes=axes)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """Qwen RMSNorm: normalize in float32, cast back to the input dtype, then multiply by the scale."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * xf.astype(x.dtype)


def rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [..., h] rotated in float32 by cos/sin broadcastable to x; returned in x's dtype."""
    xf = x.astype(jnp.float32)
    return (xf * cos + rotate_half(xf) * sin).astype(x.dtype)


# Key and value layouts `grouped_attention` reads: (keys, values).
KV_LAYOUTS = {
    "bskh": ("bskh", "bskh"),  # sequence-major, as the projections produce them (training, full forward)
    "bksh": ("bksh", "bksh"),  # head-major: the stacked KV cache of the scanned decoder
    "bkhs": ("bkhs", "bksh"),  # keys transposed to [b, k, h, s]: the per-layer cache of the decode path
}


def grouped_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float,
                      kv_layout: str = "bskh") -> jax.Array:
    """Softmax attention with grouped kv heads.

    Args:
      q: [b, t, k, g, h]; k, v: as `kv_layout` names them (`KV_LAYOUTS`): both [b, s, k, h] ("bskh"), both
        [b, k, s, h] ("bksh", the stacked cache's head-major layout), or keys [b, k, h, s] and values
        [b, k, s, h] ("bkhs", the per-layer decode cache); mask: bool, broadcastable to [b, k, g, t, s].
    Returns:
      [b, t, k, g, h] in q's dtype. Logits are scaled in the compute dtype and the softmax runs in float32,
      as transformers' eager and SDPA paths do.
    """
    if kv_layout not in KV_LAYOUTS:
        raise ValueError(f"kv_layout must be one of {sorted(KV_LAYOUTS)}, got {kv_layout!r}")
    k_layout, v_layout = KV_LAYOUTS[kv_layout]
    if q.shape[1] == 1 and kv_layout != "bskh":
        return _decode_attention(q, k, v, mask, scale, keys_transposed=kv_layout == "bkhs")
    logits = jnp.einsum(f"btkgh,{k_layout}->bkgts", q, k) * jnp.asarray(scale, q.dtype)
    logits = jnp.where(mask, logits.astype(jnp.float32), NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum(f"bkgts,{v_layout}->btkgh", probs, v)


def _decode_attention(q, k, v, mask, scale, keys_transposed: bool):
    """`grouped_attention` for one query per sequence over a head-major cache, as broadcast multiplies and
    reductions: as batched matmuls these are batch*kv_heads products of [g, h] x [h, s], which XLA:CPU runs
    2.5x slower (measured: 171 against 64 us at batch 32, 2 kv heads, 100 slots). With the keys transposed to
    [b, k, h, s] the logits reduce over a major axis and vectorize over the slots, 2x faster again (62 against
    32 us there). Products and sums in float32."""
    qf = jnp.moveaxis(q, 1, 3).astype(jnp.float32)  # [b, k, g, 1, h]
    kf = k.astype(jnp.float32)[:, :, None, None]
    if keys_transposed:  # k [b, k, h, s]
        logits = jnp.sum(qf[..., :, None] * kf, axis=-2)  # [b, k, g, 1, s]
    else:  # k [b, k, s, h]
        logits = jnp.sum(qf[..., None, :] * kf, axis=-1)
    logits = jnp.where(mask, logits * jnp.float32(scale), NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.sum(probs[..., None] * v.astype(jnp.float32)[:, :, None, None], axis=-2)  # [b, k, g, 1, h]
    return jnp.moveaxis(out, 3, 1).astype(q.dtype)


def argmax_first(x: jax.Array) -> jax.Array:
    """`jnp.argmax(x, -1)` (first index of the maximum, NaN counting as the maximum) as a max and a min
    reduction: XLA:CPU's variadic (value, index) reduce of argmax ran 5-10x slower (158 against 29 us for
    [32, 1024]; 1,171 against 122 us for [32, 8192])."""
    top = jnp.max(x, axis=-1, keepdims=True)
    hit = (x == top) | jnp.isnan(x)
    idx = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(hit, idx, x.shape[-1]), axis=-1)


def silu_mul(gate: jax.Array, up: jax.Array) -> jax.Array:
    """silu(gate) * up."""
    return jax.nn.silu(gate) * up


def _rows(a: jax.Array) -> jax.Array:
    return a.reshape(-1, a.shape[-1])


@jax.custom_vjp
def _swiglu_core(x, w_gate, w_up, w_down, b_gate, b_up):
    return _swiglu_core_fwd(x, w_gate, w_up, w_down, b_gate, b_up)[0]


def _swiglu_core_fwd(x, w_gate, w_up, w_down, b_gate, b_up):
    # one matmul for gate and up: [in, 2, out] is the same row-major buffer as [in, 2 * out] (one GEMM on a CPU),
    # but keeps `out` its own axis, so weights split over tensor on `out` stay where they are (a concatenation
    # along `out` would move shards between devices in every layer)
    w_gu = jnp.stack([w_gate, w_up], axis=-2)
    gu = jnp.einsum("...i,ijo->...jo", x, w_gu) + jnp.stack([b_gate, b_up])
    hidden = silu_mul(gu[..., 0, :], gu[..., 1, :])
    return hidden @ w_down, (x, gu, hidden, w_gu, w_down)


def _swiglu_core_bwd(res, d_out):
    # Written by hand so each weight gradient is one dot of two row-major [tokens, features] operands. Under
    # autodiff, inside the layer scan's backward, XLA:CPU wrote the SwiGLU gradient [tokens, 384] transposed
    # (a strided loop, the step's most expensive op: 2 per layer) for the weight-gradient dot.
    x, gu, hidden, w_gu, w_down = res
    gate, up = gu[..., 0, :], gu[..., 1, :]
    sig = jax.nn.sigmoid(gate)
    d_hidden = d_out @ w_down.T
    d_gu = jnp.stack([d_hidden * up * sig * (1 + gate * (1 - sig)), d_hidden * gate * sig], axis=-2)
    d_x = jnp.einsum("...jo,ijo->...i", d_gu, w_gu)
    d_gu2 = d_gu.reshape(-1, *d_gu.shape[-2:])  # [tokens, 2, out]
    d_w_gu = jnp.einsum("tk,tjo->kjo", _rows(x), d_gu2)
    d_b_gu = d_gu2.sum(0)
    return (d_x, d_w_gu[:, 0], d_w_gu[:, 1], jnp.einsum("tk,tn->kn", _rows(hidden), _rows(d_out)),
            d_b_gu[0], d_b_gu[1])


_swiglu_core.defvjp(_swiglu_core_fwd, _swiglu_core_bwd)


def swiglu(x: jax.Array, w_gate, w_up, w_down, b_gate=None, b_up=None, b_down=None) -> jax.Array:
    """down(silu(gate(x)) * up(x)), x [..., in]; weights are [in, out], cast to x's dtype; biases optional."""
    dt = x.dtype
    zeros = jnp.zeros((w_gate.shape[-1],), dt)
    b_gate = zeros if b_gate is None else b_gate.astype(dt)
    b_up = zeros if b_up is None else b_up.astype(dt)
    out = _swiglu_core(x, w_gate.astype(dt), w_up.astype(dt), w_down.astype(dt), b_gate, b_up)
    if b_down is not None:
        out = out + b_down.astype(dt)
    return out


def layer_runs(flags: list[bool]) -> list[tuple[int, int, bool]]:
    """Split a per-layer flag list into maximal runs [(start, end, flag)], to scan each run of alike layers."""
    runs: list[tuple[int, int, bool]] = []
    for i, f in enumerate(flags):
        if runs and runs[-1][2] == f:
            runs[-1] = (runs[-1][0], i + 1, f)
        else:
            runs.append((i, i + 1, f))
    return runs


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def maybe_remat(fn, policy: str):
    """Wrap a scan body in `jax.checkpoint` according to `policy` ('none', 'full', 'dots')."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {policy!r}; choose from {sorted(REMAT_POLICIES)}")
    if policy == "none":
        return fn
    return jax.checkpoint(fn, policy=REMAT_POLICIES[policy], prevent_cse=False)
