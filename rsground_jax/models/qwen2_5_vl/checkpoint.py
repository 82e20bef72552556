"""Hugging Face checkpoint directories: `load_pretrained` and `save_pretrained`.

Safetensors files are read and written here directly (the format is an 8-byte header length, a JSON header
of name -> dtype/shape/offsets, then raw little-endian bytes), tensor by tensor with explicit reads instead of
a memory map, so that loading holds at most the model plus one stacked parameter in memory.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import struct
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from .config import ConfigError, Qwen25VLConfig
from .model import Qwen25VL
from .params import canonical_name, hf_shapes, iter_hf_tensors, mappings, LM_HEAD
from ...errors import CheckpointError
from ...fileio import atomic_write_json, staged_dir
from ..model_dir import INDEX_NAME, WEIGHTS_NAME

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def _nbytes(shape, dtype: np.dtype) -> int:
    """Bytes a tensor of this shape and dtype takes in a safetensors file (the product in int64, whatever the platform's
    default integer)."""
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


# ------------------------------------------------------------------------------------------ safetensors


class SafetensorsFile:
    """Header of one .safetensors file plus tensor reads by name."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) != 8:
                    raise CheckpointError(f"{path}: truncated safetensors file (no header length)")
                (n,) = struct.unpack("<Q", raw)
                size = os.fstat(f.fileno()).st_size
                if n > size - 8:
                    raise CheckpointError(f"{path}: header length {n} exceeds the file size {size}")
                header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
        self.data_start = 8 + n
        header.pop("__metadata__", None)
        self.entries = header
        for name, e in header.items():
            try:
                dtype, shape, (begin, end) = e["dtype"], e["shape"], e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{path}: corrupt header entry for tensor {name}: {e!r}") from None
            if dtype not in SAFETENSORS_DTYPES:
                raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {dtype}")
            if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
                    and type(begin) is int and type(end) is int and 0 <= begin <= end):
                raise CheckpointError(f"{path}: corrupt header entry for tensor {name}: {e!r}")
            need = _nbytes(shape, SAFETENSORS_DTYPES[dtype])
            if end - begin != need:
                raise CheckpointError(f"{path}: tensor {name} holds {end - begin} bytes, its shape {shape} needs {need}")
            if self.data_start + end > size:
                raise CheckpointError(f"{path}: tensor {name} extends past the end of the file (truncated?)")

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        e = self.entries[name]
        dtype = SAFETENSORS_DTYPES[e["dtype"]]
        out = np.empty(e["shape"], dtype)  # offsets and shape agree: checked when the header was read
        with open(self.path, "rb") as f:
            f.seek(self.data_start + e["data_offsets"][0])
            if f.readinto(out.reshape(-1).view(np.uint8)) != out.nbytes:
                raise CheckpointError(f"{self.path}: short read for tensor {name}")
        return out


def write_safetensors(path: str, tensors: Iterable[tuple[str, np.ndarray]], shapes: dict[str, tuple[int, ...]],
                      dtypes: dict[str, np.dtype]) -> None:
    """Stream tensors into one file; the header is written first from the announced shapes and dtypes."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = _nbytes(shape, dtypes[name])
        header[name] = {"dtype": DTYPE_NAMES[dtypes[name]], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, arr in tensors:
            e = header[name]
            if tuple(arr.shape) != tuple(e["shape"]) or arr.dtype != dtypes[name]:
                raise AssertionError(f"{name}: announced {e['shape']} {dtypes[name]}, got {arr.shape} {arr.dtype}")
            f.write(np.ascontiguousarray(arr).tobytes())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ load


def _weight_files(path: str) -> list[str]:
    index = os.path.join(path, INDEX_NAME)
    single = os.path.join(path, WEIGHTS_NAME)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.isfile(os.path.join(path, f))]
        if missing:
            raise CheckpointError(f"{index} lists shard(s) that do not exist: {missing}")
        return [os.path.join(path, f) for f in files]
    if os.path.isfile(single):
        return [single]
    raise CheckpointError(f"{path}: no {WEIGHTS_NAME} or {INDEX_NAME} (only safetensors checkpoints are supported)")


def _abstract_model(config: Qwen25VLConfig, param_dtype, dtype, remat):
    return nnx.eval_shape(lambda: Qwen25VL(config, rngs=nnx.Rngs(0), param_dtype=param_dtype, dtype=dtype, remat=remat))


def load_pretrained(path: str, dtype=jnp.float32, *, compute_dtype=None, remat: str = "none") -> Qwen25VL:
    """Load a local HF Qwen2.5-VL checkpoint directory into a `Qwen25VL`.

    Args:
      path: directory with config.json and model.safetensors (or model.safetensors.index.json + shards).
      dtype: parameter dtype (tensors are converted on load).
      compute_dtype: activation dtype; defaults to `dtype`.
      remat: activation checkpointing policy for training ('none', 'full', 'dots').
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory")
    config = Qwen25VLConfig.from_json_file(os.path.join(path, "config.json"))
    files = [SafetensorsFile(f) for f in _weight_files(path)]
    where: dict[str, tuple[SafetensorsFile, str]] = {}
    for sf in files:
        for name in sf.entries:
            where[canonical_name(name)] = (sf, name)

    pdtype = np.dtype(dtype)
    _release_large_frees()
    model = _abstract_model(config, dtype, compute_dtype or dtype, remat)
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    our_shapes = {k: tuple(v.get_value().shape) for k, v in flat.items()}
    expected = hf_shapes(config, our_shapes)

    missing = [n for n in expected if n not in where]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {len(missing)} tensor(s) this config needs, e.g. {missing[:5]}")
    wrong = [f"{n}: {where[n][0].shape(where[n][1])} (expected {expected[n]})" for n in expected
             if where[n][0].shape(where[n][1]) != expected[n]]
    if wrong:
        raise CheckpointError(f"{path}: tensor shape(s) do not match config.json: " + "; ".join(wrong[:5]))
    unexpected = sorted(set(where) - set(expected) - ({LM_HEAD} if config.tie_word_embeddings else set()))
    if unexpected:
        log.warning("%s: ignoring %d tensors this model does not use, e.g. %s", path, len(unexpected), unexpected[:5])

    # Stacked parameters are filled layer by layer in place on the device (donated buffer), so loading holds
    # the model plus one layer's tensor, never a second copy of a whole stacked parameter.
    for mp in mappings(config):
        if mp.layers is None:
            sf, raw = where[mp.hf_name]
            flat[mp.path].set_value(jnp.asarray(mp.to_ours(sf.read(raw)).astype(pdtype, copy=False)))
            continue
        stacked = jnp.zeros(our_shapes[mp.path], pdtype)
        for i, name in enumerate(mp.hf_names()):
            sf, raw = where[name]
            stacked = _set_layer(stacked, jnp.asarray(mp.to_ours(sf.read(raw)).astype(pdtype, copy=False)), i)
        flat[mp.path].set_value(stacked)
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _release_large_frees() -> None:
    """Pin glibc's mmap threshold at 4 MiB so per-tensor temporaries are returned to the OS when freed.

    glibc raises the threshold dynamically after the first large free, after which tensor-sized temporaries
    come from the heap and stay resident; loading a checkpoint would then peak well above the model size.
    No-op where glibc is absent.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 4 * 2**20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


@functools.partial(jax.jit, donate_argnums=0)
def _set_layer(stacked: jax.Array, value: jax.Array, i) -> jax.Array:
    return stacked.at[i].set(value)


def checkpoint_dtype(path: str) -> np.dtype:
    """The dtype of a checkpoint directory's floating-point tensors (the first one found)."""
    for sf in (SafetensorsFile(f) for f in _weight_files(os.fspath(path))):
        for e in sf.entries.values():
            dt = SAFETENSORS_DTYPES[e["dtype"]]
            if dt.kind == "f" or dt == SAFETENSORS_DTYPES["BF16"]:
                return dt
    raise CheckpointError(f"{path}: no floating-point tensors")


