"""Host-side inputs of Qwen2.5-VL (numpy only, no JAX): M-RoPE positions and the vision tower's index arrays.

The one owner of batch preparation: the training steps, the sampler and evaluation all get their arrays from
here, and the data pipeline can import it without pulling in JAX.

The vision tower's bookkeeping (window permutation, attention groups, rotary positions) is computed from
`image_grid_thw`, padded to static sizes, and passed to the jitted tower as int arrays.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .config import Qwen25VLConfig, VisionConfig
from .rope_index import get_rope_index


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


def prepare_inputs(
    config: Qwen25VLConfig,
    input_ids,
    attention_mask=None,
    image_grid_thw=None,
    *,
    num_patches: int | None = None,
    num_windows: int | None = None,
    num_frames: int | None = None,
    frame_slots: int | None = None,
) -> dict[str, Any]:
    """Host-side preparation (numpy): M-RoPE positions, rope deltas and the vision tower's index arrays.

    Raises `ImageTokenMismatchError` (from `get_rope_index`) when the `<|image_pad|>` tokens do not match `image_grid_thw`.
    Returns a dict with `input_ids`, `attention_mask`, `position_ids` [3,B,L], `rope_deltas` [B] and
    `vision` (dict of int arrays, or None for a text-only batch).
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
    mask = np.ones_like(ids, np.int32) if attention_mask is None else np.asarray(attention_mask).astype(np.int32)
    grid = None if image_grid_thw is None else np.asarray(image_grid_thw).reshape(-1, 3)
    vc = config.vision
    position_ids, rope_deltas = get_rope_index(
        ids, grid, mask, image_token_id=config.image_token_id, spatial_merge_size=vc.spatial_merge_size
    )
    vision = None
    if grid is not None and len(grid):
        vision = vision_inputs(grid, vc, num_patches=num_patches, num_windows=num_windows,
                               num_frames=num_frames, frame_slots=frame_slots).arrays()
    return {"input_ids": ids.astype(np.int32), "attention_mask": mask, "position_ids": position_ids,
            "rope_deltas": rope_deltas, "vision": vision}


def add_vision_inputs(batch: dict, vcfg: VisionConfig, *, num_windows: int, frame_slots: int) -> dict:
    """Host side: add the vision tower's index arrays for a pipeline batch (one image per sample).

    `num_windows` and `frame_slots` are static sizes chosen for the whole run (see `static_vision_sizes`).
    """
    grid = np.asarray(batch["image_grid_thw"])
    num_patches = batch["pixel_values"].shape[0]
    vi = vision_inputs(grid, vcfg, num_patches=num_patches, num_windows=num_windows,
                       num_frames=len(grid) + max(1, -(-num_patches // frame_slots)), frame_slots=frame_slots)
    return {**batch, "vision": vi.arrays()}


def group_vision_inputs(batch: dict, vcfg: VisionConfig, groups: int, *, patches_per_group: int, num_windows: int,
                        frame_slots: int) -> dict:
    """Host side: a pipeline batch's images packed per group of rows, for a batch split over `groups` devices.

    Rows [g * B/groups, (g+1) * B/groups) form group g; its images' patches are packed into
    `pixel_values[g]` ([groups, patches_per_group, patch_dim], zero rows after them) with their own index arrays
    (`vision[k]` gains a leading [groups] axis). A device then runs the tower over its own rows' images only,
    and `Qwen25VL.embed` places each group's embeddings in that group's rows. Static sizes as
    `group_vision_sizes` gives them for the whole run.
    """
    grid = np.asarray(batch["image_grid_thw"]).reshape(-1, 3)
    if len(grid) % groups:
        raise ValueError(f"a batch of {len(grid)} images does not split into {groups} groups")
    per = len(grid) // groups
    starts = np.concatenate([[0], np.cumsum(grid.prod(-1))])
    pv = np.asarray(batch["pixel_values"])
    packed = np.zeros((groups, patches_per_group, pv.shape[-1]), pv.dtype)
    arrays = []
    for g in range(groups):
        a, b = int(starts[g * per]), int(starts[(g + 1) * per])
        if b - a > patches_per_group:
            raise ValueError(f"group {g} holds {b - a} patches, more than its static {patches_per_group}")
        packed[g, : b - a] = pv[a:b]
        arrays.append(vision_inputs(grid[g * per : (g + 1) * per], vcfg, num_patches=patches_per_group,
                                    num_windows=num_windows, frame_slots=frame_slots,
                                    num_frames=per + max(1, -(-patches_per_group // frame_slots))).arrays())
    return {**batch, "pixel_values": packed, "vision": {k: np.stack([v[k] for v in arrays]) for k in arrays[0]}}


def group_vision_sizes(grids: np.ndarray, vcfg: VisionConfig, images_per_group: int) -> dict[str, int]:
    """Static sizes of `group_vision_inputs` for groups of `images_per_group` images with grids among `grids`:
    room for the largest images, so every batch of a run has one shape."""
    grids = np.asarray(grids).reshape(-1, 3)
    patches = int(grids.prod(-1).max()) * images_per_group + vcfg.merge_unit  # + one padding unit: never empty
    num_windows, frame_slots = static_vision_sizes(grids, vcfg, images_per_group, patches)
    return {"patches_per_group": patches, "num_windows": num_windows, "frame_slots": frame_slots}


def static_vision_sizes(grids: np.ndarray, vcfg: VisionConfig, batch_size: int, num_patches: int) -> tuple[int, int]:
    """(num_windows, frame_slots) that hold any batch of `batch_size` images with grids among `grids`,
    plus the padding patches of a `num_patches` bucket."""
    m = vcfg.spatial_merge_size
    vw = vcfg.window_size // vcfg.patch_size // m
    grids = np.asarray(grids).reshape(-1, 3)
    windows = (-(-grids[:, 1] // m // vw)) * (-(-grids[:, 2] // m // vw)) * grids[:, 0]
    slots = vw * vw * vcfg.merge_unit
    frame_slots = int((grids[:, 1] * grids[:, 2]).max())
    return int(windows.max()) * batch_size + -(-num_patches // slots) + 1, frame_slots
