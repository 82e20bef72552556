"""HF checkpoint import/export: round trips, transformers loading our exports, and clear errors."""

from __future__ import annotations

import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import Qwen2_5_VLForConditionalGeneration

from rsground_jax.models import (
    CheckpointError, ConfigError, ImageTokenMismatchError, load_pretrained, save_pretrained,
)
from rsground_jax.models.qwen2_5_vl.checkpoint import SafetensorsFile

from .hf_reference import IMAGE, make_batch, make_hf_model, hf_logits


def _tensors(path):
    """name -> numpy array for every tensor of a checkpoint directory (our reader keeps bfloat16)."""
    out = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            sf = SafetensorsFile(os.path.join(path, f))
            out.update({n: sf.read(n) for n in sf.entries})
    return out


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    hf = make_hf_model(path, tied=False, seed=int(np.random.SeedSequence().entropy % 2**31))
    return path, hf


@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_is_bit_identical_and_loads_in_transformers(tmp_path, rng, tied):
    src = tmp_path / "src"
    hf = make_hf_model(src, tied=tied, seed=int(rng.integers(2**31)))
    out = tmp_path / "out"
    save_pretrained(load_pretrained(src), out)
    a, b = _tensors(src), _tensors(out)
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert np.array_equal(a[name].view(np.uint8), b[name].view(np.uint8)), f"{name} differs"
    back = Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval()
    assert back.config.tie_word_embeddings == tied
    batch = make_batch(rng, [[(int(rng.integers(60, 300)), int(rng.integers(60, 300)))], []])
    np.testing.assert_array_equal(hf_logits(back, batch), hf_logits(hf, batch))


