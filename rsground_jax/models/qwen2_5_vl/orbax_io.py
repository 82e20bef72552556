"""Model weights as an Orbax checkpoint: `<dir>/config.json` (HF layout) + `<dir>/params` (Orbax PyTree).

This is the format sharded multi-host code restores from (each host reads only its shards); training
checkpoints with optimizer state are managed by the trainer and hold the same `params` tree.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from ...fileio import atomic_write_json, staged_dir
from ..model_dir import PARAMS_DIR
from .checkpoint import CheckpointError
from .config import Qwen25VLConfig
from .model import Qwen25VL



def is_orbax_dir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, PARAMS_DIR)) and os.path.isfile(os.path.join(path, "config.json"))


def save_orbax(model: Qwen25VL, path: str, *, dtype=None) -> None:
    """Write `model` as an Orbax model directory; `path` must be missing or empty, and the folder appears
    under `path` only when complete (`fileio.staged_dir`)."""
    with staged_dir(path, "model") as tmp:
        write_orbax_files(model, tmp, dtype=dtype)


def write_orbax_files(model: Qwen25VL, folder, *, dtype=None) -> None:
    """Write config.json and params/ of `model` into the existing empty `folder`."""
    folder = os.path.abspath(os.fspath(folder))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if dtype is not None:
        params = jax.tree.map(lambda a: a.astype(dtype), params)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(folder, PARAMS_DIR), params)
    hf = model.config.to_hf_dict()
    hf["dtype"] = jnp.dtype(jax.tree.leaves(params)[0].dtype).name
    atomic_write_json(os.path.join(folder, "config.json"), hf, indent=2)


def stored_dtype(path: str):
    """The parameter dtype recorded by `save_orbax` (float32 if absent)."""
    file = os.path.join(path, "config.json")
    try:
        with open(file) as f:
            return jnp.dtype(json.load(f).get("dtype", "float32"))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{file}: not a valid model config ({type(e).__name__}: {e})") from None


def load_orbax(path: str, dtype=jnp.float32, *, compute_dtype=None, remat: str = "none") -> Qwen25VL:
    path = os.path.abspath(os.fspath(path))
    if not is_orbax_dir(path):
        raise CheckpointError(f"{path}: not an Orbax model directory (needs config.json and {PARAMS_DIR}/)")
    config = Qwen25VLConfig.from_json_file(os.path.join(path, "config.json"))
    abstract = nnx.eval_shape(lambda: Qwen25VL(config, rngs=nnx.Rngs(0), param_dtype=dtype,
                                               dtype=compute_dtype or dtype, remat=remat))
    graphdef, state = nnx.split(abstract)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(state))
    with ocp.StandardCheckpointer() as ckptr:
        try:
            restored = ckptr.restore(os.path.join(path, PARAMS_DIR), target)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: parameters do not match config.json ({e})") from None
    nnx.replace_by_pure_dict(state, restored)
    return nnx.merge(graphdef, state)
