"""Hand-written gradients and CPU-friendly forms in the building blocks agree with the plain expressions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsground_jax.models.qwen2_5_vl.layers import argmax_first, grouped_attention, swiglu


@pytest.mark.parametrize("biases", [False, True])
def test_swiglu_gradient_matches_autodiff(rng, biases):
    """The hand-written SwiGLU backward equals autodiff of the plain expression, for the input, the three
    weights and the gate/up/down biases (the vision tower's MLP has them), on a [batch, tokens, in] input."""
    d, f = 12, 29
    x = jnp.asarray(rng.normal(size=(3, 7, d)), jnp.float32)
    ws = [jnp.asarray(rng.normal(size=s) * 0.5, jnp.float32) for s in ((d, f), (d, f), (f, d))]
    bs = [jnp.asarray(rng.normal(size=(n,)), jnp.float32) for n in (f, f, d)] if biases else [None] * 3
    w_out = jnp.asarray(rng.normal(size=(3, 7, d)), jnp.float32)

    def plain(x, wg, wu, wd, bg, bu, bd):
        g, u = x @ wg, x @ wu
        if bg is not None:
            g, u = g + bg, u + bu
        out = (jax.nn.silu(g) * u) @ wd
        return out + bd if bd is not None else out

    args = (x, *ws, *bs)
    which = tuple(i for i, a in enumerate(args) if a is not None)
    ours = jax.grad(lambda *a: jnp.sum(swiglu(*a) * w_out), argnums=which)(*args)
    ref = jax.grad(lambda *a: jnp.sum(plain(*a) * w_out), argnums=which)(*args)
    np.testing.assert_allclose(swiglu(*args), plain(*args), rtol=1e-6, atol=1e-6)
    assert len(ours) == len(ref) == (7 if biases else 4)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_argmax_first_equals_argmax_with_ties_and_nan(rng):
    x = rng.integers(-3, 4, size=(64, 37)).astype(np.float32)  # small integers: many tied maxima
    x[5, 11] = np.nan
    x[9, [2, 30]] = np.nan
    x[12] = -np.inf
    x[13, :] = -np.inf
    x[13, 20] = 1.0
    np.testing.assert_array_equal(argmax_first(jnp.asarray(x)), np.argmax(x, axis=-1))
    y = rng.normal(size=(3, 5, 1000)).astype(np.float32)
    np.testing.assert_array_equal(argmax_first(jnp.asarray(y)), np.argmax(y, axis=-1))


def test_decode_attention_equals_the_matmul_form(rng):
    b, k, g, s, h = 3, 2, 3, 17, 8
    q = jnp.asarray(rng.normal(size=(b, 1, k, g, h)), jnp.float32)
    keys = jnp.asarray(rng.normal(size=(b, k, s, h)), jnp.float32)
    vals = jnp.asarray(rng.normal(size=(b, k, s, h)), jnp.float32)
    mask = jnp.asarray(rng.random((b, 1, 1, 1, s)) < 0.7).at[:, ..., 0].set(True)
    got = grouped_attention(q, keys, vals, mask, h**-0.5, "bksh")  # one query: the multiply-reduce form
    logits = jnp.einsum("btkgh,bksh->bkgts", q, keys, precision="highest") * h**-0.5
    probs = jax.nn.softmax(jnp.where(mask, logits, -1e30), axis=-1)
    ref = jnp.einsum("bkgts,bksh->btkgh", probs, vals, precision="highest")
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # the per-layer decode cache keeps keys transposed, [b, k, h, s]: same result, for one query and for two
    keys_t = jnp.swapaxes(keys, 2, 3)
    np.testing.assert_allclose(grouped_attention(q, keys_t, vals, mask, h**-0.5, "bkhs"), ref, rtol=1e-5, atol=1e-6)
    # two queries take the matmul path; its first query row equals the one-query result
    q2 = jnp.concatenate([q, q], axis=1)
    np.testing.assert_allclose(grouped_attention(q2, keys, vals, mask, h**-0.5, "bksh")[:, :1], got, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grouped_attention(q2, keys_t, vals, mask, h**-0.5, "bkhs")[:, :1], got, rtol=1e-5,
                               atol=1e-6)
    with pytest.raises(ValueError, match="kv_layout"):
        grouped_attention(q, keys, vals, mask, h**-0.5, "bhks")
