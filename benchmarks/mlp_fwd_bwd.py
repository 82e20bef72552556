"""Where the CPU gap comes from: one SwiGLU MLP (three matmuls), forward + backward, XLA:CPU vs PyTorch.

    python benchmarks/mlp_fwd_bwd.py [--tokens 4096] [--dim 128] [--ffn 384]

Same shapes, same float32 data, both on all CPU cores; prints both times and the ratio. Nothing here is
model code: it isolates the matmul efficiency of the two CPU backends at the skinny shapes of small models.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch


def median_ms(fn, reps=20):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--ffn", type=int, default=384)
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.tokens, a.dim), np.float32)
    ws = [rng.standard_normal(s, np.float32) * 0.05 for s in ((a.dim, a.ffn), (a.dim, a.ffn), (a.ffn, a.dim))]

    def loss(p, x):
        return jnp.sum((jax.nn.silu(x @ p[0]) * (x @ p[1])) @ p[2])

    grad = jax.jit(jax.grad(loss))
    jp, jx = [jnp.asarray(w) for w in ws], jnp.asarray(x)
    ours = median_ms(lambda: jax.block_until_ready(grad(jp, jx)))

    tx = torch.tensor(x)
    tp = [torch.tensor(w, requires_grad=True) for w in ws]

    def torch_step():
        for w in tp:
            w.grad = None
        (torch.nn.functional.silu(tx @ tp[0]) * (tx @ tp[1]) @ tp[2]).sum().backward()

    ref = median_ms(torch_step)
    gflop = 3 * 2 * 3 * a.tokens * a.dim * a.ffn / 1e9
    print(f"SwiGLU MLP fwd+bwd, {a.tokens} tokens, {a.dim} -> {a.ffn}: XLA {ours:.1f} ms ({gflop / ours * 1e3:.0f} GFLOP/s), "
          f"PyTorch {ref:.1f} ms ({gflop / ref * 1e3:.0f} GFLOP/s), ratio XLA/PyTorch = {ours / ref:.2f}")


if __name__ == "__main__":
    main()
