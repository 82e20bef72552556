"""Qwen2 language model with M-RoPE: GQA attention with q/k/v bias, SwiGLU MLP, RMSNorm, optional KV cache.

Layer parameters are stacked along a leading `layers` axis and the decoder is one `lax.scan`, so compile
time does not grow with depth; up to `UNROLL_LAYERS` layers (the packaged tiny base) run as an unrolled loop
without a cache instead: a scan's backward stacks every layer's activations into buffers it first fills
with zeros (on a CPU that fill, page faults included, cost more than the tiny model's own matmuls). The KV cache is a pytree of arrays updated with `dynamic_update_slice`
inside the scan, so a jitted decode step can donate it and update it in place.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import TextConfig
from .layers import apply_rotary, constrain, grouped_attention, maybe_remat, param, rms_norm, silu_mul, swiglu

UNROLL_LAYERS = 4  # decoders this shallow run their training/prefill forward as a Python loop over layers


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys/values of every layer and the slots that hold real tokens.

    k, v: either stacked, [layers, batch, kv_heads, max_len, head_dim] (what the scanned decoder reads and
    `init` makes), or per layer (`per_layer()`, what the unrolled decode path reads): tuples of `layers`
    arrays, keys [batch, kv_heads, head_dim, max_len] and values [batch, kv_heads, max_len, head_dim]. Each
    layer then reads and updates its own buffer in place, where a slice of the stacked array would be copied
    out for every layer and token, and a decoded token's logits reduce over head_dim with the slots as the
    vectorized axis (`layers.KV_LAYOUTS["bkhs"]`).
    valid: [batch, max_len] bool.

    In both forms heads come before slots, so each decoded token's attention reads a layer's keys and values
    with batch and head as leading axes: no transposing copy of the cache per layer and token.
    """

    k: jax.Array | tuple[jax.Array, ...]
    v: jax.Array | tuple[jax.Array, ...]
    valid: jax.Array

    @classmethod
    def init(cls, cfg: TextConfig, batch: int, max_len: int, dtype=jnp.float32) -> "KVCache":
        shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, max_len), bool))

    @property
    def is_per_layer(self) -> bool:
        return isinstance(self.k, tuple)

    def per_layer(self) -> "KVCache":
        """The same cache as one array per layer, keys transposed (a copy, once; a per-layer cache is returned
        as it is)."""
        if self.is_per_layer:
            return self
        return KVCache(tuple(jnp.swapaxes(self.k[i], 2, 3) for i in range(self.k.shape[0])),
                       tuple(self.v[i] for i in range(self.v.shape[0])), self.valid)

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]


def mrope_cos_sin(position_ids: jax.Array, cfg: TextConfig) -> tuple[jax.Array, jax.Array]:
    """position_ids [3, b, t] -> cos, sin [b, t, head_dim] (float32), chunked M-RoPE layout.

    Frequency j of the half head takes its position from axis (temporal, height, width) according to which
    chunk of `mrope_section` it falls in; the half is then repeated, as in transformers.
    """
    half = cfg.head_dim // 2
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, cfg.head_dim, 2, dtype=np.float32) / cfg.head_dim))
    axis_of_freq = np.repeat(np.arange(3), cfg.mrope_section)  # [half]
    assert len(axis_of_freq) == half
    pos = jnp.moveaxis(position_ids.astype(jnp.float32)[axis_of_freq], 0, -1)  # [b, t, half]
    freqs = pos * jnp.asarray(inv_freq)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


ATTENTION = ("xla", "dot_product_attention")


