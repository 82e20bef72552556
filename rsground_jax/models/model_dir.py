"""A model directory: what `rsground eval`, `predict` and `demo --base` read, and what training and
`rsground convert` write.

  config.json + weights      Hugging Face safetensors (`model.safetensors` or an index and its shards), or
                             Orbax `params/` (`load_model` reads either)
  tokenizer files            `tokenizer.json`, or `vocab.json` + `merges.txt`, with `tokenizer_config.json`
  rsground_prompt.json       how the model was prompted: {"system", "question", "max_pixels", "answer_style"};
                             evaluating with another template or pixel budget gives other (worse) numbers
  RECIPE.json                optional: how the weights were made

`save_model_dir` writes all of it under a hidden name and renames the folder into place when complete, so a
folder under the final name is never half-written; `missing_parts` says what a folder lacks for evaluation.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import CheckpointError
from ..fileio import atomic_write_json, staged_dir

BASE_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "base_model"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PARAMS_DIR = "params"  # an Orbax model directory's parameters
PROMPT_SPEC = "rsground_prompt.json"
RECIPE = "RECIPE.json"
PROMPT_KEYS = {"system": (str, type(None)), "question": (str,), "max_pixels": (int,), "answer_style": (str,)}
# Files beside the weights that `rsground convert` carries over to the converted folder.
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
              "added_tokens.json", "chat_template.json", "chat_template.jinja", "generation_config.json",
              "preprocessor_config.json", PROMPT_SPEC, RECIPE)


def resolve(path) -> str:
    """'base' is the packaged base model; anything else a folder path."""
    return str(BASE_MODEL_DIR) if str(path) == "base" else os.fspath(path)


def has_tokenizer(path) -> bool:
    p = Path(path)
    return (p / "tokenizer.json").is_file() or ((p / "vocab.json").is_file() and (p / "merges.txt").is_file())


def has_weights(path) -> bool:
    p = Path(path)
    return (p / PARAMS_DIR).is_dir() or (p / WEIGHTS_NAME).is_file() or (p / INDEX_NAME).is_file()


def missing_parts(path, *, tokenizer: bool = True, prompt: bool = True) -> list[str]:
    """What `path` lacks to be evaluated: config.json, weights, and unless given otherwise a tokenizer and
    rsground_prompt.json. Empty when nothing is missing."""
    p = Path(path)
    missing = []
    if not (p / "config.json").is_file():
        missing.append("config.json")
    if not has_weights(p):
        missing.append(f"weights ({WEIGHTS_NAME}, {INDEX_NAME} or params/)")
    if tokenizer and not has_tokenizer(p):
        missing.append("a tokenizer (tokenizer.json, or vocab.json and merges.txt)")
    if prompt and not (p / PROMPT_SPEC).is_file():
        missing.append(f"{PROMPT_SPEC} (the template, pixel budget and answer style it was trained with)")
    return missing


def read_prompt_spec(path) -> dict:
    """The checked contents of `path`/rsground_prompt.json, or of `path` itself when it is that file."""
    file = Path(path) / PROMPT_SPEC if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise CheckpointError(f"{file}: no such file (a model folder needs {PROMPT_SPEC}: the template, pixel budget "
                              "and answer style the model was trained with)")
    try:
        spec = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(spec, dict):
        raise CheckpointError(f"{file}: expected a JSON object with {sorted(PROMPT_KEYS)}")
    for key, types in PROMPT_KEYS.items():
        if key not in spec:
            raise CheckpointError(f"{file}: no {key!r} (expected {sorted(PROMPT_KEYS)})")
        if not isinstance(spec[key], types) or isinstance(spec[key], bool):
            raise CheckpointError(f"{file}: {key!r} is {spec[key]!r}, expected {' or '.join(t.__name__ for t in types)}")
    if "{expression}" not in spec["question"]:
        raise CheckpointError(f"{file}: 'question' has no {{expression}} placeholder")
    if spec["max_pixels"] < 1:
        raise CheckpointError(f"{file}: 'max_pixels' must be positive, got {spec['max_pixels']}")
    return spec


def write_prompt_spec(folder, spec: dict) -> None:
    atomic_write_json(os.path.join(folder, PROMPT_SPEC), {k: spec[k] for k in PROMPT_KEYS}, indent=2)


def save_model_dir(model, path, *, tokenizer=None, prompt_spec: dict | None = None, recipe: dict | None = None,
                   side_files_from=None, to: str = "hf", dtype=None, max_shard_size: int = 5 * 2**30) -> None:
    """Write a complete model directory at `path` (missing or empty) in one rename.

    `to` is "hf" (safetensors) or "orbax"; `tokenizer` a tokenizer to save (a `TextTokenizer` or transformers');
    `side_files_from` a model directory whose tokenizer, prompt and recipe files (`SIDE_FILES`) are copied
    first, so explicit `prompt_spec` and `recipe` take precedence.
    """
    from .qwen2_5_vl.checkpoint import write_checkpoint_files
    from .qwen2_5_vl.orbax_io import write_orbax_files

    if to not in ("hf", "orbax"):
        raise ValueError(f"to must be 'hf' or 'orbax', got {to!r}")
    with staged_dir(path, "model") as tmp:
        if side_files_from is not None:
            for name in SIDE_FILES:
                if (Path(side_files_from) / name).is_file():
                    shutil.copy2(Path(side_files_from) / name, tmp / name)
        if to == "hf":
            write_checkpoint_files(model, tmp, dtype=dtype, max_shard_size=max_shard_size)
        else:
            write_orbax_files(model, tmp, dtype=dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if prompt_spec is not None:
            write_prompt_spec(tmp, prompt_spec)
        if recipe is not None:
            atomic_write_json(tmp / RECIPE, recipe, indent=2, default=str)


def load_model(path, dtype=None, **kwargs):
    """The network of a model directory, Hugging Face or Orbax (float32 unless `dtype`)."""
    import jax.numpy as jnp

    from .qwen2_5_vl import is_orbax_dir, load_orbax, load_pretrained

    path = os.fspath(path)
    dtype = jnp.float32 if dtype is None else dtype
    return load_orbax(path, dtype, **kwargs) if is_orbax_dir(path) else load_pretrained(path, dtype, **kwargs)
