"""The loader's pixel path equals ImageProcessor.process_one bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rsground_jax.data import images
from rsground_jax.models.processor import ImageProcessor


@pytest.mark.parametrize(
    "processor",
    [ImageProcessor(), ImageProcessor(min_pixels=112 * 112, max_pixels=224 * 224), ImageProcessor(image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))],
)
def test_process_is_bit_identical_to_the_processor(processor):
    rng = np.random.default_rng(0)
    cases = [
        Image.fromarray(rng.integers(0, 256, (800, 800, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (97, 311, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (60, 45), dtype=np.uint8)),  # grayscale
        Image.fromarray(rng.integers(0, 256, (130, 170, 4), dtype=np.uint8), "RGBA"),  # alpha over white
        rng.integers(0, 256, (224, 140, 3), dtype=np.uint8),  # numpy input
    ]
    for image in cases:
        ref_pv, ref_grid = processor.process_one(image)
        pv, grid = images.process(processor, image)
        assert pv.dtype == np.float32 and pv.shape == ref_pv.shape
        assert np.array_equal(pv.view(np.uint32), ref_pv.view(np.uint32))  # same bits
        assert grid.tolist() == ref_grid.tolist()


def test_write_patches_checks_the_output_rows():
    p = ImageProcessor()
    resized = np.zeros((56, 56, 3), np.uint8)
    with pytest.raises(ValueError, match=r"out must be float32 \[16, 1176\]"):
        images.write_patches(p, resized, np.empty((15, 1176), np.float32))
