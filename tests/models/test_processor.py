"""Image processor parity with transformers' Qwen2VLImageProcessor (the PIL backend without torchvision)."""

import numpy as np
import pytest
from PIL import Image
from transformers import Qwen2VLImageProcessor

from rsground_jax.models.processor import DEFAULT_MAX_PIXELS, ImageProcessor, smart_resize

SIZES = [
    (30, 45),      # smaller than 56 px: scaled up to min_pixels
    (55, 20),      # tiny and non-square
    (112, 112),
    (480, 640),    # non-square
    (123, 457),    # odd sizes, strong aspect
    (800, 800),    # DIOR-RSVG
    (1100, 1300),  # over max_pixels: scaled down
    (2000, 700),
]


@pytest.fixture(scope="module")
def hf():
    return Qwen2VLImageProcessor()


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_matches_transformers(hf, rng, size):
    h, w = size
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    ref = hf(images=[image], return_tensors="np")
    got = ImageProcessor()([image])
    np.testing.assert_array_equal(got["image_grid_thw"], ref["image_grid_thw"])
    assert got["pixel_values"].shape == ref["pixel_values"].shape
    np.testing.assert_allclose(got["pixel_values"], ref["pixel_values"], atol=1e-5, rtol=0)
    if h * w > DEFAULT_MAX_PIXELS:
        rh, rw = ImageProcessor().resized_size(h, w)
        assert rh * rw <= DEFAULT_MAX_PIXELS


def test_batch_of_images_and_modes_match(hf, rng):
    rgba = Image.fromarray(rng.integers(0, 256, (90, 150, 4), dtype=np.uint8), mode="RGBA")
    gray = Image.fromarray(rng.integers(0, 256, (200, 77), dtype=np.uint8), mode="L")
    rgb = Image.fromarray(rng.integers(0, 256, (333, 222, 3), dtype=np.uint8))
    ref = hf(images=[rgba, gray, rgb], return_tensors="np")
    got = ImageProcessor()([rgba, gray, rgb])
    np.testing.assert_array_equal(got["image_grid_thw"], ref["image_grid_thw"])
    np.testing.assert_allclose(got["pixel_values"], ref["pixel_values"], atol=1e-5, rtol=0)


def test_custom_pixel_budget_matches(rng):
    kw = dict(min_pixels=56 * 56, max_pixels=224 * 224)
    hf = Qwen2VLImageProcessor(**kw)
    image = Image.fromarray(rng.integers(0, 256, (800, 800, 3), dtype=np.uint8))
    ref = hf(images=[image], return_tensors="np")
    got = ImageProcessor(**kw)([image])
    np.testing.assert_array_equal(got["image_grid_thw"], ref["image_grid_thw"])
    np.testing.assert_allclose(got["pixel_values"], ref["pixel_values"], atol=1e-5, rtol=0)


def test_reference_sizes_from_the_docs():
    assert smart_resize(800, 800) == (812, 812)
    assert smart_resize(512, 512) == (504, 504)
    assert smart_resize(480, 640) == (476, 644)
    assert ImageProcessor().num_image_tokens(800, 800) == 841


def test_bad_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 3000)
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 100)


def test_a_16_bit_gray_image_is_scaled_to_8_bits_not_clipped_to_white(rng):
    wide = rng.integers(0, 65536, (70, 90)).astype(np.uint16)
    narrow = ((wide.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v / 257)
    proc = ImageProcessor()
    for image in (Image.fromarray(wide), Image.fromarray(wide.astype(np.int32), "I")):
        ours = proc([image])
        np.testing.assert_array_equal(ours["pixel_values"], proc([Image.fromarray(narrow)])["pixel_values"])
    # what PIL's own conversion (and transformers', which uses it) makes of it: nearly all white
    assert (np.asarray(Image.fromarray(wide).convert("RGB")) == 255).mean() > 0.95


def test_images_with_no_8_bit_meaning_are_refused():
    from rsground_jax.models.processor import pixel_mode_problem, to_rgb

    floats = Image.fromarray(np.zeros((8, 8), np.float32), "F")
    assert "floating-point" in pixel_mode_problem(floats)
    with pytest.raises(ValueError, match="floating-point"):
        to_rgb(floats)
    huge = Image.fromarray(np.full((8, 8), 70000, np.int32), "I")
    assert "outside the 16-bit range" in pixel_mode_problem(huge)
