"""Qwen2.5-VL configuration: an HF-compatible dataclass, presets, and config.json reading/writing.

`from_hf_dict` reads both layouts transformers has used for `config.json`:
  * the released checkpoints' flat layout (text fields at the top level, `rope_scaling: {type: mrope, ...}`),
  * transformers 5's nested layout (`text_config`, `vision_config`, `rope_parameters`).
`to_hf_dict` writes the nested layout, which transformers 5 reads back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from ...errors import UserError


class ConfigError(UserError, ValueError):
    """A config.json that is missing, unreadable, or not a Qwen2.5-VL config."""


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    out_hidden_size: int = 2048
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    tokens_per_second: int = 2
    rms_norm_eps: float = 1e-6  # fixed in transformers' vision blocks and merger

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        return self.spatial_merge_size**2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    max_position_embeddings: int = 128000
    hidden_act: str = "silu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()
    tie_word_embeddings: bool = True
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    pad_token_id: int | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        t, v = self.text, self.vision
        sizes = {f"text {k}": getattr(t, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                      "num_hidden_layers", "num_attention_heads", "num_key_value_heads")}
        sizes.update({f"vision {k}": getattr(v, k) for k in ("depth", "hidden_size", "intermediate_size", "num_heads",
                                                            "patch_size", "spatial_merge_size", "window_size")})
        bad = [f"{k}={val!r}" for k, val in sizes.items() if not isinstance(val, int) or val <= 0]
        if bad:
            raise ConfigError("invalid Qwen2.5-VL config: sizes must be positive integers: " + ", ".join(bad))
        problems = []
        if t.hidden_size % t.num_attention_heads:
            problems.append(f"text hidden_size {t.hidden_size} is not divisible by num_attention_heads {t.num_attention_heads}")
        elif t.num_attention_heads % t.num_key_value_heads:
            problems.append(
                f"num_attention_heads {t.num_attention_heads} is not divisible by num_key_value_heads {t.num_key_value_heads}"
            )
        elif 2 * sum(t.mrope_section) != t.head_dim:
            problems.append(f"mrope_section {list(t.mrope_section)} must sum to head_dim/2 = {t.head_dim // 2}")
        if v.hidden_size % v.num_heads:
            problems.append(f"vision hidden_size {v.hidden_size} is not divisible by num_heads {v.num_heads}")
        elif v.head_dim % 4:
            problems.append(f"vision head_dim {v.head_dim} must be divisible by 4 (2D rotary)")
        if v.out_hidden_size != t.hidden_size:
            problems.append(f"vision out_hidden_size {v.out_hidden_size} != text hidden_size {t.hidden_size}")
        if (v.window_size // v.patch_size) % v.spatial_merge_size or v.window_size % v.patch_size:
            problems.append(f"window_size {v.window_size} must be a multiple of patch_size*spatial_merge_size")
        if any(not 0 <= i < v.depth for i in v.fullatt_block_indexes):
            problems.append(f"fullatt_block_indexes {list(v.fullatt_block_indexes)} must lie in [0, depth={v.depth})")
        for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
            if not 0 <= getattr(self, name) < t.vocab_size:
                problems.append(f"{name}={getattr(self, name)} is outside the vocabulary (vocab_size {t.vocab_size})")
        if problems:
            raise ConfigError("invalid Qwen2.5-VL config: " + "; ".join(problems))

    def replace(self, **kw) -> "Qwen25VLConfig":
        return dataclasses.replace(self, **kw)

    # ----------------------------------------------------------------------------------------------- HF I/O

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config") -> "Qwen25VLConfig":
        model_type = d.get("model_type")
        if model_type != "qwen2_5_vl":
            raise ConfigError(
                f"{source}: model_type is {model_type!r}, not 'qwen2_5_vl': this is not a Qwen2.5-VL config"
                + (" (Qwen2-VL has no window attention and another vision tower)" if model_type == "qwen2_vl" else "")
            )
        td = dict(d.get("text_config") or {})
        # Released checkpoints keep text fields at the top level; transformers 5 nests them.
        for k in TextConfig.__dataclass_fields__.keys() | {"rope_scaling", "rope_parameters", "use_sliding_window",
                                                            "rope_theta", "tie_word_embeddings"}:
            if k not in td and k in d:
                td[k] = d[k]
        vd = dict(d.get("vision_config") or {})
        if not vd:
            raise ConfigError(f"{source}: no vision_config")
        if td.get("use_sliding_window"):
            raise ConfigError(f"{source}: use_sliding_window=true is not supported (no released Qwen2.5-VL uses it)")
        rope = td.get("rope_parameters") or td.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "mrope"):
            raise ConfigError(f"{source}: rope type {rope_type!r} is not supported (only default M-RoPE)")
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                               "intermediate_size") if k not in td]
        if missing:
            raise ConfigError(f"{source}: text config lacks {missing}")
        try:
            text = TextConfig(
                vocab_size=int(td["vocab_size"]),
                hidden_size=int(td["hidden_size"]),
                intermediate_size=int(td["intermediate_size"]),
                num_hidden_layers=int(td["num_hidden_layers"]),
                num_attention_heads=int(td["num_attention_heads"]),
                num_key_value_heads=int(td.get("num_key_value_heads") or td["num_attention_heads"]),
                rms_norm_eps=float(td.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope.get("rope_theta", td.get("rope_theta", 1000000.0))),
                mrope_section=tuple(int(x) for x in rope.get("mrope_section", (16, 24, 24))),
                max_position_embeddings=int(td.get("max_position_embeddings", 128000)),
                hidden_act=td.get("hidden_act", "silu"),
            )
            vrope = vd.get("rope_parameters") or {}
            vision = VisionConfig(
                depth=int(vd.get("depth", vd.get("num_hidden_layers", 32))),
                hidden_size=int(vd.get("hidden_size", 1280)),
                intermediate_size=int(vd.get("intermediate_size", 3420)),
                num_heads=int(vd.get("num_heads", vd.get("num_attention_heads", 16))),
                in_channels=int(vd.get("in_channels", vd.get("in_chans", 3))),
                patch_size=int(vd.get("patch_size", 14)),
                temporal_patch_size=int(vd.get("temporal_patch_size", 2)),
                spatial_merge_size=int(vd.get("spatial_merge_size", 2)),
                window_size=int(vd.get("window_size", 112)),
                out_hidden_size=int(vd.get("out_hidden_size", text.hidden_size)),
                fullatt_block_indexes=tuple(int(i) for i in vd.get("fullatt_block_indexes", (7, 15, 23, 31))),
                hidden_act=vd.get("hidden_act", "silu"),
                rope_theta=float(vrope.get("rope_theta", 10000.0)),
                tokens_per_second=int(vd.get("tokens_per_second", 2)),
            )
        except ConfigError as e:  # sizes that do not fit together
            raise ConfigError(f"{source}: {e}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: a size or id is not a number ({e})") from None
        for act, where in ((text.hidden_act, "text"), (vision.hidden_act, "vision")):
            if act != "silu":
                raise ConfigError(f"{source}: {where} hidden_act {act!r} is not supported (Qwen2.5-VL uses silu)")
        # transformers ties when either the top level or the text config says so
        tie = bool(d.get("tie_word_embeddings", False)) or bool(td.get("tie_word_embeddings", False))
        try:
            return cls._checked(text, vision, d, td, tie)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: a token id is not a number ({e})") from None

    @classmethod
    def _checked(cls, text, vision, d, td, tie) -> "Qwen25VLConfig":
        return cls(
            text=text,
            vision=vision,
            tie_word_embeddings=bool(tie),
            image_token_id=int(d.get("image_token_id", 151655)),
            video_token_id=int(d.get("video_token_id", 151656)),
            vision_start_token_id=int(d.get("vision_start_token_id", 151652)),
            vision_end_token_id=int(d.get("vision_end_token_id", 151653)),
            bos_token_id=_first_int(td.get("bos_token_id", d.get("bos_token_id", 151643))),
            eos_token_id=_first_int(td.get("eos_token_id", d.get("eos_token_id", 151645))),
            pad_token_id=_first_int(td.get("pad_token_id", d.get("pad_token_id"))),
        )

    @classmethod
    def from_json_file(cls, path: str) -> "Qwen25VLConfig":
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: no such file (a Hugging Face checkpoint directory needs config.json)")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        return cls.from_hf_dict(d, source=path)

    def to_hf_dict(self) -> dict[str, Any]:
        t, v = self.text, self.vision
        text_config = {
            "model_type": "qwen2_5_vl_text",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "num_key_value_heads": t.num_key_value_heads,
            "hidden_act": t.hidden_act,
            "max_position_embeddings": t.max_position_embeddings,
            "rms_norm_eps": t.rms_norm_eps,
            "use_sliding_window": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": list(t.mrope_section)},
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
        }
        vision_config = {
            "model_type": "qwen2_5_vl_vision",
            "depth": v.depth,
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_heads": v.num_heads,
            "in_channels": v.in_channels,
            "patch_size": v.patch_size,
            "temporal_patch_size": v.temporal_patch_size,
            "spatial_merge_size": v.spatial_merge_size,
            "window_size": v.window_size,
            "out_hidden_size": v.out_hidden_size,
            "fullatt_block_indexes": list(v.fullatt_block_indexes),
            "hidden_act": v.hidden_act,
            "tokens_per_second": v.tokens_per_second,
            "rope_parameters": {"rope_type": "axial", "rope_theta": v.rope_theta},
        }
        return {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "text_config": text_config,
            "vision_config": vision_config,
            "image_token_id": self.image_token_id,
            "video_token_id": self.video_token_id,
            "vision_start_token_id": self.vision_start_token_id,
            "vision_end_token_id": self.vision_end_token_id,
            "tie_word_embeddings": self.tie_word_embeddings,
        }


def _first_int(x):
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return int(x[0]) if x else None
    return int(x)


# ------------------------------------------------------------------------------------------------ presets

_VISION_RELEASED = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, window_size=112,
                        fullatt_block_indexes=(7, 15, 23, 31))


def _released(hidden, layers, heads, kv, mlp, vocab, tied) -> Qwen25VLConfig:
    return Qwen25VLConfig(
        text=TextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=kv),
        vision=VisionConfig(out_hidden_size=hidden, **_VISION_RELEASED),
        tie_word_embeddings=tied,
    )


def tiny(
    vocab_size: int = 1024,
    *,
    image_token_id: int | None = None,
    video_token_id: int | None = None,
    vision_start_token_id: int | None = None,
    vision_end_token_id: int | None = None,
    eos_token_id: int | None = None,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
    tie_word_embeddings: bool = True,
    text_layers: int = 4,
    vision_depth: int = 3,
    rope_theta: float = 1000000.0,
    mrope_section: tuple[int, int, int] = (4, 6, 6),
) -> Qwen25VLConfig:
    """The tiny preset (~1.8M parameters with a 1k vocabulary): text hidden 128, 4 layers, 4/2 heads;
    vision hidden 128, depth 3 with the last block full-attention, window 112 px.

    Special token ids default to the top of the vocabulary; pass a tokenizer's ids to match it.
    """
    top = vocab_size - 1
    ids = dict(
        image_token_id=top if image_token_id is None else image_token_id,
        video_token_id=top - 1 if video_token_id is None else video_token_id,
        vision_start_token_id=top - 2 if vision_start_token_id is None else vision_start_token_id,
        vision_end_token_id=top - 3 if vision_end_token_id is None else vision_end_token_id,
        eos_token_id=top - 4 if eos_token_id is None else eos_token_id,
        bos_token_id=top - 5 if bos_token_id is None else bos_token_id,
        pad_token_id=pad_token_id,
    )
    return Qwen25VLConfig(
        text=TextConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=text_layers,
                        num_attention_heads=4, num_key_value_heads=2, mrope_section=tuple(mrope_section),
                        max_position_embeddings=4096, rope_theta=rope_theta),
        vision=VisionConfig(depth=vision_depth, hidden_size=128, intermediate_size=256, num_heads=4,
                            out_hidden_size=128, fullatt_block_indexes=(vision_depth - 1,)),
        tie_word_embeddings=tie_word_embeddings,
        **ids,
    )


PRESETS = {
    "3b": lambda: _released(2048, 36, 16, 2, 11008, 151936, True),
    "7b": lambda: _released(3584, 28, 28, 4, 18944, 152064, False),
    "32b": lambda: _released(5120, 64, 40, 8, 27648, 152064, False),
    "72b": lambda: _released(8192, 80, 64, 8, 29568, 152064, False),
    "tiny": tiny,
}


def preset(name: str) -> Qwen25VLConfig:
    key = name.lower().removeprefix("qwen2.5-vl-").removesuffix("-instruct")
    if key not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[key]()
