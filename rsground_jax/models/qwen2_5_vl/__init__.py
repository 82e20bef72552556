"""Qwen2.5-VL in Flax NNX (config, vision tower, M-RoPE decoder, HF weight mapping).

Names are resolved lazily: `inputs`, `rope_index` and `config` are numpy-only, and the data pipeline imports
them without pulling in JAX.
"""

import importlib

_EXPORTS = {
    "CheckpointError": "checkpoint", "load_pretrained": "checkpoint", "save_pretrained": "checkpoint",
    "ConfigError": "config", "Qwen25VLConfig": "config", "TextConfig": "config", "VisionConfig": "config",
    "preset": "config", "tiny": "config",
    "Qwen25VL": "model", "count_params": "model",
    "prepare_inputs": "inputs", "vision_inputs": "inputs", "add_vision_inputs": "inputs",
    "static_vision_sizes": "inputs", "group_vision_inputs": "inputs", "group_vision_sizes": "inputs",
    "is_orbax_dir": "orbax_io", "load_orbax": "orbax_io", "save_orbax": "orbax_io",
    "ImageTokenMismatchError": "rope_index", "get_rope_index": "rope_index",
    "KVCache": "text",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
