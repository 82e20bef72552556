"""A GRPO experiment from a config (`configs.GRPO_FIELDS`): the policy and reference from model folders, the
prompts, the loop, validation, export; and `GRPOStage`, the same training as a stage of a multi-stage
experiment (`train.experiment.STAGES["grpo"]`).

The policy starts from `init` (a CoT-SFT export, or 'base') and is prompted with that folder's own template
and pixel budget (rsground_prompt.json). The frozen reference policy of the KL term is `reference`, or `init`
when it is empty; a reference of another shape is refused before any work. Training runs under
`<workdir>/grpo` with the shared loop (checkpoints, exact resume, SIGTERM); the export is a complete model
folder with the same prompt file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from ..configs import check_grpo_config, grpo_config_differences, grpo_settings, plain_config
from ..data.chat import prompt_from_spec, prompt_spec
from ..data.pipeline import PipelineConfig, rl_pipeline
from ..data.tokenizer import special_token_ids
from ..errors import CheckpointError
from ..eval.evaluate import evaluate_over_hosts, write_predictions
from ..models.model_dir import load_model, missing_parts, read_prompt_spec, resolve, save_model_dir
from ..train.experiment import (DTYPES, check_output, checkpointed_steps, config_mesh, gather_whole,
                                stage_checkpoints, stage_data, stage_intervals, tokenizer_from, write_report)
from ..train.loop import CheckpointMismatchError, LoopConfig
from ..train.optim import OptimConfig, make_optimizer, schedule
from ..workdir import claim
from .loop import run_grpo
from ..data.answers import TokenBytes
from .config import GRPOConfig
from .step import GRPOStepConfig

log = logging.getLogger(__name__)
STAGE = "grpo"


def _model_folder(path: str, what: str) -> str:
    folder = resolve(path)
    missing = missing_parts(folder, tokenizer=False, prompt=what == "init")
    if missing:
        raise CheckpointError(f"{what} {folder}: not a complete model folder; it lacks {', '.join(missing)}")
    return folder


def reference_params(model, path: str):
    """The parameters of the model folder `path` as the frozen reference of `model`; a folder whose shapes differ
    (another size or vocabulary) is a clear error naming the first difference."""
    ref = load_model(path)
    want = nnx.to_flat_state(nnx.state(model, nnx.Param))
    got = dict(nnx.to_flat_state(nnx.state(ref, nnx.Param)))
    for key, var in want:
        other = got.get(key)
        name = "/".join(map(str, key))
        if other is None:
            raise CheckpointMismatchError(f"reference {path}: has no parameter {name}; it is not the policy's model")
        if tuple(other.value.shape) != tuple(var.value.shape):
            raise CheckpointMismatchError(f"reference {path}: {name} has shape {tuple(other.value.shape)}, the policy's "
                                          f"is {tuple(var.value.shape)}; the reference must be the same model")
    return nnx.state(ref, nnx.Param)


def run_grpo_experiment(cfg: ml_collections.ConfigDict, *, progress: bool = True, resume: bool = False,
                        source: str = "config", workdir_claim=None) -> dict:
    """Run a GRPO config; returns a report (also `<workdir>/report.json`). The workdir is locked and remembers the
    config that started it (see `train.experiment.run_experiment`: the same rules)."""
    check_grpo_config(cfg, source)
    if workdir_claim is not None:
        return _run(cfg, workdir_claim, progress=progress, resume=resume)
    lock = claim(cfg.workdir, plain_config(cfg), resume=resume, command="grpo", differences=grpo_config_differences)
    try:
        return _run(cfg, lock, progress=progress, resume=resume)
    finally:
        lock.release()


@dataclasses.dataclass(frozen=True)
class GRPOStage:
    """A GRPO stage, typed: the `rsground grpo` config's training fields, or an experiment's `task="grpo"` stage
    (`train.experiment.STAGES`), which starts from the model the earlier stages left and takes that model, as it
    was at the stage's start, as the KL reference."""

    name: str
    steps: int
    batch_size: int  # completions per micro-batch: prompts x grpo.num_generations
    lr: float
    max_prompt_length: int
    grpo: GRPOConfig
    rewards: tuple[tuple[str, float], ...]
    reward_options: tuple = ()
    coherence: bool = False
    coherence_kind: str = "target_pairwise_iou"
    coherence_min_weight: float = 0.5
    warmup_steps: int = 0
    end_lr_fraction: float = 0.0
    freeze_vision: bool = False
    clip_norm: float | None = 1.0
    accum_steps: int = 1
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    answer_style: str = "cot"  # the SFT targets' style (`data.pipeline.ANSWER_STYLES`), for grpo.sft_coef's anchor

    @classmethod
    def from_config(cls, st, cfg, index: int) -> "GRPOStage":
        """From a stage dict `st` of experiment `cfg` (the GRPO command passes its config as both)."""
        coherence = st.get("coherence") or ml_collections.ConfigDict({"enabled": False})
        options = (st.get("reward_options") or ml_collections.ConfigDict()).to_dict()
        intervals = stage_intervals(st, cfg, log_every=10, checkpoint_every=50, keep_checkpoints=3)
        return cls(name=st.get("name", STAGE), steps=st.steps, batch_size=st.batch_size, lr=float(st.lr),
                   max_prompt_length=st.max_prompt_length, grpo=grpo_settings(st),
                   rewards=tuple((k, float(v)) for k, v in st.rewards.items()),
                   reward_options=tuple((k, tuple(sorted(v.items()))) for k, v in options.items()),
                   coherence=bool(coherence.enabled), coherence_kind=coherence.get("kind", "target_pairwise_iou"),
                   coherence_min_weight=float(coherence.get("min_weight", 0.5)),
                   warmup_steps=int(st.get("warmup_steps", 0)), end_lr_fraction=float(st.get("end_lr_fraction", 0.0)),
                   freeze_vision=bool(st.get("freeze_vision", False)), clip_norm=st.get("clip_norm", 1.0),
                   accum_steps=int(st.get("accum_steps", 1)), seed=int(st.get("seed", cfg.seed + index)),
                   answer_style=cfg.get("answer_style", "cot"), **intervals)

    @property
    def mesh_rows(self) -> tuple[int, str]:
        """The rows of a micro-batch that a mesh splits over data x fsdp (its prompts), and what they are."""
        return prompts_per_micro_batch(self), "prompts per micro-batch (batch_size / grpo.num_generations)"

    def run(self, ctx) -> dict:
        """Run inside an experiment (`train.experiment.StageRun`): the report row."""
        g = self.grpo
        ref = jax.tree.map(jnp.copy, nnx.state(ctx.model, nnx.Param)) if g.beta > 0 else None
        ts = time.time()
        res = train_grpo(ctx.model, ref, ctx.train, ctx.tok, ctx.proc, ctx.template, self, ctx.workdir,
                         resume=ctx.resume, progress=ctx.progress, run_info={"reference": f"stage {self.name} start"},
                         mesh=ctx.mesh, checkpoint_dir=stage_checkpoints(ctx.cfg, self.name))
        return {"stage": self.name, "task": "grpo", "steps": self.steps, "seconds": round(time.time() - ts, 1),
                "last": res.history[-1] if res.history else None, "preempted": res.preempted}


