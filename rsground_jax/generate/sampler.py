"""Jitted KV-cache sampler: one prefill over the (image + text) prompt, then a `lax.while_loop` decode.

Prompts are left-padded to a static length so every sequence's next token sits at the last slot; generated
token i of sequence b goes to cache slot `prompt_len + i` with M-RoPE position `max(prompt positions) + 1 + i`
on all three axes (what transformers derives from `rope_deltas`). Decoding stops per sequence at an end
token; finished sequences emit `pad_id`. The whole generation is one compiled program per static shape.

Given a device mesh, the batch is split over its data axis: each device generates its own rows with a full
copy of the weights (what rollouts over a `data` axis do; the weights' own sharding is for the training
step). The prompt rows, the KV cache and the token buffer carry the batch sharding through the loop, so
no device ever holds another's cache, and the per-sequence stop is decided on every device together (the
loop runs while any row anywhere is unfinished).

The weights every decoded token reads are prepared once a generation (`TextDecoder.decode_weights`): sliced
per layer, cast to the compute dtype, and on a mesh laid out by `sharding.DECODE_RULES`, gathered over fsdp
and split over tensor; the training layout would make every decoded token gather every layer's weights again.
"""

from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..models.qwen2_5_vl.layers import argmax_first
from ..models.qwen2_5_vl.model import Qwen25VL
from ..models.qwen2_5_vl.text import KVCache
from ..sharding import RULES, activation_layout, decode_placement, logical_spec


DECODE_SCOPE = "decode_token"


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 disables
    top_p: float = 1.0
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    cache_dtype: str | None = None  # defaults to the model's compute dtype
    greedy_rows: int = 0  # in each group of num_generations rows, the first this many decode greedily
    # tokens drawn inside a box (after a token of box_open_ids, up to and including one of box_close_ids) are
    # drawn at box_temperature instead (None: temperature everywhere); see `box_state`
    box_temperature: float | None = None
    box_open_ids: tuple[int, ...] = ()
    box_close_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.greedy_rows < 0:
            raise ValueError(f"greedy_rows must be >= 0, got {self.greedy_rows}")
        if self.box_temperature is not None and not (self.box_temperature > 0 and self.temperature > 0
                                                     and self.box_open_ids):
            raise ValueError(f"box_temperature={self.box_temperature} needs a positive value, sampling "
                             f"(temperature={self.temperature} > 0) and the ids of the tokens that open a box "
                             f"(box_open_ids={self.box_open_ids})")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"invalid sampling settings: temperature={self.temperature}, top_k={self.top_k}, "
                             f"top_p={self.top_p}")


