"""The DIOR-RSVG TFDS builder: manual folder -> ArrayRecord -> tfds.data_source -> Grain, without TensorFlow."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from rsground_jax.data import DataError, load_split
from rsground_jax.data.pipeline import PipelineConfig, sft_pipeline
from rsground_jax.models.processor import ImageProcessor

from .conftest import make_dior

tfds_dior = pytest.importorskip("rsground_jax.data.tfds_dior")


@pytest.fixture(scope="module")
def built(synth_root, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = tfds_dior.build_dior_rsvg(synth_root, data_dir)
    return builder, data_dir


def test_tensorflow_is_not_installed():
    assert importlib.util.find_spec("tensorflow") is None


def test_build_writes_array_record_splits(built, synth_root):
    builder, data_dir = built
    assert builder.info.file_format.value == "array_record"
    files = sorted(p.name for p in (data_dir / "dior_rsvg" / "1.0.0").iterdir())
    assert any(f.startswith("dior_rsvg-train.array_record") for f in files)
    for split in ("train", "val", "test"):
        assert builder.info.splits[split].num_examples == len(load_split(synth_root, split))


@pytest.mark.parametrize("split", ["train", "test"])
def test_records_read_back_equal_the_reader(built, synth_root, split):
    _, data_dir = built
    records, images = tfds_dior.load_tfds_split(data_dir, split)
    ref = load_split(synth_root, split)
    assert len(records) == len(ref)
    for a, b in zip(records, ref):
        assert (a.record_id, a.box, a.expression, a.category, a.others, a.width, a.height) == (
            b.record_id, b.box, b.expression, b.category, b.others, b.width, b.height)
    # The stored image is the JPEG file, byte for byte.
    assert images.source[0]["image"] == open(ref[0].image_path, "rb").read()


def test_pipeline_from_tfds_equals_pipeline_from_files(built, synth_root, small_tokenizer):
    _, data_dir = built
    records, images = tfds_dior.load_tfds_split(data_dir, "train")
    cfg = PipelineConfig(batch_size=3, seed=4)
    proc = ImageProcessor()
    a = iter(sft_pipeline(records, small_tokenizer, proc, cfg, images=images))
    b = iter(sft_pipeline(load_split(synth_root, "train"), small_tokenizer, proc, cfg))
    for _ in range(4):
        x, y = next(a), next(b)
        for k in x:
            assert np.array_equal(x[k], y[k]), k


def test_reading_does_not_import_tensorflow(built):
    _, data_dir = built
    code = (
        "import sys; from rsground_jax.data.tfds_dior import load_tfds_split; "
        f"r, im = load_tfds_split({str(data_dir)!r}, 'val'); im.load(0); "
        "sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_build_fails_on_bad_input_with_the_reader_message(tmp_path):
    root = make_dior(tmp_path / "d")
    (root / "JPEGImages" / "00003.jpg").unlink()
    with pytest.raises(DataError, match=r"00003\.jpg: image file not found"):
        tfds_dior.build_dior_rsvg(root, tmp_path / "tfds")
