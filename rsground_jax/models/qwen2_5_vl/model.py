"""Qwen2.5-VL for conditional generation: vision tower + Qwen2 decoder + LM head, in Flax NNX.

Two ways to call it:
  * `model(input_ids, attention_mask, pixel_values, image_grid_thw)` with the HF processor's arrays (numpy or
    concrete JAX arrays): host-side positions and vision indices are computed for you; returns logits.
  * `model.forward(batch)` / `model(..., position_ids=..., vision=...)` with everything precomputed by
    `prepare_inputs` (static shapes): the form to use inside `jax.jit`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import Qwen25VLConfig
from .inputs import prepare_inputs
from .layers import constrain
from .text import KVCache, TextDecoder
from .vision import VisionTower


def _is_traced(*xs) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in xs if x is not None)


class Qwen25VL(nnx.Module):
    """Qwen2_5_VLForConditionalGeneration in NNX.

    Args:
      config: model shapes and special token ids.
      rngs: random init; `None` gives zeros (for loading weights or abstract evaluation).
      param_dtype: storage dtype of the parameters (float32 master weights for training).
      dtype: compute dtype (float32 or bfloat16); parameters are cast to it at use.
      remat: activation checkpointing of each scanned layer: 'none', 'full' or 'dots'.
      attention: the decoder's self-attention without a cache: 'xla' or 'dot_product_attention' (`TextDecoder`).
    """

    def __init__(self, config: Qwen25VLConfig, *, rngs: nnx.Rngs | None = None, param_dtype=jnp.float32,
                 dtype=jnp.float32, remat: str = "none", attention: str = "xla"):
        self.config = config
        self.dtype = dtype
        self.vision = VisionTower(config.vision, rngs=rngs, param_dtype=param_dtype, remat=remat)
        self.text = TextDecoder(config.text, tie_word_embeddings=config.tie_word_embeddings, rngs=rngs,
                                param_dtype=param_dtype, remat=remat, attention=attention)

    # ------------------------------------------------------------------------------------------- pieces

    def encode_images(self, pixel_values: jax.Array, vision: dict[str, jax.Array]) -> jax.Array:
        """[P, 1176] patches -> [P / 4, hidden] merged image embeddings in prompt order (padding rows last)."""
        return self.vision(pixel_values, vision, self.dtype)

    def embed(self, input_ids: jax.Array, attention_mask: jax.Array, pixel_values=None, vision=None) -> jax.Array:
        """Token embeddings with image embeddings placed, in order, at the `<|image_pad|>` positions.

        pixel_values: [P, patch_dim] for the whole batch, or [groups, P_g, patch_dim] with `vision` arrays of a
        leading [groups] axis (rows split evenly into groups in order)."""
        x = self.text.embed(input_ids, self.dtype)
        if pixel_values is None:
            return x
        if vision is None:
            raise ValueError("pixel_values given without `vision` index arrays: compute them with prepare_inputs")
        is_image = (input_ids == self.config.image_token_id) & attention_mask.astype(bool)
        if pixel_values.ndim == 3:
            # grouped ([groups, P_g, patch_dim], `inputs.group_vision_inputs`): each group's rows take its own
            # images, so a device whose rows are one group runs the tower over its images only
            images = jax.vmap(self.encode_images)(pixel_values, vision)  # [groups, P_g / 4, hidden]
            images = constrain(images, ("batch", None, "act_embed"))  # a group per batch shard, width whole
            groups = images.shape[0]
            flat = is_image.reshape(groups, -1)
            order = jnp.clip(jnp.cumsum(flat, -1) - 1, 0, images.shape[1] - 1)
            picked = jnp.take_along_axis(images, order[..., None], axis=1).reshape(*input_ids.shape, -1)
            return constrain(jnp.where(is_image[..., None], picked.astype(x.dtype), x), ("batch", "seq", "act_embed"))
        # the batch's images packed as one: every device holds all of them, whole in width (the tower's output
        # layer splits its width over fsdp, and rows looked up from it would come out split so)
        images = constrain(self.encode_images(pixel_values, vision), (None, "act_embed"))
        # k-th image token (in reading order over the batch) takes the k-th merged embedding
        order = jnp.cumsum(is_image.reshape(-1)) - 1
        order = jnp.clip(order, 0, images.shape[0] - 1).reshape(input_ids.shape)
        return constrain(jnp.where(is_image[..., None], images[order].astype(x.dtype), x), ("batch", "seq", "act_embed"))

    # ------------------------------------------------------------------------------------------- calls

    def forward(self, input_ids, attention_mask, position_ids, pixel_values=None, vision=None,
                cache: KVCache | None = None, cache_index=0, logits_slice: slice | None = None, layers=None,
                decode: dict | None = None):
        """Jittable forward on prepared inputs. Returns (logits [b, t, vocab] float32, cache or None).

        `logits_slice` restricts the LM head to some positions (e.g. `slice(-1, None)` for decoding).
        `layers`: per-layer decoder parameters (`self.text.layer_params()`), for the unrolled decode path.
        `decode`: `self.text.decode_weights()`, a decode step's weights prepared once for the whole generation
        (text tokens only): the embedding, the layers (unrolled), the final norm and the LM head.
        """
        head = None
        if decode is not None:
            if pixel_values is not None:
                raise ValueError("a decode step with prepared weights takes text tokens only, not pixel_values")
            x = decode["embed_vd"][input_ids].astype(self.dtype)
            hidden, cache = self.text(x, position_ids, attention_mask, cache=cache, cache_index=cache_index,
                                      layers=decode["layers"], final_norm_d=decode["final_norm_d"])
            head = decode["head_dv"]
        else:
            x = self.embed(input_ids, attention_mask, pixel_values, vision)
            hidden, cache = self.text(x, position_ids, attention_mask, cache=cache, cache_index=cache_index,
                                      layers=layers)
        if logits_slice is not None:
            hidden = hidden[:, logits_slice]
        return self.text.logits(hidden, head), cache

    def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None, *,
                 position_ids=None, vision=None) -> jax.Array:
        """Logits [batch, length, vocab] for HF-processor-style inputs."""
        if position_ids is None:
            if _is_traced(input_ids, attention_mask, image_grid_thw):
                raise ValueError(
                    "Qwen25VL called under jit without position_ids: compute them (and `vision`) on the host with "
                    "rsground_jax.models.qwen2_5_vl.prepare_inputs and pass them in"
                )
            if pixel_values is not None and image_grid_thw is None:
                raise ValueError("pixel_values given without image_grid_thw")
            prep = prepare_inputs(self.config, input_ids, attention_mask, image_grid_thw)
            if pixel_values is not None and prep["vision"] is not None:
                n = int(np.asarray(image_grid_thw).reshape(-1, 3).prod(-1).sum())
                if np.shape(pixel_values)[0] != n:
                    raise ValueError(f"pixel_values has {np.shape(pixel_values)[0]} patch rows but image_grid_thw "
                                     f"describes {n}")
            input_ids, attention_mask = prep["input_ids"], prep["attention_mask"]
            position_ids, vision = prep["position_ids"], prep["vision"]
            if vision is None:
                pixel_values = None
        elif attention_mask is None:
            attention_mask = jnp.ones(jnp.shape(input_ids), jnp.int32)
        logits, _ = self.forward(jnp.asarray(input_ids), jnp.asarray(attention_mask), jnp.asarray(position_ids),
                                 None if pixel_values is None else jnp.asarray(pixel_values),
                                 None if vision is None else jax.tree.map(jnp.asarray, vision))
        return logits


def count_params(config: Qwen25VLConfig) -> int:
    """Parameter count without allocating (abstract init); equals transformers' `num_parameters()`."""
    abstract = nnx.eval_shape(lambda: Qwen25VL(config, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
