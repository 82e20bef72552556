"""Qwen2.5-VL vision tower: patch embedding, 2D rotary, window/full attention blocks, patch merger.

Data-dependent bookkeeping (window permutation, attention groups, rotary positions) is computed on the host
by `inputs.vision_inputs` from `image_grid_thw`, padded to static sizes, and passed to the jitted tower as int
arrays.

Attention is computed over *groups*: a window (at most (window_size/patch_size)^2 = 64 patches) for window
blocks, a whole frame for the blocks in `fullatt_block_indexes`. Tokens are gathered into a [groups, slots]
layout, attended densely inside each group, and gathered back. This costs O(N * group size) instead of the
O(N^2) of a block-diagonal mask, and is exactly transformers' varlen (cu_seqlens) attention.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from .config import VisionConfig
from .layers import apply_rotary, grouped_attention, layer_runs, maybe_remat, param, rms_norm, swiglu


# --------------------------------------------------------------------------------------------- device side


class VisionTower(nnx.Module):
    """Vision transformer with stacked block parameters (leading `layers` axis, scanned in runs)."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs | None, param_dtype=jnp.float32, remat: str = "none"):
        self.cfg = cfg
        self.remat = remat
        L, C, N, H, F = cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size
        D4 = C * cfg.merge_unit
        p = lambda shape, axes, init="normal": param(rngs, shape, axes, param_dtype, init)  # noqa: E731
        self.patch_embed_pc = p((cfg.patch_dim, C), ("patch", "vision_embed"))
        self.norm1_lc = p((L, C), ("layers", "vision_embed"), "ones")
        self.norm2_lc = p((L, C), ("layers", "vision_embed"), "ones")
        self.qkv_lc3nh = p((L, C, 3, N, H), ("layers", "vision_embed", None, "vision_heads", "head_dim"))
        self.qkv_bias_l3nh = p((L, 3, N, H), ("layers", None, "vision_heads", "head_dim"), "zeros")
        self.proj_lnhc = p((L, N, H, C), ("layers", "vision_heads", "head_dim", "vision_embed"))
        self.proj_bias_lc = p((L, C), ("layers", "vision_embed"), "zeros")
        self.gate_lcf = p((L, C, F), ("layers", "vision_embed", "vision_mlp"))
        self.gate_bias_lf = p((L, F), ("layers", "vision_mlp"), "zeros")
        self.up_lcf = p((L, C, F), ("layers", "vision_embed", "vision_mlp"))
        self.up_bias_lf = p((L, F), ("layers", "vision_mlp"), "zeros")
        self.down_lfc = p((L, F, C), ("layers", "vision_mlp", "vision_embed"))
        self.down_bias_lc = p((L, C), ("layers", "vision_embed"), "zeros")
        self.merger_norm_c = p((C,), ("vision_embed",), "ones")
        self.merger_fc1_ee = p((D4, D4), ("vision_merge", "vision_mlp"))
        self.merger_fc1_bias_e = p((D4,), ("vision_mlp",), "zeros")
        self.merger_fc2_ed = p((D4, cfg.out_hidden_size), ("vision_mlp", "embed"))
        self.merger_fc2_bias_d = p((cfg.out_hidden_size,), ("embed",), "zeros")

    def rotary(self, rot_pos: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[P, 2] (row, col) -> cos, sin [P, head_dim]: per axis head_dim/4 frequencies, (h, w) then repeated."""
        quarter = self.cfg.head_dim // 4
        inv_freq = 1.0 / (self.cfg.rope_theta ** (jnp.arange(0, 2 * quarter, 2, dtype=jnp.float32) / (2 * quarter)))
        freqs = rot_pos.astype(jnp.float32)[:, :, None] * inv_freq  # [P, 2, quarter]
        freqs = freqs.reshape(freqs.shape[0], 2 * quarter)
        emb = jnp.concatenate([freqs, freqs], axis=-1)
        return jnp.cos(emb), jnp.sin(emb)

    def _block(self, x, lp, cos, sin, index, valid, slot):
        """One pre-norm block; attention within the groups given by (index [G,S], valid [G,S], slot [P])."""
        cfg, dt = self.cfg, x.dtype
        P = x.shape[0]
        h = rms_norm(x, lp["norm1"], cfg.rms_norm_eps)
        qkv = jnp.einsum("pc,ctnh->tpnh", h, lp["qkv"].astype(dt)) + lp["qkv_bias"].astype(dt)[:, None]
        q = apply_rotary(qkv[0], cos[:, None], sin[:, None])
        k = apply_rotary(qkv[1], cos[:, None], sin[:, None])
        v = qkv[2]
        G, S = index.shape
        gather = lambda a: a[index.reshape(-1)].reshape(G, S, *a.shape[1:])  # noqa: E731
        mask = (valid[:, None, None, None, :] & valid[:, None, None, :, None])  # [G,1,1,S,S]
        o = grouped_attention(gather(q)[:, :, :, None], gather(k), gather(v), mask, cfg.head_dim**-0.5)
        o = o.reshape(G * S, cfg.num_heads, cfg.head_dim)[slot]  # back to token order, [P, N, H]
        x = x + jnp.einsum("pnh,nhc->pc", o, lp["proj"].astype(dt)) + lp["proj_bias"].astype(dt)
        h = rms_norm(x, lp["norm2"], cfg.rms_norm_eps)
        x = x + swiglu(h, lp["gate"], lp["up"], lp["down"], lp["gate_bias"], lp["up_bias"], lp["down_bias"])
        assert x.shape[0] == P
        return x

    def _stacked(self):
        return {
            "norm1": self.norm1_lc[...], "norm2": self.norm2_lc[...],
            "qkv": self.qkv_lc3nh[...], "qkv_bias": self.qkv_bias_l3nh[...],
            "proj": self.proj_lnhc[...], "proj_bias": self.proj_bias_lc[...],
            "gate": self.gate_lcf[...], "gate_bias": self.gate_bias_lf[...],
            "up": self.up_lcf[...], "up_bias": self.up_bias_lf[...],
            "down": self.down_lfc[...], "down_bias": self.down_bias_lc[...],
        }

    def __call__(self, pixel_values: jax.Array, vi: dict[str, jax.Array], dtype=jnp.float32) -> jax.Array:
        """pixel_values [P, patch_dim] (padded rows allowed) -> merged embeddings [P / 4, out_hidden] in the
        original (un-permuted) order; rows past `num_merged` are padding."""
        cfg = self.cfg
        x = pixel_values.astype(dtype)[vi["patch_perm"]] @ self.patch_embed_pc[...].astype(dtype)
        cos, sin = self.rotary(vi["rot_pos"])
        stacked = self._stacked()
        flags = [i in cfg.fullatt_block_indexes for i in range(cfg.depth)]
        for start, end, full in layer_runs(flags):
            groups = (vi["frame_index"], vi["frame_valid"], vi["frame_slot"]) if full else \
                     (vi["window_index"], vi["window_valid"], vi["window_slot"])

            def body(carry, lp, groups=groups):
                return self._block(carry, lp, cos, sin, *groups), None

            run = jax.tree.map(lambda a: a[start:end], stacked)
            x, _ = jax.lax.scan(maybe_remat(body, self.remat), x, run)
        x = rms_norm(x, self.merger_norm_c[...], cfg.rms_norm_eps)
        x = x.reshape(-1, cfg.hidden_size * cfg.merge_unit)
        x = x @ self.merger_fc1_ee[...].astype(dtype) + self.merger_fc1_bias_e[...].astype(dtype)
        x = jax.nn.gelu(x, approximate=False)
        x = x @ self.merger_fc2_ed[...].astype(dtype) + self.merger_fc2_bias_d[...].astype(dtype)
        return x[vi["merge_unperm"]]
