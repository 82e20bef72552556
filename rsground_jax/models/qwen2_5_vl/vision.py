"""Qwen2.5-VL vision tower: patch embedding, 2D rotary, window/full attention blocks, patch merger.

Data-dependent bookkeeping (window permutation, attention groups, rotary positions) is computed on the host
by `vision_inputs` from `image_grid_thw`, padded to static sizes, and passed to the jitted tower as int arrays.

Attention is computed over *groups*: a window (at most (window_size/patch_size)^2 = 64 patches) for window
blocks, a whole frame for the blocks in `fullatt_block_indexes`. Tokens are gathered into a [groups, slots]
layout, attended densely inside each group, and gathered back. This costs O(N * group size) instead of the
O(N^2) of a block-diagonal mask, and is exactly transformers' varlen (cu_seqlens) attention.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import VisionConfig
from .layers import apply_rotary, grouped_attention, layer_runs, maybe_remat, param, rms_norm, swiglu


# --------------------------------------------------------------------------------------------- host side


@dataclasses.dataclass
class VisionInputs:
    """Host-computed int arrays that drive the vision tower (P patches, incl. padding; P % merge_unit == 0).

    patch_perm:    [P]  patch order after the window permutation (index into `pixel_values` rows).
    rot_pos:       [P, 2] (row, col) of each permuted patch, for the 2D rotary embedding.
    window_index:  [Gw, Sw] permuted-token index of each window slot; window_valid [Gw, Sw].
    window_slot:   [P]  flat slot (g * Sw + s) of each permuted token in the window layout.
    frame_index:   [Gf, Sf], frame_valid, frame_slot: the same for full attention (one group per frame).
    merge_unperm:  [P / merge_unit] merged-token order that undoes the window permutation.
    num_merged:    number of real merged tokens (the image embeddings that feed `<|image_pad|>`).
    """

    patch_perm: np.ndarray
    rot_pos: np.ndarray
    window_index: np.ndarray
    window_valid: np.ndarray
    window_slot: np.ndarray
    frame_index: np.ndarray
    frame_valid: np.ndarray
    frame_slot: np.ndarray
    merge_unperm: np.ndarray
    num_merged: int

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "num_merged"}


def _groups(group_of_token: np.ndarray, num_groups: int | None, slots: int | None, what: str):
    """Lay out tokens (already contiguous per group) into [G, S] index/valid arrays and each token's slot."""
    n = len(group_of_token)
    ids, starts, counts = np.unique(group_of_token, return_index=True, return_counts=True)
    g_real = len(ids)
    s_need = int(counts.max()) if g_real else 1
    G = g_real if num_groups is None else num_groups
    S = s_need if slots is None else slots
    if G < g_real or S < s_need:
        raise ValueError(f"{what}: need {g_real} groups of up to {s_need} tokens, static sizes give {G} x {S}")
    index = np.zeros((G, S), np.int32)
    valid = np.zeros((G, S), bool)
    slot = np.zeros((n,), np.int32)
    for g, (start, count) in enumerate(zip(starts, counts)):
        index[g, :count] = np.arange(start, start + count)
        valid[g, :count] = True
        slot[start : start + count] = g * S + np.arange(count)
    return index, valid, slot


