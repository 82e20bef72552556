"""Models: the Qwen2.5-VL port and its image processor.

`load_pretrained(path, dtype=...)` / `save_pretrained(model, path)` read and write Hugging Face checkpoint
directories.
"""

from .processor import ImageProcessor, smart_resize
from .qwen2_5_vl import (
    CheckpointError, ConfigError, ImageTokenMismatchError, KVCache, Qwen25VL, Qwen25VLConfig, count_params,
    load_pretrained, prepare_inputs, preset, save_pretrained,
)

__all__ = [
    "CheckpointError", "ConfigError", "ImageProcessor", "ImageTokenMismatchError", "KVCache", "Qwen25VL",
    "Qwen25VLConfig", "count_params", "load_pretrained", "prepare_inputs", "preset", "save_pretrained",
    "smart_resize",
]
