"""Config presets and parameter counts against transformers' own model classes."""

import json

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from rsground_jax.models import Qwen25VLConfig, count_params, preset
from rsground_jax.models.qwen2_5_vl import ConfigError

# The released Qwen2.5-VL-3B-Instruct config.json (flat layout, transformers 4.x era), abridged to the fields
# that define shapes.
RELEASED_3B = json.loads("""{
  "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
  "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
  "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
  "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 11008,
  "max_position_embeddings": 128000, "max_window_layers": 70, "num_attention_heads": 16,
  "num_hidden_layers": 36, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 32768, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.41.2", "use_cache": true, "use_sliding_window": false,
  "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
    "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2,
    "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2, "temporal_patch_size": 2},
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}, "vocab_size": 151936
}""")


def test_released_flat_config_parses_to_the_3b_preset():
    cfg = Qwen25VLConfig.from_hf_dict(RELEASED_3B)
    assert cfg == preset("3b")
    hf = Qwen2_5_VLConfig(**RELEASED_3B)  # transformers reads the same file the same way
    assert hf.text_config.hidden_size == cfg.text.hidden_size
    assert list(hf.text_config.rope_parameters["mrope_section"]) == list(cfg.text.mrope_section)
    assert hf.tie_word_embeddings == cfg.tie_word_embeddings


@pytest.mark.parametrize("name", ["tiny", "3b", "7b", "32b", "72b"])
def test_param_count_equals_transformers(name):
    cfg = preset(name)
    hf_cfg = Qwen2_5_VLConfig(**cfg.to_hf_dict())
    with torch.device("meta"):
        hf = Qwen2_5_VLForConditionalGeneration(hf_cfg)
    assert count_params(cfg) == hf.num_parameters()
    assert Qwen25VLConfig.from_hf_dict(cfg.to_hf_dict()) == cfg


def test_published_sizes():
    # Hugging Face model cards: 3B has 3.75B parameters, 7B 8.29B.
    assert round(count_params(preset("3b")) / 1e9, 2) == 3.75
    assert round(count_params(preset("7b")) / 1e9, 2) == 8.29


def test_invalid_configs_are_named():
    with pytest.raises(ConfigError, match="mrope_section"):
        Qwen25VLConfig.from_hf_dict({**RELEASED_3B, "rope_scaling": {"type": "mrope", "mrope_section": [8, 8, 8]}})
    with pytest.raises(ConfigError, match="sliding"):
        Qwen25VLConfig.from_hf_dict({**RELEASED_3B, "use_sliding_window": True})
    with pytest.raises(ConfigError, match="image_token_id"):
        Qwen25VLConfig.from_hf_dict({**RELEASED_3B, "vocab_size": 1000})
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("13b")
