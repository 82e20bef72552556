"""Hand-written gradients in the building blocks agree with autodiff of the plain expressions."""

import jax
import jax.numpy as jnp
import numpy as np

from rsground_jax.models.qwen2_5_vl.layers import silu_mul


def test_silu_mul_gradient_matches_autodiff(rng):
    g = jnp.asarray(rng.normal(size=(37, 23)) * 3, jnp.float32)
    u = jnp.asarray(rng.normal(size=(37, 23)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(37, 23)), jnp.float32)
    ours = jax.grad(lambda g, u: jnp.sum(silu_mul(g, u) * w), argnums=(0, 1))(g, u)
    ref = jax.grad(lambda g, u: jnp.sum(jax.nn.silu(g) * u * w), argnums=(0, 1))(g, u)
    np.testing.assert_array_equal(silu_mul(g, u), jax.nn.silu(g) * u)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