def train_grpo(model, ref, records, tok, proc, template, stage: GRPOStage, workdir: str, *, resume: bool,
               progress: bool, run_info: dict, planned=None, mesh=None, checkpoint_dir: str | None = None):
    """GRPO of `model` (updated in place) on `records` under `workdir`; returns the loop's result. `planned` is a
    pipeline already built from the records (the command plans it before taking the workdir); `mesh` as
    `run_grpo` takes it."""
    g = stage.grpo
    pl = planned if planned is not None else grpo_pipeline(records, tok, proc, template, stage)
    sp = special_token_ids(tok)
    opt = OptimConfig(lr=stage.lr, warmup_steps=stage.warmup_steps, total_steps=stage.steps,
                      end_lr_fraction=stage.end_lr_fraction, freeze_vision=stage.freeze_vision,
                      clip_norm=stage.clip_norm)
    token_bytes = TokenBytes.from_tokenizer(tok, model.config.text.vocab_size)
    box_open, box_close = token_bytes.bracket_ids() if g.box_temperature is not None else ((), ())
    step_cfg = GRPOStepConfig(
        grpo=g, rewards=stage.rewards, reward_options=stage.reward_options, coherence=stage.coherence,
        coherence_kind=stage.coherence_kind, coherence_min_weight=stage.coherence_min_weight, eos_ids=(sp.im_end,),
        pad_id=sp.pad, freeze_vision=opt.freeze_vision, box_open_ids=box_open, box_close_ids=box_close)
    tables = token_bytes.tables()
    loop = LoopConfig(total_steps=stage.steps, accum_steps=stage.accum_steps, progress=progress,
                      log_every=stage.log_every, checkpoint_every=stage.checkpoint_every,
                      keep_checkpoints=stage.keep_checkpoints, checkpoint_dir=checkpoint_dir)
    return run_grpo(model, ref, pl, make_optimizer(opt), step_cfg, tables, loop, workdir, seed=stage.seed,
                    resume=resume, schedule=schedule(opt), run_info=run_info, mesh=mesh)


