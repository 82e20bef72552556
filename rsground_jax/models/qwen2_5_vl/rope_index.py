"""M-RoPE position ids (Qwen2.5-VL `get_rope_index`), computed on the host with numpy.

Positions depend on where images sit in the prompt and on their grids, so they are data, not model code:
the data pipeline computes them once per batch and the jitted step receives them as an int32 array.

Rules (transformers' `Qwen2_5_VLModel.get_rope_index` for images):
  * text tokens advance (t, h, w) together by one;
  * the tokens of one image take (t0 + 0, t0 + row, t0 + col) over its merged grid (grid_h/2 x grid_w/2),
    where t0 is the position the image starts at;
  * the text after an image continues at t0 + max(grid_h/2, grid_w/2) (= max position so far + 1);
  * padding (attention_mask == 0) gets position 0 and is skipped when counting;
  * `rope_deltas[b] = max position + 1 - number of real tokens`, so that a token generated at
    cache index i (counting real tokens only) has position i + rope_deltas[b] on all three axes.
"""

from __future__ import annotations

import numpy as np

from ...errors import UserError


class ImageTokenMismatchError(UserError, ValueError):
    """The `<|image_pad|>` tokens of a batch do not match `image_grid_thw`."""


def tokens_per_image(image_grid_thw: np.ndarray, spatial_merge_size: int = 2) -> np.ndarray:
    """[num_images] number of `<|image_pad|>` tokens each image occupies."""
    grid = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
    return grid.prod(-1) // (spatial_merge_size**2)


def check_image_tokens(
    input_ids: np.ndarray,
    image_grid_thw: np.ndarray | None,
    image_token_id: int,
    spatial_merge_size: int = 2,
    attention_mask: np.ndarray | None = None,
) -> None:
    """Raise `ImageTokenMismatchError` with the counts when tokens and grids disagree."""
    ids = np.asarray(input_ids)
    is_image = ids == image_token_id
    if attention_mask is not None:
        is_image &= np.asarray(attention_mask).astype(bool)
    n_tokens = int(is_image.sum())
    if image_grid_thw is None or np.asarray(image_grid_thw).size == 0:
        if n_tokens:
            raise ImageTokenMismatchError(
                f"input_ids hold {n_tokens} <|image_pad|> tokens (id {image_token_id}) but no image_grid_thw was given"
            )
        return
    grid = np.asarray(image_grid_thw)
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"image_grid_thw must have shape [num_images, 3], got {grid.shape}")
    if np.any(grid[:, 1:] % spatial_merge_size):
        raise ValueError(f"image_grid_thw heights/widths must be multiples of {spatial_merge_size}, got {grid.tolist()}")
    per_image = tokens_per_image(grid, spatial_merge_size)
    if n_tokens != int(per_image.sum()):
        raise ImageTokenMismatchError(
            f"number of <|image_pad|> tokens ({n_tokens}) does not match image_grid_thw, which needs "
            f"{int(per_image.sum())} tokens ({' + '.join(str(int(n)) for n in per_image)} for {len(per_image)} image(s))"
        )


def get_rope_index(
    input_ids: np.ndarray,
    image_grid_thw: np.ndarray | None = None,
    attention_mask: np.ndarray | None = None,
    *,
    image_token_id: int = 151655,
    spatial_merge_size: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """M-RoPE positions.

    Args:
      input_ids: [B, L] token ids.
      image_grid_thw: [num_images, 3] grids of all images of the batch, in reading order (sample by sample).
      attention_mask: [B, L], 1 for real tokens, 0 for padding (left or right); None means all real.

    Returns:
      position_ids: [3, B, L] int32 (axes: temporal, height, width).
      rope_deltas: [B] int32.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape [batch, length], got {ids.shape}")
    batch, length = ids.shape
    mask = np.ones_like(ids, dtype=bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} does not match input_ids shape {ids.shape}")
    check_image_tokens(ids, image_grid_thw, image_token_id, spatial_merge_size, mask)
    grids = [] if image_grid_thw is None else [tuple(int(v) for v in g) for g in np.asarray(image_grid_thw).reshape(-1, 3)]
    next_image = 0

    position_ids = np.zeros((3, batch, length), dtype=np.int32)
    rope_deltas = np.zeros((batch,), dtype=np.int32)
    for b in range(batch):
        valid = np.flatnonzero(mask[b])
        tokens = ids[b, valid]
        pos = np.zeros((3, len(tokens)), dtype=np.int64)
        i, current = 0, 0
        while i < len(tokens):
            if tokens[i] != image_token_id:
                j = i
                while j < len(tokens) and tokens[j] != image_token_id:
                    j += 1
                pos[:, i:j] = current + np.arange(j - i)
                current += j - i
                i = j
                continue
            t, h, w = grids[next_image]
            next_image += 1
            gh, gw = h // spatial_merge_size, w // spatial_merge_size
            n = t * gh * gw
            if i + n > len(tokens) or np.any(tokens[i : i + n] != image_token_id):
                raise ImageTokenMismatchError(
                    f"sample {b}: image {next_image - 1} with grid (t={t}, h={h}, w={w}) needs {n} consecutive "
                    f"<|image_pad|> tokens at position {i}, but the run there is shorter"
                )
            tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
            pos[:, i : i + n] = current + np.stack([tt.ravel(), hh.ravel(), ww.ravel()])
            current += max(gh, gw)
            i += n
        position_ids[:, b, valid] = pos
        rope_deltas[b] = (int(pos.max()) + 1 - len(tokens)) if len(tokens) else 0
    return position_ids, rope_deltas