def vision_inputs(
    image_grid_thw: np.ndarray,
    cfg: VisionConfig,
    *,
    num_patches: int | None = None,
    num_windows: int | None = None,
    num_frames: int | None = None,
    frame_slots: int | None = None,
) -> VisionInputs:
    """Compute the tower's index arrays for images with grids `image_grid_thw` [num_images, 3].

    Static sizes (pass them for jit; None means exactly what these images need):
      num_patches: total patch rows P of the padded `pixel_values` (>= sum t*h*w, multiple of merge unit).
      num_windows: window groups Gw; window slots are always (window_size / patch_size)^2.
      num_frames, frame_slots: full-attention groups Gf and their size Sf (>= largest frame's t*h*w / t).
    """
    grid = np.asarray(image_grid_thw, np.int64).reshape(-1, 3)
    m, unit = cfg.spatial_merge_size, cfg.merge_unit
    vw = cfg.window_size // cfg.patch_size // m  # window side in merged units
    if np.any(grid <= 0) or np.any(grid[:, 1:] % m):
        raise ValueError(f"image_grid_thw rows must be positive with h and w multiples of {m}, got {grid.tolist()}")
    unit_perm, window_of_unit, frame_of_unit, hw_pos = [], [], [], []
    unit_offset = window_id = frame_id = 0
    for t, h, w in grid.tolist():
        gh, gw = h // m, w // m
        # rotary (row, col) of every patch in transformers' merge-block order
        hp = np.arange(h)[:, None].repeat(w, 1).reshape(gh, m, gw, m).transpose(0, 2, 1, 3).ravel()
        wp = np.arange(w)[None, :].repeat(h, 0).reshape(gh, m, gw, m).transpose(0, 2, 1, 3).ravel()
        hw_pos.append(np.tile(np.stack([hp, wp], -1), (t, 1)))
        # window order of merged units: windows row-major over the (padded) merged grid, units row-major inside
        nwh, nww = math.ceil(gh / vw), math.ceil(gw / vw)
        idx = np.full((t, nwh * vw, nww * vw), -1, np.int64)
        idx[:, :gh, :gw] = np.arange(t * gh * gw).reshape(t, gh, gw)
        idx = idx.reshape(t, nwh, vw, nww, vw).transpose(0, 1, 3, 2, 4).reshape(t, nwh * nww, vw * vw)
        for f in range(t):
            for win in idx[f]:
                members = win[win >= 0]
                if len(members):
                    unit_perm.append(members + unit_offset)
                    window_of_unit.append(np.full(len(members), window_id))
                    frame_of_unit.append(np.full(len(members), frame_id + f))
                    window_id += 1
        unit_offset += t * gh * gw
        frame_id += t
    unit_perm = np.concatenate(unit_perm)
    n_units = len(unit_perm)
    n_real = n_units * unit
    P = n_real if num_patches is None else num_patches
    if P < n_real or P % unit:
        raise ValueError(f"num_patches={P} must be >= {n_real} patches and a multiple of {unit}")
    pad_units = P // unit - n_units

    # Padding patches form one extra window and one extra frame; they never mix with real tokens.
    window_of_unit = np.concatenate(window_of_unit + [np.full(pad_units, window_id)])
    frame_of_unit = np.concatenate(frame_of_unit + [np.full(pad_units, frame_id)])
    unit_perm_full = np.concatenate([unit_perm, np.arange(n_units, n_units + pad_units)])
    patch_perm = (unit_perm_full[:, None] * unit + np.arange(unit)).ravel()
    rot = np.concatenate(hw_pos + [np.zeros((pad_units * unit, 2), np.int64)])[patch_perm]
    win_tok = np.repeat(window_of_unit, unit)
    frame_tok = np.repeat(frame_of_unit, unit)
    slots_w = vw * vw * unit
    if pad_units:
        # split the padding window into window-sized pieces so it fits the slot count
        pad_tok = np.arange(pad_units * unit)
        win_tok[n_real:] = window_id + pad_tok // slots_w
        frame_slots_needed = int(grid[:, 1:].prod(-1).max())
        fs = frame_slots or frame_slots_needed
        frame_tok[n_real:] = frame_id + pad_tok // fs
    windex, wvalid, wslot = _groups(win_tok, num_windows, slots_w, "window attention")
    findex, fvalid, fslot = _groups(frame_tok, num_frames, frame_slots, "full attention")
    return VisionInputs(
        patch_perm=patch_perm.astype(np.int32),
        rot_pos=rot.astype(np.int32),
        window_index=windex,
        window_valid=wvalid,
        window_slot=wslot,
        frame_index=findex,
        frame_valid=fvalid,
        frame_slot=fslot,
        merge_unperm=np.argsort(unit_perm_full).astype(np.int32),
        num_merged=n_units,
    )


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
