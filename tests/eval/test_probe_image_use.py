"""tools/probe_image_use.py on the packaged base: it reads the picture (blank images cost it loss), and a
batch of mixed image sizes, which cannot be shuffled, is a clear error."""

import importlib.util
import math
from pathlib import Path

import pytest

from rsground_jax.data.synthetic import PRESETS, generate_dataset
from rsground_jax.models.model_dir import BASE_MODEL_DIR

_spec = importlib.util.spec_from_file_location(
    "probe_image_use", Path(__file__).resolve().parents[2] / "tools" / "probe_image_use.py")
probe_image_use = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe_image_use)


def test_probe_shows_the_base_reads_the_image(tmp_path, rng):
    root = tmp_path / "demo"
    generate_dataset(str(root), 40, seed=int(rng.integers(1 << 30)), config=PRESETS["demo"])
    out = probe_image_use.probe(str(BASE_MODEL_DIR), str(root), "train", batches=4, batch_size=16, length_bucket=96)
    assert out["target_tokens"] > 0
    assert all(math.isfinite(out[k]) for k in ("real", "shuffled", "blank"))
    assert out["shuffled_minus_real"] == pytest.approx(out["shuffled"] - out["real"])
    assert out["blank"] > out["real"]  # measured on 8 batches: 0.909 against 0.883
    assert out["shuffled"] != out["real"]  # the shuffle really moved images between samples


def test_probe_refuses_batches_of_mixed_image_sizes(tmp_path, rng):
    root = tmp_path / "tiny"
    generate_dataset(str(root), 24, seed=int(rng.integers(1 << 30)), config=PRESETS["tiny"])  # 112-224 px sides
    with pytest.raises(ValueError, match="images of one size"):
        probe_image_use.probe(str(BASE_MODEL_DIR), str(root), "train", batches=4, batch_size=16, length_bucket=384)
