"""Qwen2.5-VL in Flax NNX (config, vision tower, M-RoPE decoder, HF weight mapping)."""

from .checkpoint import CheckpointError, load_pretrained, save_pretrained
from .config import ConfigError, Qwen25VLConfig, TextConfig, VisionConfig, preset, tiny
from .model import Qwen25VL, count_params, prepare_inputs
from .orbax_io import is_orbax_dir, load_orbax, save_orbax
from .rope_index import ImageTokenMismatchError, get_rope_index
from .text import KVCache
from .vision import vision_inputs

__all__ = [
    "CheckpointError", "ConfigError", "ImageTokenMismatchError", "KVCache", "Qwen25VL", "Qwen25VLConfig",
    "TextConfig", "VisionConfig", "count_params", "get_rope_index", "is_orbax_dir", "load_orbax", "load_pretrained",
    "prepare_inputs", "save_orbax",
    "preset", "save_pretrained", "tiny", "vision_inputs",
]