class TextDecoder(nnx.Module):
    def __init__(self, cfg: TextConfig, *, tie_word_embeddings: bool, rngs: nnx.Rngs | None,
                 param_dtype=jnp.float32, remat: str = "none", attention: str = "xla"):
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        self.cfg = cfg
        self.tie_word_embeddings = tie_word_embeddings
        self.remat = remat
        # how self-attention without a cache (training, teacher forcing) runs: "xla", our grouped einsums, or
        # "dot_product_attention", `jax.nn.dot_product_attention` (JAX picks a fused kernel where the device
        # has one, e.g. cuDNN on GPUs, and its XLA version elsewhere); decoding against a cache is always ours
        self.attention = attention
        L, D, N, K, H, F, V = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
                               cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size)
        p = lambda shape, axes, init="normal": param(rngs, shape, axes, param_dtype, init)  # noqa: E731
        self.embed_vd = p((V, D), ("vocab", "embed"))
        self.attn_norm_ld = p((L, D), ("layers", "embed"), "ones")
        self.q_ldnh = p((L, D, N, H), ("layers", "embed", "q_heads", "head_dim"))
        self.q_bias_lnh = p((L, N, H), ("layers", "q_heads", "head_dim"), "zeros")
        self.k_ldkh = p((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim"))
        self.k_bias_lkh = p((L, K, H), ("layers", "kv_heads", "head_dim"), "zeros")
        self.v_ldkh = p((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim"))
        self.v_bias_lkh = p((L, K, H), ("layers", "kv_heads", "head_dim"), "zeros")
        self.o_lnhd = p((L, N, H, D), ("layers", "q_heads", "head_dim", "embed"))
        self.mlp_norm_ld = p((L, D), ("layers", "embed"), "ones")
        self.gate_ldf = p((L, D, F), ("layers", "embed", "mlp"))
        self.up_ldf = p((L, D, F), ("layers", "embed", "mlp"))
        self.down_lfd = p((L, F, D), ("layers", "mlp", "embed"))
        self.final_norm_d = p((D,), ("embed",), "ones")
        if not tie_word_embeddings:
            self.lm_head_dv = p((D, V), ("embed", "vocab"))

    def embed(self, input_ids: jax.Array, dtype) -> jax.Array:
        """[b, t] ids -> [b, t, d]. On a mesh the table is looked up whole over fsdp, as a layer's weights are
        used: rows looked up from a table split on the model width would come out split on it, and reach the
        batch's layout (and their gradient the table's) only through a full rematerialization."""
        table = constrain(self.embed_vd[...], ("vocab", "act_embed")).astype(dtype)
        return constrain(table[input_ids], ("batch", "seq", "act_embed"))

    def _stacked_params(self) -> dict[str, nnx.Param]:
        return {
            "attn_norm": self.attn_norm_ld, "q": self.q_ldnh, "q_bias": self.q_bias_lnh, "k": self.k_ldkh,
            "k_bias": self.k_bias_lkh, "v": self.v_ldkh, "v_bias": self.v_bias_lkh, "o": self.o_lnhd,
            "mlp_norm": self.mlp_norm_ld, "gate": self.gate_ldf, "up": self.up_ldf, "down": self.down_lfd,
        }

    def _stacked(self):
        return {k: v[...] for k, v in self._stacked_params().items()}

    def layer_params(self, dtype=None) -> list[dict[str, jax.Array]]:
        """Each layer's parameters sliced out of the stacks, for the unrolled decode path (see `__call__`),
        with q/k/v fused into one [d, (n + 2k) * h] matrix and gate/up into one [d, 2f]: a decoded token then
        makes 4 matmuls a layer instead of 7 (fewer, wider GEMMs; the copies are made once per generation).
        `dtype`: cast to the compute dtype here, once, rather than at every use inside the decode loop (the
        cast of float32 master weights to bfloat16 would otherwise re-read them for every token)."""
        return self.decode_weights(dtype)["layers"]

    def decode_weights(self, dtype=None, *, fuse: bool = True, place=None) -> dict:
        """What a decode loop reads for every token, prepared once before it: {"layers": `layer_params`-style
        per-layer dicts, "embed_vd" [vocab, d], "head_dv" [d, vocab], "final_norm_d" [d]}.

        `place(array, logical_axes) -> array`: pins each prepared weight's layout (the sampler gathers the
        weights over fsdp here, once a generation, where the training layout would gather every layer again
        for every token: `sharding.decode_placement`). `fuse=False` keeps q/k/v and gate/up apart: fused along
        their output axis, weights split over tensor would have to move between devices."""
        cfg = self.cfg
        D, NH, KH = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        stacked = self._stacked()
        axes = {k: v.get_metadata()["logical_axes"] for k, v in self._stacked_params().items()}
        if fuse:
            qkv = jnp.concatenate([stacked["q"].reshape(-1, D, NH), stacked["k"].reshape(-1, D, KH),
                                   stacked["v"].reshape(-1, D, KH)], axis=-1)
            qkv_bias = jnp.concatenate([stacked["q_bias"].reshape(-1, NH), stacked["k_bias"].reshape(-1, KH),
                                        stacked["v_bias"].reshape(-1, KH)], axis=-1)
            gate_up = jnp.concatenate([stacked["gate"], stacked["up"]], axis=-1)
            kept = ("attn_norm", "o", "mlp_norm", "down")
            stacked = {"qkv_dx": qkv, "qkv_bias_x": qkv_bias, "gate_up_dx": gate_up, **{k: stacked[k] for k in kept}}
            axes.update(qkv_dx=("layers", "embed", None), qkv_bias_x=("layers", None),
                        gate_up_dx=("layers", "embed", None))
        head = self.embed_vd[...].T if self.tie_word_embeddings else self.lm_head_dv[...]
        whole = {"embed_vd": self.embed_vd[...], "head_dv": head, "final_norm_d": self.final_norm_d[...]}
        axes.update(embed_vd=("vocab", "embed"), head_dv=("embed", "vocab"), final_norm_d=("embed",))
        if dtype is not None:  # the norms stay as they are (rms_norm computes in float32)
            stacked = {k: w if k.endswith("norm") else w.astype(dtype) for k, w in stacked.items()}
            whole.update(embed_vd=whole["embed_vd"].astype(dtype), head_dv=whole["head_dv"].astype(dtype))
        if place is not None:
            stacked = {k: place(w, axes[k]) for k, w in stacked.items()}
            whole = {k: place(w, axes[k]) for k, w in whole.items()}
        return {"layers": [{k: w[i] for k, w in stacked.items()} for i in range(cfg.num_hidden_layers)], **whole}

    def __call__(self, x: jax.Array, position_ids: jax.Array, attention_mask: jax.Array,
                 cache: KVCache | None = None, cache_index: jax.Array | int = 0,
                 layers: list[dict[str, jax.Array]] | None = None, final_norm_d: jax.Array | None = None):
        """Decoder stack.

        Args:
          x: [b, t, d] input embeddings (compute dtype).
          position_ids: [3, b, t] M-RoPE positions.
          attention_mask: [b, t] 1 for real tokens, 0 for padding.
          cache: if given, the t new tokens are written at slots [cache_index, cache_index + t) and attend to
            every valid slot up to their own; otherwise plain causal self-attention over x.
          layers: `layer_params()`, to run the layers unrolled (the decode path); the cache then comes back
            per layer (`KVCache.per_layer`, converted once if a stacked one is passed in).
          final_norm_d: the final norm's weight as `decode_weights` prepared it (default: the model's own).
        Returns:
          (hidden [b, t, d] after the final norm, updated cache or None).
        """
        cfg = self.cfg
        b, t, _ = x.shape
        cos, sin = mrope_cos_sin(position_ids, cfg)
        cos, sin = cos[:, :, None], sin[:, :, None]
        new_valid = attention_mask.astype(bool)
        if cache is None:
            key_valid = new_valid
            q_pos = jnp.arange(t)
            k_pos = jnp.arange(t)
        else:
            key_valid = jax.lax.dynamic_update_slice(cache.valid, new_valid, (0, cache_index))
            q_pos = cache_index + jnp.arange(t)
            k_pos = jnp.arange(cache.max_len)
        # [b, 1, 1, t, s]: causal in slot order, keys restricted to real tokens
        mask = (k_pos[None, :] <= q_pos[:, None])[None, None, None] & key_valid[:, None, None, None, :]

        # activation layouts (`layers.constrain`; a no-op unless a sharded step pins them): rows split like the
        # batch, heads and MLP features like their weights, so XLA never infers a layout that moves them
        resid = ("batch", "seq", "act_embed")
        heads, kv_heads = ("batch", "seq", "act_heads", None), ("batch", "seq", "act_kv_heads", None)

        def layer(h, lp, kv=None):
            dt = h.dtype
            h = constrain(h, resid)
            a = rms_norm(h, lp["attn_norm"], cfg.rms_norm_eps)
            if "qkv_dx" in lp:  # `layer_params()`: q, k, v from one fused matmul
                qkv = a @ lp["qkv_dx"].astype(dt) + lp["qkv_bias_x"].astype(dt)
                nh, kh = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
                q = qkv[..., :nh].reshape(b, t, cfg.num_attention_heads, cfg.head_dim)
                k = qkv[..., nh:nh + kh].reshape(b, t, cfg.num_key_value_heads, cfg.head_dim)
                v = qkv[..., nh + kh:].reshape(b, t, cfg.num_key_value_heads, cfg.head_dim)
            else:
                q = jnp.einsum("btd,dnh->btnh", a, lp["q"].astype(dt)) + lp["q_bias"].astype(dt)
                k = jnp.einsum("btd,dkh->btkh", a, lp["k"].astype(dt)) + lp["k_bias"].astype(dt)
                v = jnp.einsum("btd,dkh->btkh", a, lp["v"].astype(dt)) + lp["v_bias"].astype(dt)
            q = constrain(apply_rotary(q, cos, sin), heads)
            k = constrain(apply_rotary(k, cos, sin), kv_heads)
            v = constrain(v, kv_heads)
            layout = "bskh"
            if kv is not None:
                # write the new keys/values into this layer's cache in place (the cache is a loop carry, so no
                # copy of it is made per layer or per decoded token), then attend over all of its slots.
                # `i` indexes the stacked [layers, ...] arrays of the scanned path; None: the layer's own arrays.
                ck, cv, i = kv
                k_new = jnp.swapaxes(k, 1, 2).astype(ck.dtype)  # [b, kv_heads, t, h]
                v_new = jnp.swapaxes(v, 1, 2).astype(cv.dtype)
                if i is None:  # keys [b, kv_heads, h, slots]
                    layout = "bkhs"
                    ck = jax.lax.dynamic_update_slice(ck, jnp.swapaxes(k_new, 2, 3), (0, 0, 0, cache_index))
                    cv = jax.lax.dynamic_update_slice(cv, v_new, (0, 0, cache_index, 0))
                    k, v = ck.astype(dt), cv.astype(dt)
                else:
                    layout = "bksh"
                    ck = jax.lax.dynamic_update_slice(ck, k_new[None], (i, 0, 0, cache_index, 0))
                    cv = jax.lax.dynamic_update_slice(cv, v_new[None], (i, 0, 0, cache_index, 0))
                    k = jax.lax.dynamic_index_in_dim(ck, i, 0, keepdims=False).astype(dt)
                    v = jax.lax.dynamic_index_in_dim(cv, i, 0, keepdims=False).astype(dt)
                kv = (ck, cv)
            if layout == "bskh" and self.attention == "dot_product_attention":
                o = jax.nn.dot_product_attention(q, k, v, mask=mask[:, :, 0], scale=cfg.head_dim**-0.5)
            else:
                qg = q.reshape(b, t, cfg.num_key_value_heads, cfg.num_kv_groups, cfg.head_dim)
                o = grouped_attention(qg, k, v, mask, cfg.head_dim**-0.5, layout)
                o = o.reshape(b, t, cfg.num_attention_heads, cfg.head_dim)
            h = constrain(h + jnp.einsum("btnh,nhd->btd", constrain(o, heads), lp["o"].astype(dt)), resid)
            m = rms_norm(h, lp["mlp_norm"], cfg.rms_norm_eps)
            if "gate_up_dx" in lp:
                gate, up = jnp.split(m @ lp["gate_up_dx"].astype(dt), 2, axis=-1)
                h = h + silu_mul(gate, up) @ lp["down"].astype(dt)
            else:
                h = h + swiglu(m, lp["gate"], lp["up"], lp["down"])
            return constrain(h, resid), kv

        stacked = self._stacked() if layers is None else None
        if cache is None:
            body = maybe_remat(lambda h, lp: (layer(h, lp)[0], None), self.remat)
            if cfg.num_hidden_layers <= UNROLL_LAYERS:
                for i in range(cfg.num_hidden_layers):
                    x, _ = body(x, jax.tree.map(lambda a: a[i], stacked))
            else:
                x, _ = jax.lax.scan(body, x, stacked)
            new_cache = None
        else:
            def body(carry, xs):
                h, ck, cv = carry
                lp, i = xs
                h, (ck, cv) = layer(h, lp, (ck, cv, i))
                return (h, ck, cv), None

            if layers is None:
                if cache.is_per_layer:
                    raise ValueError("a per-layer KVCache is read by the unrolled path: pass layers=layer_params()")
                layer_ids = jnp.arange(cfg.num_hidden_layers)
                (x, ks, vs), _ = jax.lax.scan(body, (x, cache.k, cache.v), (stacked, layer_ids))
            else:
                per_layer = cache.per_layer()
                ks, vs = list(per_layer.k), list(per_layer.v)
                for i, lp in enumerate(layers):
                    x, (ks[i], vs[i]) = layer(x, lp, (ks[i], vs[i], None))
                ks, vs = tuple(ks), tuple(vs)
            new_cache = KVCache(ks, vs, key_valid)
        final = self.final_norm_d[...] if final_norm_d is None else final_norm_d
        return rms_norm(x, final, cfg.rms_norm_eps), new_cache

    def logits(self, hidden: jax.Array, head_dv: jax.Array | None = None) -> jax.Array:
        """[b, t, d] -> [b, t, vocab] (float32 accumulation of the compute-dtype matmul). `head_dv`: the LM head
        as `decode_weights` prepared it (default: the model's own)."""
        dt = hidden.dtype
        if head_dv is None:
            head_dv = self.embed_vd[...].T if self.tie_word_embeddings else self.lm_head_dv[...]
        return jnp.einsum("btd,dv->btv", hidden, head_dv.astype(dt), preferred_element_type=jnp.float32)