# ------------------------------------------------------------------------------------------------ save


def save_pretrained(model: Qwen25VL, path: str, *, dtype=None, max_shard_size: int = 5 * 2**30) -> None:
    """Write `model` as an HF checkpoint directory (config.json + safetensors, sharded with an index when
    larger than `max_shard_size` bytes) that transformers' `Qwen2_5_VLForConditionalGeneration` loads.

    The folder is built under a hidden name and renamed into place when complete (`fileio.staged_dir`):
    `path` must be missing or empty, and an interrupted save leaves no folder under `path`.
    """
    with staged_dir(path, "model") as tmp:
        write_checkpoint_files(model, tmp, dtype=dtype, max_shard_size=max_shard_size)


def write_checkpoint_files(model: Qwen25VL, folder, *, dtype=None, max_shard_size: int = 5 * 2**30) -> None:
    """Write config.json and the safetensors file(s) of `model` into the existing empty `folder`."""
    folder = os.fspath(folder)
    if max_shard_size < 1:
        raise CheckpointError(f"max_shard_size must be a positive number of bytes, got {max_shard_size}")
    config: Qwen25VLConfig = model.config
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    our_shapes = {k: tuple(v.get_value().shape) for k, v in flat.items()}
    shapes = hf_shapes(config, our_shapes)
    out_dtype = {mp_name: np.dtype(dtype or flat[mp.path].get_value().dtype)
                 for mp in mappings(config) for mp_name in mp.hf_names()}

    # plan shards in mapping order
    shards: list[dict[str, tuple[int, ...]]] = [{}]
    size = 0
    for name, shape in shapes.items():
        nbytes = _nbytes(shape, out_dtype[name])
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = shape
        size += nbytes

    cache: dict[tuple[str, ...], np.ndarray] = {}

    def get(p):  # one stacked parameter on the host at a time
        if p not in cache:
            cache.clear()
            cache[p] = np.asarray(jax.device_get(flat[p].get_value()))
        return cache[p]

    stream = ((n, a.astype(out_dtype[n], copy=False)) for n, a in iter_hf_tensors(config, get))
    names = [WEIGHTS_NAME] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for fname, shard in zip(names, shards):
        chunk = (next(stream) for _ in range(len(shard)))
        write_safetensors(os.path.join(folder, fname), chunk, shard, out_dtype)
    if len(shards) > 1:
        total = sum(_nbytes(s, out_dtype[n]) for n, s in shapes.items())
        index = {"metadata": {"total_size": total},
                 "weight_map": {n: fname for fname, shard in zip(names, shards) for n in shard}}
        atomic_write_json(os.path.join(folder, INDEX_NAME), index, indent=2)
    hf = config.to_hf_dict()
    hf["dtype"] = {
        np.dtype(np.float32): "float32", np.dtype(ml_dtypes.bfloat16): "bfloat16", np.dtype(np.float16): "float16",
    }.get(next(iter(out_dtype.values())), "float32")
    atomic_write_json(os.path.join(folder, "config.json"), hf, indent=2)


__all__ = ["load_pretrained", "save_pretrained", "CheckpointError", "ConfigError"]