def test_sharded_export_loads_in_transformers_and_back(tmp_path, rng, hf_dir):
    src, hf = hf_dir
    ours = load_pretrained(src)
    out = tmp_path / "sharded"
    save_pretrained(ours, out, max_shard_size=100_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2 and not (out / "model.safetensors").exists()
    batch = make_batch(rng, [[(int(rng.integers(60, 300)), int(rng.integers(60, 300)))]])
    ref = hf_logits(hf, batch)
    np.testing.assert_array_equal(hf_logits(Qwen2_5_VLForConditionalGeneration.from_pretrained(out).eval(), batch), ref)
    again = np.asarray(load_pretrained(out)(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                            batch["image_grid_thw"]))
    assert np.abs(again - ref).max() <= 1e-4


def test_bfloat16_checkpoint_round_trip(tmp_path, rng):
    src = tmp_path / "bf16"
    hf = make_hf_model(tmp_path / "f32", tied=False, seed=int(rng.integers(2**31)))
    hf.to(torch.bfloat16).save_pretrained(src)
    import jax.numpy as jnp
    out = tmp_path / "out"
    save_pretrained(load_pretrained(src, dtype=jnp.bfloat16), out)
    a, b = _tensors(src), _tensors(out)
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == np.dtype(ml_dtypes.bfloat16) == b[name].dtype
        assert np.array_equal(a[name].view(np.uint16), b[name].view(np.uint16)), name
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


# ------------------------------------------------------------------------------------------ bad input


def test_directory_without_config(tmp_path, hf_dir):
    src, _ = hf_dir
    d = tmp_path / "noconfig"
    d.mkdir()
    shutil.copy(src / "model.safetensors", d)
    with pytest.raises(ConfigError, match="config.json"):
        load_pretrained(d)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_pretrained(tmp_path / "nope")


def test_no_weights(tmp_path, hf_dir):
    src, _ = hf_dir
    d = tmp_path / "noweights"
    d.mkdir()
    shutil.copy(src / "config.json", d)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_pretrained(d)


def test_missing_tensors(tmp_path, hf_dir):
    src, _ = hf_dir
    d = tmp_path / "missing"
    d.mkdir()
    shutil.copy(src / "config.json", d)
    tensors = load_file(src / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"lacks 1 tensor.*layers\.1\.self_attn\.k_proj\.weight"):
        load_pretrained(d)


def test_wrong_tensor_shape(tmp_path, hf_dir):
    src, _ = hf_dir
    d = tmp_path / "shape"
    d.mkdir()
    shutil.copy(src / "config.json", d)
    tensors = load_file(src / "model.safetensors")
    tensors["visual.blocks.0.mlp.up_proj.weight"] = np.zeros((65, 32), np.float32)
    save_file(tensors, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"visual\.blocks\.0\.mlp\.up_proj\.weight: \(65, 32\) \(expected \(64, 32\)\)"):
        load_pretrained(d)


def test_truncated_weights_file(tmp_path, hf_dir):
    src, _ = hf_dir
    d = tmp_path / "trunc"
    d.mkdir()
    shutil.copy(src / "config.json", d)
    data = (src / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_pretrained(d)


def _raw_safetensors(path, entries, data=b""):
    header = json.dumps(entries).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


@pytest.mark.parametrize("entry, problem", [
    ({"dtype": "F32", "shape": "2x3", "data_offsets": [0, 24]}, "corrupt header entry for tensor w"),
    ({"dtype": "F32", "shape": [2, -3], "data_offsets": [0, 24]}, "corrupt header entry for tensor w"),
    ({"dtype": "F32", "shape": [2, 3], "data_offsets": [24, 0]}, "corrupt header entry for tensor w"),
    ({"dtype": "F32", "shape": [2, 3.5], "data_offsets": [0, 24]}, "corrupt header entry for tensor w"),
    ({"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 24]}, r"tensor w holds 24 bytes, its shape \[2, 4\] needs 32"),
    ({"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 24]}, r"tensor w holds 24 bytes, its shape \[2, 3\] needs 12"),
])
def test_corrupt_safetensors_header_entry_is_refused_when_opened(tmp_path, entry, problem):
    """A header whose shape and byte range disagree is refused naming the file and the tensor, before any
    tensor is read (not as a numpy error from a reshape)."""
    path = _raw_safetensors(tmp_path / "model.safetensors", {"w": entry}, bytes(24))
    with pytest.raises(CheckpointError, match=problem) as err:
        SafetensorsFile(str(path))
    assert str(path) in str(err.value)


def test_safetensors_reader_reads_what_safetensors_wrote(tmp_path, rng):
    tensors = {"a": rng.standard_normal((3, 5)).astype(np.float32), "b": rng.integers(-9, 9, (4,)).astype(np.int64),
               "empty": np.zeros((0, 2), np.float16)}
    save_file(tensors, tmp_path / "t.safetensors")
    sf = SafetensorsFile(str(tmp_path / "t.safetensors"))
    for name, want in tensors.items():
        np.testing.assert_array_equal(sf.read(name), want)
        assert sf.read(name).dtype == want.dtype


def test_config_of_another_model(tmp_path, hf_dir):
    src, _ = hf_dir
    d = tmp_path / "llama"
    d.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    shutil.copy(src / "model.safetensors", d)
    with pytest.raises(ConfigError, match="model_type is 'llama', not 'qwen2_5_vl'"):
        load_pretrained(d)


def test_image_pad_count_mismatch(rng, hf_dir):
    src, _ = hf_dir
    model = load_pretrained(src)
    batch = make_batch(rng, [[(int(rng.integers(60, 300)), int(rng.integers(60, 300)))]])
    ids = batch["input_ids"].copy()
    first = int(np.argmax(ids[0] == IMAGE))
    ids[0, first] = 7  # one image token fewer than the grid needs
    need = int(batch["image_grid_thw"].prod() // 4)
    with pytest.raises(ImageTokenMismatchError, match=rf"\({need - 1}\) does not match image_grid_thw.*{need}"):
        model(ids, batch["attention_mask"], batch["pixel_values"], batch["image_grid_thw"])


def test_pixel_rows_mismatch(rng, hf_dir):
    src, _ = hf_dir
    model = load_pretrained(src)
    batch = make_batch(rng, [[(int(rng.integers(60, 300)), int(rng.integers(60, 300)))]])
    with pytest.raises(ValueError, match="pixel_values has"):
        model(batch["input_ids"], batch["attention_mask"], batch["pixel_values"][:-4], batch["image_grid_thw"])
