"""The GRPO step: one jitted program from prompts to updated parameters.

    rollouts      each prompt prefilled once, G completions decoded from its shared cache (`generate_fn`),
                  with the current parameters as they are (no copy of the model per step)
    rewards       parsed from the token ids on device (`rewards.reward_terms`), weighted and summed
    advantages    group-relative (`grpo.group_advantages`), optionally scaled per group by the coherence hook;
                  with dynamic sampling the step draws `dynamic_sampling_oversample` times the prompts and the
                  update keeps that fraction of the groups, those whose rewards differ first (`select_groups`;
                  the others stay in the static-shape batch with weight 0)
    log-probs     of the completions under the current policy (the old log-probs) and the frozen reference
                  policy, teacher-forced; each prompt and its image run through the model once, their keys and
                  values shared by the prompt's G completions (`completion_logprobs`)
    update        `train.make_update` with the GRPO loss (plus `sft_coef` x the SFT anchor: the token-mean
                  negative log-likelihood of each prompt's SFT target), `num_iterations` times on the same
                  rollouts with the old log-probs fixed

The batch is a stack of A prompt micro-batches (leading axis A): rollouts run per micro-batch (`lax.map`), the
update scans the same micro-batches. The rollout key of step s is `fold_in(state.rng, s)`, so a resumed run
draws exactly the rollouts of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ..eval.metrics import box_area
from ..generate.sampler import SamplingConfig, by_rows, generate_fn
from ..models.qwen2_5_vl.text import KVCache
from ..sharding import activation_layout, batch_mesh_axes
from ..train.step import RLTrainState, make_update
from .grpo import GRPOConfig, group_advantages, grpo_loss_terms, select_groups
from .rewards import coherence_weights, reward_terms, weighted_reward

# Prompt-batch keys the step reads (the pipeline's RL batch plus `vision` from `add_vision_inputs`); with the SFT
# anchor also each prompt's target (`PipelineConfig.rl_targets`).
PROMPT_KEYS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "vision", "gt_box_resized",
               "resized_hw", "sample_valid")
TARGET_KEYS = ("target_ids", "target_mask")


@dataclasses.dataclass(frozen=True)
class GRPOStepConfig:
    """What the step needs besides the GRPO settings: the reward weights and options, the coherence hook,
    the end and pad ids."""

    grpo: GRPOConfig
    rewards: tuple[tuple[str, float], ...]  # (name, weight)
    reward_options: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()
    coherence: bool = False
    coherence_kind: str = "target_pairwise_iou"
    coherence_min_weight: float = 0.5
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    freeze_vision: bool = False
    # the tokens that open and close an answer's box (`TokenBytes.bracket_ids`), for grpo.box_temperature
    box_open_ids: tuple[int, ...] = ()
    box_close_ids: tuple[int, ...] = ()

    @property
    def batch_keys(self) -> tuple[str, ...]:
        """The keys of the prompt batches the step takes."""
        return PROMPT_KEYS + (TARGET_KEYS if self.grpo.sft_coef > 0 else ())

    @property
    def sampling(self) -> SamplingConfig:
        g = self.grpo
        return SamplingConfig(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k,
                              top_p=g.top_p, eos_ids=self.eos_ids, pad_id=self.pad_id, greedy_rows=g.greedy_rollouts,
                              box_temperature=g.box_temperature, box_open_ids=self.box_open_ids,
                              box_close_ids=self.box_close_ids)


def prompt_prefill(model, prompt: dict, length: int):
    """The prompt's pass through the model (left-padded, [P, L], image included): the logits [P, 1, V] of the
    first token after it, and the key/value cache it wrote, with room for `length` tokens after the prompt."""
    ids, mask, pos = prompt["input_ids"], prompt["attention_mask"], prompt["position_ids"]
    p, lp = ids.shape
    cache = KVCache.init(model.config.text, p, lp + length, model.dtype)
    return model.forward(ids, mask, pos, prompt["pixel_values"], prompt["vision"], cache=cache, cache_index=0,
                         logits_slice=slice(-1, None))


def completion_logprobs(model, prompt: dict, tokens: jax.Array, num_generations: int, temperature: float,
                        rows=None, prefill=None):
    """Teacher-forced log-probabilities [P * G, T] of completions `tokens` [P * G, T] (row p * G + g follows
    prompt p) under `model`, at the sampling temperature (without top-k/top-p: the policy's own distribution).

    The prompt (left-padded, [P, L], image included) runs through the decoder once per prompt, writing its keys
    and values to a cache, as the sampler's prefill does; the cache is repeated to the G rows and the
    completions run against it. Causal attention makes this exact (a prompt token never sees a completion),
    and the prompt's share of the compute, forward and backward, falls G-fold: with a 900-token image prompt
    and 256-token completions that is most of the step. `rows`: (mesh, mesh axes) the rows are split over, so
    the repeated cache and the [P * G, T, vocab] logits stay split (`generate_fn`'s argument of that name).
    `prefill`: `prompt_prefill(model, prompt, n)` with n >= T, where the caller already ran it (the SFT anchor
    shares it); the cache's slots past the completion stay empty and masked.
    """
    g = num_generations
    mask, pos = prompt["attention_mask"], prompt["position_ids"]
    lp = mask.shape[1]
    t = tokens.shape[1]
    first, cache = prompt_prefill(model, prompt, t) if prefill is None else prefill  # first: [P, 1, V]
    logits = jnp.repeat(first, g, axis=0)
    if t > 1:  # the completions' own tokens predict the rest
        logits = jnp.concatenate([logits, _completion_logits(model, cache, mask, pos, tokens, g, lp, rows)], axis=1)
    logits = by_rows(logits, 0, rows) / temperature
    picked = jnp.take_along_axis(logits, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def sft_anchor_terms(model, prompt: dict, target_ids: jax.Array, target_mask: jax.Array, rows=None, prefill=None):
    """The SFT anchor's (summed negative log-likelihood, token count) of each prompt's target `target_ids`
    [P, T] (mask [P, T]) under `model` at temperature 1, teacher-forced after the prompt as a completion is
    (`prefill`: as `completion_logprobs` takes it)."""
    logp = completion_logprobs(model, prompt, target_ids, 1, 1.0, rows, prefill)
    mask = target_mask.astype(jnp.float32)
    return -jnp.sum(jnp.where(mask > 0, logp, 0.0)), mask.sum()


def _completion_logits(model, cache, mask, pos, tokens, g: int, lp: int, rows=None):
    """Logits [P * G, T - 1] at completion positions 0 .. T - 2 against the prompt's cache repeated G times."""
    p, t = mask.shape[0], tokens.shape[1]
    cache = KVCache(by_rows(jnp.repeat(cache.k, g, axis=1), 1, rows, 2), by_rows(jnp.repeat(cache.v, g, axis=1), 1, rows, 2),
                    by_rows(jnp.repeat(cache.valid, g, axis=0), 0, rows))
    start = jnp.max(jnp.where(mask[None].astype(bool), pos, -1), axis=(0, 2)) + 1  # [P]
    comp_pos = jnp.repeat(jnp.broadcast_to((start[:, None] + jnp.arange(t)[None])[None], (3, p, t)), g, axis=1)
    x = model.text.embed(tokens[:, :-1], model.dtype)
    hidden, _ = model.text(x, comp_pos[:, :, :-1], jnp.ones((p * g, t - 1), mask.dtype), cache=cache, cache_index=lp)
    return model.text.logits(hidden)


def make_grpo_step(graphdef, tx: optax.GradientTransformation, cfg: GRPOStepConfig, *, shardings: tuple | None = None):
    """The jitted step `step(state, ref_params, tables, batch) -> (state, metrics)`.

    state: an `RLTrainState` (raw key data); ref_params: the frozen reference policy's parameters
    (ignored with beta 0); tables: `TokenBytes.tables()` as arrays; batch: prompt micro-batches [A, P, ...]
    (`cfg.batch_keys`). The state is donated.

    `shardings`: (the state's, the reference's or None, the batch's) from `rsground_jax.sharding`: the step runs
    over their mesh, the prompts (and so the rollouts, P x G rows) split over data x fsdp, the weights as the
    rules place them; the tables and metrics whole on every device.
    """
    g_cfg = cfg.grpo
    G = g_cfg.num_generations
    sampling = cfg.sampling
    weights = dict(cfg.rewards)
    options = {k: dict(v) for k, v in cfg.reward_options}
    metric_weights = {**weights, **({"iou": 0.0} if "iou" not in weights else {})}  # IoU is always reported

    rows = None
    if shardings is not None:  # the rollout rows stay split over the batch's mesh axes inside the program
        mesh = jax.tree.leaves(shardings[0])[0].mesh
        rows = (mesh, batch_mesh_axes(mesh))  # axes may be (): rows whole on every device, decode weights placed

    def loss_fn(model, mb):
        prefill = None
        if g_cfg.sft_coef > 0:  # one pass of the prompts (and their images) for the completions and the targets
            prefill = prompt_prefill(model, mb["prompt"], max(mb["tokens"].shape[1], mb["target_ids"].shape[1]))
        logp = completion_logprobs(model, mb["prompt"], mb["tokens"], G, g_cfg.temperature, rows, prefill)
        old = mb["old_logp"] if g_cfg.num_iterations > 1 else jax.lax.stop_gradient(logp)
        total, count, aux = grpo_loss_terms(logp, old, mb.get("ref_logp"), mb["advantages"], mb["mask"], g_cfg,
                                            rows=mb["rows"])
        if g_cfg.sft_coef > 0:
            nll, n = sft_anchor_terms(model, mb["prompt"], mb["target_ids"], mb["target_mask"], rows, prefill)
            # scaled by the GRPO term's count, so loss = sum / count adds sft_coef x the anchor's token mean
            # (exactly with one micro-batch, or micro-batches of equal counts)
            total = total + g_cfg.sft_coef * count * nll / jnp.maximum(n, 1.0)
            aux["sft_nll"] = (nll, n)
        return total, count, aux

    update = make_update(graphdef, tx, loss_fn, freeze_vision=cfg.freeze_vision,
                         param_shardings=None if shardings is None else shardings[0].params)

    def step(state: RLTrainState, ref_params, tables, batch):
        prompts = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values", "vision")}
        A, P = batch["input_ids"].shape[:2]
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        keys = jax.random.split(key, A)

        def rollout(args):
            prompt, k = args
            return generate_fn(graphdef, state.params, prompt, k, sampling, rows, G)

        tokens, lengths, sample_logp = jax.lax.map(rollout, (prompts, keys))  # [A, P * G, T], [A, P * G]
        tokens, lengths, sample_logp = (by_rows(x, 1, rows) for x in (tokens, lengths, sample_logp))
        T = tokens.shape[-1]

        gt = jnp.repeat(batch["gt_box_resized"], G, axis=1).reshape(-1, 4)
        hw = jnp.repeat(batch["resized_hw"], G, axis=1).reshape(-1, 2)
        terms, parsed = reward_terms(tokens.reshape(-1, T), lengths.reshape(-1), tables, gt, hw, metric_weights, options)
        reward = weighted_reward({k: terms[k] for k in weights}, weights).reshape(A * P, G)
        advantages = group_advantages(reward, g_cfg.scale_rewards)
        if cfg.coherence:
            coh = coherence_weights(parsed["pred"].reshape(A * P, G, 4), parsed["has_box"].reshape(A * P, G),
                                    batch["gt_box_resized"].reshape(-1, 4), batch["resized_hw"].reshape(-1, 2),
                                    kind=cfg.coherence_kind, min_weight=cfg.coherence_min_weight)
        else:
            coh = jnp.ones((A * P,), jnp.float32)
        spread = jnp.std(reward, axis=1, ddof=1)
        valid = batch["sample_valid"].reshape(-1)
        if g_cfg.dynamic_sampling:  # the update keeps 1 / oversample of the drawn groups, informative ones first
            keep = select_groups(spread, valid, (A * P) // g_cfg.dynamic_sampling_oversample)
        else:
            keep = valid > 0
        advantages = advantages * coh[:, None] * keep[:, None]

        eos = jnp.asarray(cfg.eos_ids or (-1,), jnp.int32)
        ended = jnp.any(jnp.isin(tokens, eos) & (jnp.arange(T) < lengths[..., None]), axis=-1)  # [A, P * G]
        mask = (jnp.arange(T) < lengths[..., None]).astype(jnp.float32)
        if g_cfg.mask_truncated_completions:
            mask = mask * ended[..., None]

        micro = {"prompt": prompts, "tokens": tokens, "mask": mask, "advantages": advantages.reshape(A, P * G),
                 "rows": jnp.repeat(keep, G).reshape(A, P * G)}
        if g_cfg.sft_coef > 0:
            micro.update(target_ids=batch["target_ids"], target_mask=batch["target_mask"])
        if g_cfg.num_iterations > 1 or g_cfg.beta > 0:
            def forward(params, args):
                prompt, toks = args
                with activation_layout(None if rows is None else rows[0]):
                    return completion_logprobs(nnx.merge(graphdef, params), prompt, toks, G, g_cfg.temperature, rows)
            if g_cfg.num_iterations > 1:
                micro["old_logp"] = jax.lax.map(lambda a: forward(state.params, a), (prompts, tokens))
            if g_cfg.beta > 0:
                micro["ref_logp"] = jax.lax.map(lambda a: forward(ref_params, a), (prompts, tokens))

        metrics, step0 = {}, state.step
        for _ in range(g_cfg.num_iterations):
            state, metrics = update(state, micro)
        state = dataclasses.replace(state, step=step0 + 1)  # a GRPO step counts once, whatever its updates

        has_box = parsed["has_box"]
        iou = terms["iou"]
        area = box_area(parsed["pred"], jnp) / jnp.maximum(hw[:, 0] * hw[:, 1], 1).astype(jnp.float32)
        live = mask.sum()
        metrics.update({f"reward/{k}": v.mean() for k, v in terms.items() if k in weights})
        metrics.update({
            "reward": reward.mean(),
            "reward_std_in_group": spread.mean(),
            "advantage_std": jnp.std(advantages),
            "completion_length": lengths.mean().astype(jnp.float32),
            "truncated": 1.0 - ended.mean(),
            "parsable": has_box.mean(),
            "format": parsed["format"].mean(),
            "rollout_iou": iou.mean(),
            "rollout_pr@0.5": (iou > 0.5).mean(),
            "rollout_no_overlap": (iou <= 0).mean(),  # where IoU gives no signal: no box, or a box off the target
            "pred_box_area": jnp.sum(jnp.where(has_box, area, 0.0)) / jnp.maximum(has_box.sum(), 1),
            "coherence_weight": coh.mean(),
            "zero_variance_groups": (spread == 0).sum().astype(jnp.float32),
            "kept_informative_groups": (keep & (spread > 0)).sum().astype(jnp.float32),
            "sampler_logp": jnp.sum(sample_logp * mask) / jnp.maximum(live, 1.0),
        })
        return state, metrics

    if shardings is None:
        return jax.jit(step, donate_argnums=0)
    state_sh, ref_sh, batch_sh = shardings
    everywhere = NamedSharding(jax.tree.leaves(state_sh)[0].mesh, PartitionSpec())
    return jax.jit(step, in_shardings=(state_sh, ref_sh, everywhere, batch_sh), out_shardings=(state_sh, everywhere),
                   donate_argnums=0)

