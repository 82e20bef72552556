"""Box coordinates between the original image frame and the model's resized frame: the one place.

Qwen2.5-VL reads and writes boxes in absolute pixels of the image *as the processor resized it*
(`ImageProcessor.resized_size`, multiples of 28 inside the pixel budget). Records, metrics and files hold
boxes in original pixels. Everything that crosses between the two frames calls this module: the CoT
targets, the batches, the rewards and the evaluation.

Frames:
  * original: `(x1, y1, x2, y2)` in pixels of the file, continuous coordinates, `0 <= x <= width`;
  * resized: the same box times `(resized_w / width, resized_h / height)` per axis (the image is resized
    with independent horizontal and vertical factors, so the box is too).

The answer the model is taught to write is the resized box rounded to whole pixels (half up) and clamped
to the resized image. Rounding moves a coordinate by at most 0.5 resized pixel, that is at most
`0.5 * width / resized_w` original pixels: at most 1 original pixel whenever the processor shrinks the
image by no more than 2x per side (every DIOR-RSVG, OPT-RSVG, RSVG-HR and VRSBench image under the default
`max_pixels`).
"""

from __future__ import annotations

import math
from typing import Sequence

from rsground_jax.models.processor import ImageProcessor

Box = tuple[float, float, float, float]


def scale_factors(height: int, width: int, processor: ImageProcessor) -> tuple[float, float]:
    """(sx, sy): resized pixels per original pixel along x and y."""
    rh, rw = processor.resized_size(height, width)
    return rw / width, rh / height


def original_to_resized(box: Sequence[float], height: int, width: int, processor: ImageProcessor) -> Box:
    """Exact (float) box in the resized frame.

    Computed as `x * resized_w / width` (not `x * (resized_w / width)`), so integer inputs whose scaled
    value is exactly a half stay exact (700 * 812 / 800 = 710.5, while 700 * 1.015 = 710.4999...).
    """
    rh, rw = processor.resized_size(height, width)
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1 * rw / width, y1 * rh / height, x2 * rw / width, y2 * rh / height


def resized_to_original(box: Sequence[float], height: int, width: int, processor: ImageProcessor) -> Box:
    """A resized-frame box (e.g. a parsed prediction) back in original pixels (not clamped)."""
    rh, rw = processor.resized_size(height, width)
    x1, y1, x2, y2 = (float(v) for v in box)
    return x1 * width / rw, y1 * height / rh, x2 * width / rw, y2 * height / rh


def answer_box(box: Sequence[float], height: int, width: int, processor: ImageProcessor) -> tuple[int, int, int, int]:
    """The integer box the model should write: resized frame, rounded half up, clamped to the image."""
    rh, rw = processor.resized_size(height, width)
    x1, y1, x2, y2 = original_to_resized(box, height, width, processor)
    return (
        _clamp(_round_half_up(x1), rw),
        _clamp(_round_half_up(y1), rh),
        _clamp(_round_half_up(x2), rw),
        _clamp(_round_half_up(y2), rh),
    )


def format_box(box: Sequence[float]) -> str:
    """`[x1, y1, x2, y2]` as written in answers (integers)."""
    return "[" + ", ".join(str(int(v)) for v in box) + "]"


def clip_to_image(box: Sequence[float], height: int, width: int) -> Box:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width), min(max(y2, 0.0), height))


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def _clamp(v: int, hi: int) -> int:
    return min(max(v, 0), hi)