def grpo_pipeline(records, tok, proc, template, stage: GRPOStage):
    """The stage's prompt pipeline: prompts x G = batch_size completions a micro-batch (dynamic sampling draws
    more), with each prompt's SFT target when the SFT anchor is on; a prompt longer than max_prompt_length is
    refused here, before any training."""
    hosts = jax.process_count()  # each host reads its shard of the prompts and feeds its rows
    return rl_pipeline(records, tok, proc, PipelineConfig(
        batch_size=prompts_per_micro_batch(stage) // hosts, length_buckets=(stage.max_prompt_length,), seed=stage.seed,
        shard_index=jax.process_index(), shard_count=hosts, rl_targets=stage.grpo.sft_coef > 0,
        answer_style=stage.answer_style, cot_seed=stage.seed), template=template)


def prompts_per_micro_batch(stage: GRPOStage) -> int:
    """Prompts drawn for one micro-batch: batch_size / G groups, times the oversampling of dynamic sampling."""
    return stage.batch_size // stage.grpo.num_generations * stage.grpo.prompts_drawn_per_kept


def _mesh(cfg, stage: GRPOStage):
    """The config's mesh (None: one device), checked against the devices, the hosts and the prompts."""
    mesh = config_mesh(cfg)
    if mesh is not None:
        from ..sharding import check_batch_splits

        rows, what = stage.mesh_rows
        check_batch_splits(rows, mesh, what)
    return mesh


def _run(cfg, lock, *, progress: bool, resume: bool) -> dict:
    stage = GRPOStage.from_config(cfg, cfg, 0)
    g = stage.grpo
    init = _model_folder(cfg.init, "init")
    ref_dir = _model_folder(cfg.reference, "reference") if cfg.get("reference") else init
    def steps_left() -> str:
        done = checkpointed_steps(os.path.join(cfg.workdir, STAGE), stage_checkpoints(cfg, STAGE))
        return f"step {done} of {cfg.steps}" if done < cfg.steps else ""

    export_done = check_output(cfg.output, cfg.workdir, resume, steps_left)
    mesh = _mesh(cfg, stage)
    spec = read_prompt_spec(init)
    template, proc, _ = prompt_from_spec(spec)
    stage = dataclasses.replace(stage, answer_style=spec["answer_style"])  # the anchor's targets: as init learned
    tok = tokenizer_from(cfg.get("tokenizer") or init)
    model = load_model(init, compute_dtype=DTYPES[cfg.get("compute_dtype", "float32")], remat=cfg.get("remat", "none"))
    model.text.attention = cfg.get("attention", "xla")
    ref = None
    if g.beta > 0:
        ref = reference_params(model, ref_dir) if ref_dir != init else jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))

    data = ml_collections.ConfigDict(cfg.data.to_dict())
    data.name = STAGE
    if data.get("synth") is not None:
        lock.commit()  # the synthetic set is written into the workdir
    train, val = stage_data(cfg, data, 0)
    if cfg.data.get("prompts"):
        train = list(train)[: cfg.data.prompts]
    pl = grpo_pipeline(train, tok, proc, template, stage)  # planned before the workdir is taken
    lock.commit()
    t0 = time.time()
    res = train_grpo(model, ref, train, tok, proc, template, stage, os.path.join(cfg.workdir, STAGE),
                     resume=resume, progress=progress, planned=pl, mesh=mesh,
                     checkpoint_dir=stage_checkpoints(cfg, STAGE),
                     run_info={"init": os.path.abspath(init), "reference": os.path.abspath(ref_dir)})
    report = {"config": plain_config(cfg), "workdir": os.path.abspath(cfg.workdir),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "seconds": round(time.time() - t0, 1),
              "steps": cfg.steps, "prompts": len(pl.plan), "preempted": res.preempted,
              "last": res.history[-1] if res.history else None}
    if res.preempted:
        return report
    gather_whole(model)
    if cfg.eval_images:
        ev = evaluate_over_hosts(model, val[: cfg.eval_images], tok, proc, template=template, batch_size=32,
                                 max_new_tokens=g.max_new_tokens, length_buckets=(cfg.max_prompt_length,))
        report["val"] = ev.metrics
        if jax.process_index() == 0:
            write_predictions(os.path.join(cfg.workdir, STAGE, "val_predictions.jsonl"), ev.predictions)
    print(json.dumps({k: report[k] for k in ("steps", "seconds", "last", "val") if k in report}), flush=True)
    leader = write_report(report, cfg.workdir)
    if export_done:
        print(f"{cfg.output} already holds this run's export", flush=True)
    elif cfg.output and leader:
        save_model_dir(model, cfg.output, tokenizer=tok, recipe=report,
                       prompt_spec=prompt_spec(template, spec["max_pixels"], spec["answer_style"]))
    report["model"] = model
    return report
