"""CoT-SFT of Qwen2.5-VL-7B-Instruct on DIOR-RSVG: the 3B recipe with the 7B checkpoint and a lower lr.

    rsground sft --config configs/qwen2_5_vl_7b_dior_rsvg.py init=/path/to/Qwen2.5-VL-7B-Instruct
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "qwen2_5_vl_3b_dior_rsvg", os.path.join(os.path.dirname(os.path.abspath(__file__)), "qwen2_5_vl_3b_dior_rsvg.py"))
_base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_base)


def get_config():
    c = _base.get_config()
    c.init = "checkpoints/Qwen2.5-VL-7B-Instruct"
    c.workdir = "runs/qwen2_5_vl_7b_dior_rsvg"
    c.output = "runs/qwen2_5_vl_7b_dior_rsvg/model"
    c.stages[0].lr = 5e-6
    return c