def _filter_logits(logits: jax.Array, cfg: SamplingConfig, temperature: jax.Array | None = None) -> jax.Array:
    """Temperature, top-k and top-p (nucleus) filtering of [b, vocab] float32 logits; `temperature` [b, 1]
    replaces cfg.temperature row by row."""
    logits = logits / (cfg.temperature if temperature is None else temperature)
    if cfg.top_k > 0:
        kth = jax.lax.top_k(logits, cfg.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if cfg.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        keep = (jnp.cumsum(probs, axis=-1) - probs) < cfg.top_p
        threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def _pick(logits: jax.Array, cfg: SamplingConfig, key, greedy: jax.Array | None = None,
          in_box: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(token [b], its log-probability under the distribution it was drawn from [b]): after temperature,
    top-k and top-p, renormalized over the tokens they keep; greedy decoding reports the plain softmax's.
    `greedy` [b] bool: rows that take the argmax while the others sample (their log-probability is still
    under the filtered distribution, as a sampled row's). `in_box` [b] bool: rows drawn at
    cfg.box_temperature."""
    if cfg.temperature == 0.0:
        token = argmax_first(logits)
        return token, _logprob_of(logits, token)
    temperature = None
    if cfg.box_temperature is not None and in_box is not None:
        temperature = jnp.where(in_box, cfg.box_temperature, cfg.temperature)[:, None].astype(logits.dtype)
    # Gumbel-max, as jax.random.categorical draws (same key, same draw), with the faster argmax
    filtered = _filter_logits(logits, cfg, temperature)
    token = argmax_first(filtered + jax.random.gumbel(key, filtered.shape, filtered.dtype))
    if greedy is not None:
        token = jnp.where(greedy, argmax_first(filtered), token)
    return token, _logprob_of(filtered, token)


def box_state(in_box: jax.Array, token: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Whether each row [b] is inside a box after emitting `token` [b]: a token of cfg.box_open_ids opens one
    (the tokens after it are the box's), one of cfg.box_close_ids ends it (it was the box's last), any other
    leaves the state as it was."""
    opened = jnp.isin(token, jnp.asarray(cfg.box_open_ids, jnp.int32))
    closed = jnp.isin(token, jnp.asarray(cfg.box_close_ids or (-1,), jnp.int32))
    return opened | (in_box & ~closed)


def _logprob_of(logits: jax.Array, token: jax.Array) -> jax.Array:
    picked = jnp.take_along_axis(logits, token[:, None], axis=-1)[:, 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def _repeat_rows(x: jax.Array, g: int, axis: int) -> jax.Array:
    return x if g == 1 else jnp.repeat(x, g, axis=axis)


def by_rows(x: jax.Array, batch_axis: int, rows: tuple[Mesh, str | tuple[str, ...]] | None,
            heads_axis: int | None = None) -> jax.Array:
    """Constrain x's `batch_axis` to the mesh axes `rows` names, and its `heads_axis` (key/value heads) to the
    mesh's tensor axis where they divide by it (`sharding.RULES["kv_heads"]`, as the weights that compute them);
    every other axis whole on each device."""
    if rows is None:
        return x
    mesh, axis = rows
    spec = [None] * x.ndim
    spec[batch_axis] = axis
    if heads_axis is not None:
        spec[heads_axis] = logical_spec(("kv_heads",), (x.shape[heads_axis],), mesh)[0]
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(*spec)))


def _cache_by_rows(cache: KVCache, rows) -> KVCache:
    if rows is None:
        return cache
    if cache.is_per_layer:  # [b, kv_heads, ...] per layer
        k = tuple(by_rows(x, 0, rows, 1) for x in cache.k)
        v = tuple(by_rows(x, 0, rows, 1) for x in cache.v)
    else:  # [layers, b, kv_heads, ...]
        k, v = by_rows(cache.k, 1, rows, 2), by_rows(cache.v, 1, rows, 2)
    return KVCache(k, v, by_rows(cache.valid, 0, rows))


def generate_fn(graphdef, state, batch: dict, key: jax.Array, cfg: SamplingConfig,
                rows: tuple[Mesh, str | tuple[str, ...]] | None = None, num_generations: int = 1):
    """Pure generation function (jit it with `cfg`, `rows` and `num_generations` static).

    Each of the b prompts is prefilled once; with `num_generations` G > 1 its KV cache and last logits are
    then repeated to G rows (prompt p's completions are rows p * G ... p * G + G - 1), which decode
    independently: the image and prompt are encoded once per prompt, not G times.
    With `cfg.greedy_rows` k > 0 the first k rows of each prompt's G decode greedily and the rest sample.
    Returns tokens [b * G, max_new], lengths [b * G] and logprobs [b * G, max_new] (each sampled token's
    log-probability under the distribution it was drawn from, see `_pick`; 0 past a row's length).
    `state`: the model's parameters (e.g. a train state's, used as they are). `rows`: (mesh, the mesh axis or
    axes the batch is split over), or None for one device: the cache, tokens, logits and the model's
    activations (`sharding.activation_layout`, the rows' axes as its batch) stay split so.
    """
    if rows is None:
        return _generate(graphdef, state, batch, key, cfg, rows, num_generations)
    axes = (rows[1],) if isinstance(rows[1], str) else tuple(rows[1])
    with activation_layout(rows[0], {**RULES, "batch": axes}):
        return _generate(graphdef, state, batch, key, cfg, rows, num_generations)


def _generate(graphdef, state, batch, key, cfg, rows, num_generations):
    model: Qwen25VL = nnx.merge(graphdef, state)
    ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    prompts, prompt_len = ids.shape
    g = num_generations
    b = prompts * g
    total = prompt_len + cfg.max_new_tokens
    cache_dtype = jnp.dtype(cfg.cache_dtype) if cfg.cache_dtype else jnp.dtype(model.dtype)
    cache = _cache_by_rows(KVCache.init(model.config.text, prompts, total, cache_dtype), rows)
    logits, cache = model.forward(ids, mask, pos, batch.get("pixel_values"), batch.get("vision"),
                                  cache=cache, cache_index=0, logits_slice=slice(-1, None))
    start_pos = jnp.max(jnp.where(mask[None].astype(bool), pos, -1), axis=(0, 2)) + 1  # [prompts]
    if g > 1:  # one prefill per prompt, its cache shared by the prompt's G completions
        cache = KVCache(_repeat_rows(cache.k, g, 1), _repeat_rows(cache.v, g, 1), _repeat_rows(cache.valid, g, 0))
        logits, start_pos = by_rows(_repeat_rows(logits, g, 0), 0, rows), _repeat_rows(start_pos, g, 0)
    eos = jnp.asarray(cfg.eos_ids or (-1,), jnp.int32)
    # the weights every decoded token reads, prepared (sliced per layer, cast, and on a mesh gathered over fsdp)
    # once here, not once per token in the loop
    if rows is None:
        decode = model.text.decode_weights(model.dtype)
    else:
        fuse, place = decode_placement(rows[0])
        decode = model.text.decode_weights(model.dtype, fuse=fuse, place=place)
    cache = _cache_by_rows(cache.per_layer(), rows)  # likewise: each layer's own buffer, updated in place

    greedy = (jnp.arange(b) % g) < cfg.greedy_rows if cfg.greedy_rows else None
    key, sub = jax.random.split(key)
    first, first_lp = _pick(logits[:, -1], cfg, sub, greedy)
    tokens = by_rows(jnp.full((b, cfg.max_new_tokens), cfg.pad_id, jnp.int32).at[:, 0].set(first), 0, rows)
    logprobs = by_rows(jnp.zeros((b, cfg.max_new_tokens), jnp.float32).at[:, 0].set(first_lp), 0, rows)
    done = jnp.isin(first, eos)
    lengths = jnp.ones((b,), jnp.int32)
    boxed = cfg.box_temperature is not None
    in_box = box_state(jnp.zeros((b,), bool), first, cfg) if boxed else None

    def cond(carry):
        i, _, _, _, done, *_ = carry
        return (i < cfg.max_new_tokens) & ~jnp.all(done)

    @jax.named_scope(DECODE_SCOPE)  # what a profile or a compiled program's metadata names the per-token work
    def body(carry):
        i, tokens, logprobs, lengths, done, cache, key, in_box = carry
        prev = tokens[:, i - 1][:, None]
        p = jnp.broadcast_to((start_pos + i - 1)[None, :, None], (3, b, 1)).astype(jnp.int32)
        step_logits, cache = model.forward(prev, jnp.ones((b, 1), jnp.int32), p, cache=cache,
                                           cache_index=prompt_len + i - 1, decode=decode)
        key, sub = jax.random.split(key)
        picked, lp = _pick(step_logits[:, -1], cfg, sub, greedy, in_box)
        nxt = jnp.where(done, cfg.pad_id, picked)
        if boxed:
            in_box = box_state(in_box, nxt, cfg)
        tokens = by_rows(tokens.at[:, i].set(nxt), 0, rows)
        logprobs = by_rows(logprobs.at[:, i].set(jnp.where(done, 0.0, lp)), 0, rows)
        cache = _cache_by_rows(cache, rows)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | jnp.isin(nxt, eos)
        return i + 1, tokens, logprobs, lengths, done, cache, key, in_box

    _, tokens, logprobs, lengths, *_ = jax.lax.while_loop(
        cond, body, (1, tokens, logprobs, lengths, done, cache, key, in_box))
    return tokens, lengths, logprobs


class Sampler:
    """Compiles `generate_fn` once per (batch shape, sampling config) and runs it on prepared batches.

    mesh: a `jax.sharding.Mesh` whose `data_axis` the batch is split over (the batch size must divide by
    that axis' size); None runs on the default device. The weights are replicated over the mesh.
    """

    def __init__(self, model: Qwen25VL, mesh: Mesh | None = None, data_axis: str = "data"):
        self._rows = None
        if mesh is not None:
            if data_axis not in mesh.axis_names:
                raise ValueError(f"the mesh has no axis {data_axis!r} to split the batch over "
                                 f"(its axes: {mesh.axis_names})")
            # sharding constraints inside the loop need Auto axes; `jax.make_mesh` makes Explicit ones
            mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))
            self._rows = (mesh, data_axis)
        self._fn = jax.jit(generate_fn, static_argnums=(0, 4, 5, 6))
        self.update(model)

    def update(self, model: Qwen25VL) -> None:
        self.graphdef, self.state = nnx.split(model)
        if self._rows is not None:
            self.state = jax.device_put(self.state, NamedSharding(self._rows[0], P()))

    def _place(self, arrays: dict, key: jax.Array):
        """Rows of the prompt arrays to their devices; the vision inputs (flattened over images) and the key
        replicated."""
        mesh, axis = self._rows
        n, b = mesh.shape[axis], arrays["input_ids"].shape[0]
        if b % n:
            raise ValueError(f"a batch of {b} does not split evenly over the {n} devices of mesh axis "
                             f"{axis!r}: pad it to a multiple of {n}")
        specs = {"input_ids": P(axis), "attention_mask": P(axis), "position_ids": P(None, axis)}
        put = {k: jax.device_put(v, NamedSharding(mesh, specs.get(k, P()))) for k, v in arrays.items()}
        return put, jax.device_put(key, NamedSharding(mesh, P()))

    def _inputs(self, batch: dict, key: jax.Array | None):
        """The arrays `generate_fn` reads from a prepared batch, and the key, on their devices."""
        mask = np.asarray(batch["attention_mask"])
        if not mask[:, -1].all():
            raise ValueError("Sampler needs left-padded prompts: attention_mask[:, -1] must be 1 for every row")
        key = jax.random.key(0) if key is None else key
        arrays = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
        if batch.get("vision") is not None:
            arrays["pixel_values"] = batch["pixel_values"]
            arrays["vision"] = batch["vision"]
        return (arrays, key) if self._rows is None else self._place(arrays, key)

    def __call__(self, batch: dict, cfg: SamplingConfig, key: jax.Array | None = None):
        """batch: output of `prepare_inputs` (left-padded) plus `pixel_values`; returns numpy tokens, lengths."""
        tokens, lengths, _ = self.sample(batch, cfg, key)
        return tokens, lengths

    def sample(self, batch: dict, cfg: SamplingConfig, key: jax.Array | None = None, num_generations: int = 1):
        """`num_generations` completions per prompt from one prefill each: numpy tokens [b * G, max_new],
        lengths [b * G], log-probabilities [b * G, max_new] (see `generate_fn`)."""
        arrays, key = self._inputs(batch, key)
        tokens, lengths, logprobs = self._fn(self.graphdef, self.state, arrays, key, cfg, self._rows,
                                             num_generations)
        return np.asarray(tokens), np.asarray(lengths), np.asarray(logprobs)


def generate(model: Qwen25VL, batch: dict, cfg: SamplingConfig, key=None):
    """One-off generation (compiles each call; keep a `Sampler` for repeated use)."""
    return Sampler(model)(batch, cfg, key)
