"""Image loading for the pipelines, and the processor's pixels written straight into a batch buffer.

`ImageProcessor.process_one` (rsground_jax.models.processor) is the reference: RGB conversion, bicubic
resize in PIL, rescale in float64 then float32 normalization, patchify in merge-block order with the frame
repeated over the temporal patch. `write_patches` produces the same bits faster, for the data loader:

  * normalization through a lookup table: a normalized value depends only on (channel, uint8 value), and
    the table is computed with the processor's exact arithmetic (float64 rescale -> float32, then float32
    subtract and divide), so every entry is bit-identical to the elementwise computation;
  * the uint8 -> float32 lookup happens once per pixel, and the patch layout (including the temporal
    repeat) is written directly into the caller's rows of the batch's `pixel_values`, so a sample's
    15.8 MB of patches (812x812 image) is written once instead of computed, patchified and copied again.

The parity test (tests/data/test_images.py) compares against `process_one` bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import io

import numpy as np
from PIL import Image

from rsground_jax.data.records import DataError
from rsground_jax.models.processor import ImageProcessor, pixel_mode_problem, to_rgb


@dataclasses.dataclass(frozen=True)
class FileImages:
    """Images read from the records' paths."""

    paths: tuple[str, ...]

    def load(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            im = Image.open(path)
            im.load()
        except FileNotFoundError:
            raise DataError(path, "image file not found", kind="missing_image") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(path, f"corrupt or unreadable image ({type(e).__name__}: {e})", kind="corrupt_image") from None
        problem = pixel_mode_problem(im)
        if problem:
            raise DataError(path, problem, kind="unsupported_image")
        return im

    def subset(self, keep) -> "FileImages":
        return FileImages(tuple(self.paths[i] for i in keep))


@dataclasses.dataclass(frozen=True)
class EncodedImages:
    """Images held as encoded bytes by a random-access source (e.g. a TFDS data source), by index."""

    source: object  # supports source[i][key] -> bytes
    indices: tuple[int, ...]
    key: str = "image"
    name: str = "data source"

    def load(self, i: int) -> Image.Image:
        data = self.source[self.indices[i]][self.key]
        try:
            im = Image.open(io.BytesIO(data))
            im.load()
            return im
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{self.name}[{self.indices[i]}]", f"corrupt or unreadable image ({type(e).__name__}: {e})", kind="corrupt_image") from None

    def subset(self, keep) -> "EncodedImages":
        return dataclasses.replace(self, indices=tuple(self.indices[i] for i in keep))


def resize(processor: ImageProcessor, image) -> np.ndarray:
    """[H', W', 3] uint8: RGB conversion and the bicubic resize of `process_one`."""
    rgb = to_rgb(image)
    width, height = rgb.size
    rh, rw = processor.resized_size(height, width)
    return np.asarray(rgb.resize((rw, rh), resample=Image.Resampling.BICUBIC), dtype=np.uint8)


@functools.lru_cache(maxsize=8)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[3, 256] float32: the processor's normalized value of every uint8 level, per channel."""
    levels = (np.arange(256, dtype=np.float64) * (1.0 / 255.0)).astype(np.float32)
    return ((levels[None, :] - np.asarray(mean, np.float32)[:, None]) / np.asarray(std, np.float32)[:, None]).astype(np.float32)


def write_patches(processor: ImageProcessor, resized: np.ndarray, out: np.ndarray) -> None:
    """Write the patches of a resized uint8 image into `out` [grid_h * grid_w, patch_dim] (float32).

    Same values and layout as `ImageProcessor.process_one` (merge-block order, channel-major patches,
    the frame repeated `temporal_patch_size` times).
    """
    h, w, c = resized.shape
    p, m, t = processor.patch_size, processor.merge_size, processor.temporal_patch_size
    gh, gw = h // p, w // p
    if out.shape != (gh * gw, c * t * p * p) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 [{gh * gw}, {c * t * p * p}], got {out.dtype} {list(out.shape)}")
    table = _normalize_table(tuple(processor.image_mean), tuple(processor.image_std))
    norm = np.empty((h, w, c), np.float32)
    for ch in range(c):
        np.take(table[ch], resized[:, :, ch], out=norm[:, :, ch])
    blocks = norm.reshape(gh // m, m, p, gw // m, m, p, c).transpose(0, 3, 1, 4, 6, 2, 5)  # [gh/m, gw/m, m, m, C, p, p]
    view = out.reshape(gh // m, gw // m, m, m, c, t, p, p)
    for k in range(t):
        view[:, :, :, :, :, k] = blocks


def process(processor: ImageProcessor, image) -> tuple[np.ndarray, np.ndarray]:
    """`process_one` through `resize` + `write_patches`: (pixel_values, grid_thw), bit-identical."""
    resized = resize(processor, image)
    gh, gw = resized.shape[0] // processor.patch_size, resized.shape[1] // processor.patch_size
    out = np.empty((gh * gw, processor.patch_dim), np.float32)
    write_patches(processor, resized, out)
    return out, np.array([1, gh, gw], np.int64)
