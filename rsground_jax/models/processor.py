"""Qwen2.5-VL image processor: the same numbers as transformers' `Qwen2VLImageProcessor`.

An image becomes
  * `pixel_values`  [num_patches, 3 * temporal_patch * patch * patch] float32 (1176 values per patch), and
  * `image_grid_thw` (1, grid_h, grid_w) in 14-px patches,
with patches laid out in 2x2 merge-block order (the order the patch merger expects), and
`grid_h * grid_w / merge**2` `<|image_pad|>` tokens in the prompt.

Steps, as in transformers' PIL backend: convert to RGB (alpha composited on white), `smart_resize` both sides
to multiples of 28 inside the pixel budget, bicubic resize in PIL on uint8, rescale by 1/255, normalize with
the CLIP mean/std, patchify (a still image is repeated over the 2 temporal positions).

This module is numpy + PIL only: the data pipeline imports it without JAX.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Target (height, width): multiples of `factor`, area in [min_pixels, max_pixels], aspect kept."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height} width={width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be at most 200, got {max(height, width) / min(height, width):.1f} "
            f"for height={height} width={width}"
        )
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels={min_pixels} is larger than max_pixels={max_pixels}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# PIL modes of one 16-bit (or 32-bit integer) channel. PIL's own conversion to RGB clips these at 255, so a
# 16-bit image would come out nearly all white (transformers' processor does the same); they are scaled instead.
WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def pixel_mode_problem(image: Image.Image) -> str | None:
    """Why `to_rgb` cannot convert this image faithfully, or None. Checked when data is read, so that a bad
    image is reported with its file name."""
    if image.mode == "F":
        return "32-bit floating-point pixels have no defined 8-bit range; convert the image to 8 or 16 bits"
    if image.mode == "I":
        lo, hi = image.getextrema()
        if lo < 0 or hi > 65535:
            return f"32-bit integer pixels in [{lo}, {hi}], outside the 16-bit range this reader scales to 8 bits"
    return None


def to_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """RGB PIL image; transparency is composited onto white, as transformers does. One 16-bit channel (PIL
    modes I;16 and I with values in 0-65535) is scaled to 8 bits as round(v / 257) and repeated over RGB."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] not in (3, 4):
            raise ValueError(f"expected an (H, W, 3|4) uint8 array, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image array, got dtype {image.dtype}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.mode in WIDE_GRAY_MODES or image.mode == "F":
        problem = pixel_mode_problem(image)
        if problem:
            raise ValueError(problem)
        wide = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray(((wide + 128) // 257).astype(np.uint8), "L")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
    """Qwen2-VL / Qwen2.5-VL image processor (defaults are transformers' defaults)."""

    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the image the model sees: the frame its box coordinates live in."""
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def grid_thw(self, height: int, width: int) -> tuple[int, int, int]:
        rh, rw = self.resized_size(height, width)
        return 1, rh // self.patch_size, rw // self.patch_size

    def num_image_tokens(self, height: int, width: int) -> int:
        """Number of `<|image_pad|>` tokens for an image of this original size."""
        t, h, w = self.grid_thw(height, width)
        return t * h * w // (self.merge_size**2)

    def process_one(self, image: Image.Image | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One image -> (pixel_values [grid_h*grid_w, patch_dim] float32, grid_thw int64 [3])."""
        rgb = to_rgb(image)
        width, height = rgb.size
        rh, rw = self.resized_size(height, width)
        resized = np.asarray(rgb.resize((rw, rh), resample=Image.Resampling.BICUBIC), dtype=np.uint8)
        # float64 rescale then float32 normalize, the order transformers uses (bit-level agreement).
        x = (resized.astype(np.float64) * (1.0 / 255.0)).astype(np.float32)
        x = (x - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        x = np.ascontiguousarray(x.transpose(2, 0, 1))  # [C, H, W]
        return self.patchify(x), np.array([1, rh // self.patch_size, rw // self.patch_size], np.int64)

    def patchify(self, chw: np.ndarray) -> np.ndarray:
        """[C, H, W] -> [grid_h*grid_w, C*T*p*p] in merge-block order, the frame repeated T times."""
        c, h, w = chw.shape
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // p, w // p
        x = chw.reshape(c, gh // m, m, p, gw // m, m, p)
        x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # [gh/m, gw/m, m, m, C, p, p]
        x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))
        return np.ascontiguousarray(x.reshape(gh * gw, c * t * p * p), dtype=np.float32)

    def __call__(self, images) -> dict[str, np.ndarray]:
        """A list of images -> {'pixel_values': [sum patches, patch_dim], 'image_grid_thw': [n, 3]}."""
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        if len(images) == 0:
            raise ValueError("ImageProcessor got an empty list of images")
        patches, grids = zip(*(self.process_one(im) for im in images))
        return {"pixel_values": np.concatenate(patches, 0), "image_grid_thw": np.stack(grids, 0)}
