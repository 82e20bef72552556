"""Models: the Qwen2.5-VL port and its image processor.

`load_pretrained(path, dtype=...)` / `save_pretrained(model, path)` read and write Hugging Face checkpoint
directories. Names are resolved lazily so that `rsground_jax.models.processor` (numpy + PIL) can be imported
by the data pipeline without pulling in JAX.
"""

import importlib

_EXPORTS = {
    "ImageProcessor": "processor", "smart_resize": "processor",
    **{name: "qwen2_5_vl" for name in (
        "CheckpointError", "ConfigError", "ImageTokenMismatchError", "KVCache", "Qwen25VL", "Qwen25VLConfig",
        "count_params", "load_pretrained", "prepare_inputs", "preset", "save_pretrained", "add_vision_inputs",
        "static_vision_sizes")},
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
