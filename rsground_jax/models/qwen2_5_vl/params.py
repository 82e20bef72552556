"""The one place that maps Hugging Face Qwen2.5-VL tensors to ours and back.

HF stores `nn.Linear` weights as [out, in] and one tensor per layer; we store [in, out] (split into heads where
shapes matter) stacked over layers. Each of our parameters is described by a `Mapping`: which HF tensor(s) it
comes from, and how one HF tensor becomes one layer slice (`to_ours`) and back (`to_hf`). Both directions are
pure reshapes/transposes, so HF -> ours -> HF is bit-identical.

Checkpoint names: released checkpoints, and transformers 5's `save_pretrained`, use `visual.*`, `model.*` and
`lm_head.weight`; transformers 5 names the modules `model.visual.*` / `model.language_model.*` in memory, and
files written with those names load too. We write the released names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from .config import Qwen25VLConfig

VISION_PREFIX = "visual."
TEXT_PREFIX = "model."
LM_HEAD = "lm_head.weight"


def canonical_name(name: str) -> str:
    """Map any known checkpoint naming to the released names we use."""
    if name.startswith("model.visual."):
        return name[len("model."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


@dataclasses.dataclass(frozen=True)
class Mapping:
    """Our parameter `path` (module attribute path) <- HF tensor `hf_name` (with `{i}` for the layer index)."""

    path: tuple[str, ...]
    hf_name: str
    layers: int | None  # number of stacked layers, None for unstacked
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]

    def hf_names(self) -> list[str]:
        if self.layers is None:
            return [self.hf_name]
        return [self.hf_name.format(i=i) for i in range(self.layers)]


def _ident():
    return (lambda a: a), (lambda a: a)


def _linear(*out_split: int):
    """HF [out, in] <-> ours [in, *out_split]."""
    def to_ours(a):
        return a.T.reshape(a.shape[1], *out_split)

    def to_hf(a):
        return a.reshape(a.shape[0], -1).T

    return to_ours, to_hf


def _linear_in(*in_split: int):
    """HF [out, in] <-> ours [*in_split, out] (projections whose input is split into heads)."""
    def to_ours(a):
        return a.T.reshape(*in_split, a.shape[0])

    def to_hf(a):
        return a.reshape(-1, a.shape[-1]).T

    return to_ours, to_hf


def _reshape(*shape: int):
    def to_ours(a):
        return a.reshape(shape)

    def to_hf(a):
        return a.reshape(-1)

    return to_ours, to_hf


def mappings(config: Qwen25VLConfig) -> list[Mapping]:
    v, t = config.vision, config.text
    V, T = VISION_PREFIX, TEXT_PREFIX
    C, N, H = v.hidden_size, v.num_heads, v.head_dim
    tn, tk, th = t.num_attention_heads, t.num_key_value_heads, t.head_dim
    Lv, Lt = v.depth, t.num_hidden_layers

    def conv():
        def to_ours(a):  # Conv3d [C, 3, 2, 14, 14] == Linear over the flattened 1176 values
            return a.reshape(a.shape[0], -1).T

        def to_hf(a):
            return a.T.reshape(C, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)

        return to_ours, to_hf

    m = [
        Mapping(("vision", "patch_embed_pc"), V + "patch_embed.proj.weight", None, *conv()),
        Mapping(("vision", "norm1_lc"), V + "blocks.{i}.norm1.weight", Lv, *_ident()),
        Mapping(("vision", "norm2_lc"), V + "blocks.{i}.norm2.weight", Lv, *_ident()),
        Mapping(("vision", "qkv_lc3nh"), V + "blocks.{i}.attn.qkv.weight", Lv, *_linear(3, N, H)),
        Mapping(("vision", "qkv_bias_l3nh"), V + "blocks.{i}.attn.qkv.bias", Lv, *_reshape(3, N, H)),
        Mapping(("vision", "proj_lnhc"), V + "blocks.{i}.attn.proj.weight", Lv, *_linear_in(N, H)),
        Mapping(("vision", "proj_bias_lc"), V + "blocks.{i}.attn.proj.bias", Lv, *_ident()),
        Mapping(("vision", "gate_lcf"), V + "blocks.{i}.mlp.gate_proj.weight", Lv, *_linear(v.intermediate_size)),
        Mapping(("vision", "gate_bias_lf"), V + "blocks.{i}.mlp.gate_proj.bias", Lv, *_ident()),
        Mapping(("vision", "up_lcf"), V + "blocks.{i}.mlp.up_proj.weight", Lv, *_linear(v.intermediate_size)),
        Mapping(("vision", "up_bias_lf"), V + "blocks.{i}.mlp.up_proj.bias", Lv, *_ident()),
        Mapping(("vision", "down_lfc"), V + "blocks.{i}.mlp.down_proj.weight", Lv, *_linear(C)),
        Mapping(("vision", "down_bias_lc"), V + "blocks.{i}.mlp.down_proj.bias", Lv, *_ident()),
        Mapping(("vision", "merger_norm_c"), V + "merger.ln_q.weight", None, *_ident()),
        Mapping(("vision", "merger_fc1_ee"), V + "merger.mlp.0.weight", None, *_linear(C * v.merge_unit)),
        Mapping(("vision", "merger_fc1_bias_e"), V + "merger.mlp.0.bias", None, *_ident()),
        Mapping(("vision", "merger_fc2_ed"), V + "merger.mlp.2.weight", None, *_linear(v.out_hidden_size)),
        Mapping(("vision", "merger_fc2_bias_d"), V + "merger.mlp.2.bias", None, *_ident()),
        Mapping(("text", "embed_vd"), T + "embed_tokens.weight", None, *_ident()),
        Mapping(("text", "attn_norm_ld"), T + "layers.{i}.input_layernorm.weight", Lt, *_ident()),
        Mapping(("text", "q_ldnh"), T + "layers.{i}.self_attn.q_proj.weight", Lt, *_linear(tn, th)),
        Mapping(("text", "q_bias_lnh"), T + "layers.{i}.self_attn.q_proj.bias", Lt, *_reshape(tn, th)),
        Mapping(("text", "k_ldkh"), T + "layers.{i}.self_attn.k_proj.weight", Lt, *_linear(tk, th)),
        Mapping(("text", "k_bias_lkh"), T + "layers.{i}.self_attn.k_proj.bias", Lt, *_reshape(tk, th)),
        Mapping(("text", "v_ldkh"), T + "layers.{i}.self_attn.v_proj.weight", Lt, *_linear(tk, th)),
        Mapping(("text", "v_bias_lkh"), T + "layers.{i}.self_attn.v_proj.bias", Lt, *_reshape(tk, th)),
        Mapping(("text", "o_lnhd"), T + "layers.{i}.self_attn.o_proj.weight", Lt, *_linear_in(tn, th)),
        Mapping(("text", "mlp_norm_ld"), T + "layers.{i}.post_attention_layernorm.weight", Lt, *_ident()),
        Mapping(("text", "gate_ldf"), T + "layers.{i}.mlp.gate_proj.weight", Lt, *_linear(t.intermediate_size)),
        Mapping(("text", "up_ldf"), T + "layers.{i}.mlp.up_proj.weight", Lt, *_linear(t.intermediate_size)),
        Mapping(("text", "down_lfd"), T + "layers.{i}.mlp.down_proj.weight", Lt, *_linear(t.hidden_size)),
        Mapping(("text", "final_norm_d"), T + "norm.weight", None, *_ident()),
    ]
    if not config.tie_word_embeddings:
        m.append(Mapping(("text", "lm_head_dv"), LM_HEAD, None, *_linear(t.vocab_size)))
    return m


def hf_shapes(config: Qwen25VLConfig, our_shapes: dict[tuple[str, ...], tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Expected HF tensor shapes, derived by running each `to_hf` on a zero-size-free dummy of our shape."""
    out = {}
    for mp in mappings(config):
        shape = our_shapes[mp.path]
        one = shape[1:] if mp.layers is not None else shape
        hf = mp.to_hf(np.empty(one, np.int8)).shape
        for name in mp.hf_names():
            out[name] = tuple(hf)
    return out


def iter_hf_tensors(config: Qwen25VLConfig, get: Callable[[tuple[str, ...]], np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (hf_name, array) for export; `get(path)` returns our (stacked) parameter as numpy."""
    for mp in mappings(config):
        ours = get(mp.path)
        if mp.layers is None:
            yield mp.hf_name, np.ascontiguousarray(mp.to_hf(ours))
        else:
            for i, name in enumerate(mp.hf_names()):
                yield name, np.ascontiguousarray(mp.to_hf(ours[i]))
