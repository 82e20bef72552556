"""An SFT experiment from a config: model, tokenizer, data per stage, the loop, validation, export.

Config fields (see `configs/`):
  seed, workdir, output (HF directory written at the end, or "" for none)
  init: "tiny" (random tiny preset sized to the tokenizer), "base" (the packaged base model), or an HF path
  tiny_options: optional arguments of the tiny preset for init="tiny" (e.g. rope_theta)
  compute_dtype ("float32" | "bfloat16", parameters stay float32), remat ("none" | "full" | "dots")
  tokenizer: "small" (packaged), "qwen2.5", a tokenizer directory, or "" for the `init` checkpoint's own
  max_pixels, template_system ("" for none), template_question, answer_style ("cot" | "brief_cot" | "box"), length_bucket
  eval_images: validation records scored after each stage (0 to skip)
  stages: list of {name, steps, batch_size, lr, warmup_steps, end_lr_fraction (cosine floor; 1 = constant),
          freeze_vision, vision_lr_scale (the tower's rate as a fraction of lr), accum_steps, replay (names of
          earlier stages whose training records are mixed into this stage's) and either
          synth (a synthetic preset + SynthConfig overrides) with num_images, data_root (+ data_format), or
          data_from (the name of an earlier stage whose dataset, train and val, this stage uses as well);
          optional seed (the stage's batch order; default: the config's seed + the stage's index),
          leadin_fraction (answer_style "box": the fraction of answers that start with a lead-in sentence,
          `chat.box_answer`), question_variants (training-only phrasings of the question, one per record: a name of
          QUESTION_VARIANTS such as "box", or a list), length_buckets (default [length_bucket]) and
          data_seed (the synthetic set's seed; default: the config's seed + the stage's index)}
A stage's `task` picks its kind from `STAGES`, each a typed config (`from_config`) that runs itself:
  "sft" (the default): the fields above;
  "vision": pretrains the vision tower alone on its scenes' dense targets (`vision_pretrain`; fields steps,
          batch_size in images, lr, warmup_steps, end_lr_fraction, box_weight);
  "grpo": GRPO from the model the earlier stages left, which is also its KL reference (`rl.GRPOStage`; the
          `rsground grpo` fields: grpo, rewards, reward_options, coherence, max_prompt_length, clip_norm, ...).
Each stage trains under `<workdir>/<stage name>` with the shared loop; `resume=True` continues.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..configs import ConfigError as ExperimentConfigError
from ..configs import check_experiment, config_differences, plain_config, synth_config
from ..data import load_split
from ..data.chat import ChatTemplate, box_question_variants, prompt_spec
from ..data.pipeline import PipelineConfig, sft_pipeline
from ..data.synthetic import generate_dataset
from ..data.tokenizer import load_small_tokenizer, load_tokenizer, special_token_ids
from ..eval.evaluate import evaluate_over_hosts, write_predictions
from ..fileio import atomic_write_json, check_destination
from ..models import ImageProcessor, Qwen25VL, load_pretrained
from ..models.model_dir import BASE_MODEL_DIR, RECIPE, save_model_dir
from ..models.qwen2_5_vl import CheckpointError, ConfigError, Qwen25VLConfig, tiny
from ..stopping import stop_requests
from ..workdir import claim
from .loop import CheckpointMismatchError, LoopConfig, WorkdirInUseError, checkpoint_location, run_sft
from .optim import OptimConfig, make_optimizer, schedule
from .vision_pretrain import VisionPretrainConfig, pretrain_vision, scenes_from_records

log = logging.getLogger(__name__)


def tokenizer_from(name: str):
    return load_small_tokenizer() if name == "small" else load_tokenizer(name)


def _tokenizer_of_init(init: str) -> str:
    if init == "base":
        return str(BASE_MODEL_DIR)
    if init == "tiny":
        raise ValueError("init='tiny' has no tokenizer of its own: set tokenizer (e.g. 'small')")
    return init


# tiny() arguments that come from the tokenizer, not from tiny_options.
TINY_FIXED = {"vocab_size", "image_token_id", "vision_start_token_id", "vision_end_token_id", "eos_token_id",
              "bos_token_id", "video_token_id", "pad_token_id"}


def tiny_for(tokenizer, **options) -> Qwen25VLConfig:
    """The tiny preset with the tokenizer's vocabulary and special ids; `options` go to `tiny()`
    (text_layers, vision_depth, rope_theta, mrope_section, tie_word_embeddings)."""
    known = set(inspect.signature(tiny).parameters) - TINY_FIXED
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown tiny() option(s) {unknown}; known: {sorted(known)}")
    sp = special_token_ids(tokenizer)
    return tiny(vocab_size=sp.vocab_size, image_token_id=sp.image_pad, vision_start_token_id=sp.vision_start,
                vision_end_token_id=sp.vision_end, eos_token_id=sp.im_end, bos_token_id=sp.pad,
                video_token_id=sp.video_pad, pad_token_id=sp.pad, **options)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def init_model(init: str, tokenizer, seed: int, compute_dtype: str = "float32", remat: str = "none",
               tiny_options: dict | None = None) -> Qwen25VL:
    """float32 master weights; activations in `compute_dtype`. `tiny_options` shape the `init="tiny"` model."""
    if compute_dtype not in DTYPES:
        raise ValueError(f"compute_dtype must be one of {sorted(DTYPES)}, got {compute_dtype!r}")
    if init == "tiny":
        return Qwen25VL(tiny_for(tokenizer, **(tiny_options or {})), rngs=nnx.Rngs(seed), dtype=DTYPES[compute_dtype],
                        remat=remat)
    path = BASE_MODEL_DIR if init == "base" else Path(init)
    if init == "base" and not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: the packaged base model is missing (train it with "
                                f"`python tools/train_base.py --config configs/base_pretrain.py`)")
    model = load_pretrained(path, jnp.float32, compute_dtype=DTYPES[compute_dtype], remat=remat)
    vocab = special_token_ids(tokenizer).vocab_size
    if model.config.text.vocab_size < vocab:
        raise CheckpointError(f"{path}: model vocabulary ({model.config.text.vocab_size}) is smaller than the "
                              f"tokenizer's ({vocab})")
    return model


def template_from(cfg) -> ChatTemplate:
    return ChatTemplate(system=cfg.template_system or None, question=cfg.template_question)


def stage_data(cfg, stage, index: int):
    """(train records, val records) of a stage: a generated synthetic set or a dataset on disk. A synthetic set
    is written whole or not at all (`generate_dataset`); SIGTERM or Ctrl-C while it is written keeps the images
    so far for the resumed run and raises `Stopped`."""
    if "synth" in stage and stage.synth is not None:
        root = os.path.join(cfg.workdir, f"data_{stage.name}")

        def generate():
            if not os.path.isdir(os.path.join(root, "Annotations")):
                seed = int(stage.get("data_seed", cfg.seed + index))
                with stop_requests() as stop:
                    generate_dataset(root, stage.num_images, seed=seed, config=synth_config(stage.synth.to_dict()),
                                     stop=stop)

        if jax.process_count() == 1:
            generate()
        else:  # process 0 first; hosts that do not share its disk (a pod's workers) then write the same set
            from jax.experimental import multihost_utils

            if jax.process_index() == 0:
                generate()
            multihost_utils.sync_global_devices(f"data_{stage.name}")
            generate()
            multihost_utils.sync_global_devices(f"data_{stage.name}_everywhere")
        fmt = "dior_rsvg"
    else:
        root, fmt = stage.data_root, stage.get("data_format", "auto")
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: dataset folder does not exist (stage {stage.name})")
    return load_split(root, "train", format=fmt), load_split(root, "val", format=fmt)


# Named sets of training-only question phrasings, for a stage's `question_variants`.
QUESTION_VARIANTS = {"box": box_question_variants}


def stage_template(template: ChatTemplate, stage) -> ChatTemplate:
    """The config's template with the stage's `question_variants`: a name in QUESTION_VARIANTS or a list of
    questions (each with "{expression}"). The stage's validation and the exported prompt use `question`."""
    v = stage.get("question_variants", None)
    if not v:
        return template
    if isinstance(v, str):
        if v not in QUESTION_VARIANTS:
            raise ExperimentConfigError(f"stage {stage.name}: question_variants={v!r} is not one of "
                                        f"{sorted(QUESTION_VARIANTS)} (or give a list of questions)")
        v = QUESTION_VARIANTS[v]()
    try:
        return dataclasses.replace(template, question_variants=tuple(v))
    except ValueError as e:
        raise ExperimentConfigError(f"stage {stage.name}: question_variants: {e}") from None


def stage_records(cfg, index: int):
    """(train records, val records) of stage `index`: its own dataset, or with `data_from` an earlier stage's
    (the same scenes under another recipe, e.g. the vision tower unfrozen), plus the training records of the
    stages named in its `replay` list (rehearsal against forgetting an earlier stage's skill; validation
    stays the stage's own)."""
    stages = list(cfg.stages)
    names = [s.name for s in stages]

    def earlier(i, name, field):
        if name not in names[:i]:
            raise ValueError(f"stage {stages[i].name}: {field} names {name!r}, which is not an earlier stage ({names[:i]})")
        return names.index(name)

    def own(i):  # a stage's dataset, following data_from; without any replay
        st = stages[i]
        source = st.get("data_from", None)
        if not source:
            return stage_data(cfg, st, i)
        if st.get("synth", None) is not None or st.get("data_root", None):
            raise ValueError(f"stage {st.name}: data_from={source!r} and its own synth/data_root: give one of them")
        return own(earlier(i, source, "data_from"))

    train, val = own(index)
    for name in stages[index].get("replay", None) or ():
        train = list(train) + list(own(earlier(index, name, "replay"))[0])
    return train, val


def run_experiment(cfg, *, progress: bool = True, resume: bool = False, source: str = "config",
                   workdir_claim=None) -> dict:
    """Run every stage of an SFT config; returns a report (also written to `<workdir>/report.json`).

    The config is checked first (`configs.check_experiment`; `source` names it in errors). The workdir is
    locked for this run and remembers the config that started it (`workdir.claim`; pass `workdir_claim` when
    the caller holds it already): a fresh run refuses a workdir that holds an earlier run, and `resume`
    continues each stage from its latest checkpoint (a finished stage runs no more steps) only with the same
    config, up to `configs.RESUMABLE_KEYS`. `output` must be missing or empty, or hold this workdir's own
    earlier export when a finished run is resumed; the export is a complete model folder (weights, tokenizer,
    rsground_prompt.json, RECIPE.json) that appears in one rename.
    """
    check_experiment(cfg, source)
    if workdir_claim is not None:
        return _run_stages(cfg, workdir_claim, progress=progress, resume=resume, source=source)
    lock = claim(cfg.workdir, plain_config(cfg), resume=resume, command="sft", differences=config_differences)
    try:
        return _run_stages(cfg, lock, progress=progress, resume=resume, source=source)
    finally:
        lock.release()


@dataclasses.dataclass
class StageRun:
    """What a stage runs on: the experiment's model (trained in place, stage after stage), tokenizer, image
    processor and template, the stage's records, its folder `<workdir>/<stage name>`, resume and progress."""

    cfg: Any
    model: Any
    tok: Any
    proc: Any
    template: ChatTemplate
    train: list
    val: list
    workdir: str
    resume: bool
    progress: bool
    mesh: Any = None  # a jax Mesh (the config's `mesh`) or None: one device


def stage_intervals(st, cfg, **defaults: int) -> dict[str, int]:
    """The loop's intervals of a stage: its own value, else the experiment's, else the stage kind's default."""
    return {k: int(st.get(k, cfg.get(k, d))) for k, d in defaults.items()}


@dataclasses.dataclass(frozen=True)
class SFTStage:
    """`task="sft"` (the default): supervised fine-tuning with the shared loop, validation after it."""

    name: str
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    seed: int
    length_buckets: tuple[int, ...]
    end_lr_fraction: float = 0.0
    freeze_vision: bool = False
    vision_lr_scale: float = 1.0
    accum_steps: int = 1
    leadin_fraction: float = 0.0
    log_every: int = 50
    checkpoint_every: int = 250
    keep_checkpoints: int = 3

    @classmethod
    def from_config(cls, st, cfg, index: int) -> "SFTStage":
        intervals = stage_intervals(st, cfg, log_every=50, checkpoint_every=250, keep_checkpoints=3)
        return cls(name=st.name, steps=st.steps, batch_size=st.batch_size, lr=float(st.lr), warmup_steps=st.warmup_steps,
                   seed=int(st.get("seed", cfg.seed + index)),
                   length_buckets=tuple(st.get("length_buckets", None) or (cfg.length_bucket,)),
                   end_lr_fraction=float(st.get("end_lr_fraction", 0.0)), freeze_vision=bool(st.get("freeze_vision", False)),
                   vision_lr_scale=float(st.get("vision_lr_scale", 1.0)), accum_steps=int(st.get("accum_steps", 1)),
                   leadin_fraction=float(st.get("leadin_fraction", 0.0)), **intervals)

    @property
    def mesh_rows(self) -> tuple[int, str]:
        """The rows of a micro-batch that a mesh splits over data x fsdp, and what the config calls them."""
        return self.batch_size, "batch_size"

    def run(self, ctx: StageRun) -> dict:
        st = next(x for x in ctx.cfg.stages if x.name == self.name)
        hosts = jax.process_count()  # each host reads its shard and feeds its rows of every batch
        pl = sft_pipeline(ctx.train, ctx.tok, ctx.proc, PipelineConfig(
            batch_size=self.batch_size // hosts, length_buckets=self.length_buckets, seed=self.seed,
            answer_style=ctx.cfg.answer_style, leadin_fraction=self.leadin_fraction,
            shard_index=jax.process_index(), shard_count=hosts),
            template=stage_template(ctx.template, st))
        opt = OptimConfig(lr=self.lr, warmup_steps=self.warmup_steps, total_steps=self.steps,
                          end_lr_fraction=self.end_lr_fraction, freeze_vision=self.freeze_vision,
                          vision_lr_scale=self.vision_lr_scale)
        ts = time.time()
        res = run_sft(ctx.model, pl, make_optimizer(opt),
                      LoopConfig(total_steps=self.steps, accum_steps=self.accum_steps, progress=ctx.progress,
                                 log_every=self.log_every, checkpoint_every=self.checkpoint_every,
                                 keep_checkpoints=self.keep_checkpoints,
                                 checkpoint_dir=stage_checkpoints(ctx.cfg, self.name)),
                      ctx.workdir, resume=ctx.resume, freeze_vision=opt.freeze_vision, schedule=schedule(opt),
                      mesh=ctx.mesh)
        return {"stage": self.name, "steps": self.steps, "seconds": round(time.time() - ts, 1),
                "final_loss": res.history[-1]["loss"] if res.history else None, "preempted": res.preempted}


@dataclasses.dataclass(frozen=True)
class VisionStage:
    """`task="vision"`: dense pretraining of the vision tower alone on the stage's scenes (`vision_stage`)."""

    name: str
    steps: int
    batch_size: int  # images
    lr: float
    seed: int
    warmup_steps: int | None = None  # None: VisionPretrainConfig's own default
    end_lr_fraction: float | None = None
    box_weight: float | None = None
    validates = False  # its own validation (the tower's dense targets) is in its row

    @classmethod
    def from_config(cls, st, cfg, index: int) -> "VisionStage":
        return cls(name=st.name, steps=st.steps, batch_size=st.batch_size, lr=float(st.lr),
                   seed=int(st.get("seed", cfg.seed + index)),
                   **{f: st.get(f) for f in ("warmup_steps", "end_lr_fraction", "box_weight")})

    def run(self, ctx: StageRun) -> dict:
        return vision_stage(self, ctx.model, ctx.train, ctx.proc, ctx.workdir, resume=ctx.resume, seed=self.seed,
                            progress=ctx.progress)


# The stage kinds an experiment config's `task` names, each a typed config with `from_config(stage, cfg, index)`
# and `run(StageRun) -> report row`. A kind defined above this package's training layer is named by its module
# path (resolved when a config uses it), so `train` does not import `rl`, which imports `train`.
STAGES: dict[str, Any] = {"sft": SFTStage, "vision": VisionStage, "grpo": "rsground_jax.rl.experiment:GRPOStage"}


def stage_kind(task: str):
    """The stage config class of `task` (a key of STAGES)."""
    kind = STAGES[task]
    if isinstance(kind, str):
        module, _, name = kind.partition(":")
        kind = getattr(importlib.import_module(module), name)
    return kind


def _run_stages(cfg, lock, *, progress: bool, resume: bool, source: str) -> dict:
    export_done = check_output(cfg.output, cfg.workdir, resume, lambda: _steps_left(cfg))
    tok = tokenizer_from(cfg.tokenizer or _tokenizer_of_init(cfg.init))
    tiny_options = cfg.get("tiny_options")
    try:
        model = init_model(cfg.init, tok, cfg.seed, cfg.get("compute_dtype", "float32"), cfg.get("remat", "none"),
                           tiny_options.to_dict() if tiny_options is not None else None)
    except ConfigError as e:
        if cfg.init != "tiny":
            raise
        raise ExperimentConfigError(f"{source}: tiny_options {tiny_options.to_dict() if tiny_options else {}}: {e}") \
            from None
    model.text.attention = cfg.get("attention", "xla")
    proc = ImageProcessor(max_pixels=cfg.max_pixels)
    template = template_from(cfg)
    stages = [stage_kind(st.get("task", "sft")).from_config(st, cfg, i) for i, st in enumerate(cfg.stages)]
    mesh = config_mesh(cfg, source)
    if mesh is not None:
        from ..sharding import check_batch_splits

        for st in stages:
            rows, what = st.mesh_rows
            check_batch_splits(rows, mesh, f"{source}: stage {st.name}'s {what}")
    lock.commit()  # the checks passed: the workdir is this run's
    t0 = time.time()
    report = {"config": plain_config(cfg), "workdir": os.path.abspath(cfg.workdir),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "stages": []}
    for i, stage in enumerate(stages):
        train, val = stage_records(cfg, i)
        row = stage.run(StageRun(cfg, model, tok, proc, template, train, val, os.path.join(cfg.workdir, stage.name),
                                 resume, progress, mesh))
        if i == len(stages) - 1 and not row.get("preempted"):
            gather_whole(model)
        if cfg.eval_images and getattr(stage, "validates", True) and not row.get("preempted"):
            ev = evaluate_over_hosts(model, val[: cfg.eval_images], tok, proc, template=template, batch_size=32,
                                     max_new_tokens=cfg.get("max_new_tokens", 24), length_buckets=(cfg.length_bucket,))
            row["val"] = ev.metrics
            if jax.process_index() == 0:
                write_predictions(os.path.join(cfg.workdir, stage.name, "val_predictions.jsonl"), ev.predictions)
        report["stages"].append(row)
        log.info("stage %s: %s", stage.name, json.dumps(row, default=str))
        print(json.dumps(row, default=str), flush=True)
        if row.get("preempted"):
            report["preempted"] = True
            return report
    report["wall_seconds"] = round(time.time() - t0, 1)
    leader = write_report(report, cfg.workdir)
    if export_done:
        print(f"{cfg.output} already holds this run's export", flush=True)
    elif cfg.output and leader:
        save_model_dir(model, cfg.output, tokenizer=tok, recipe=report,
                       prompt_spec=prompt_spec(template, cfg.max_pixels, cfg.answer_style))
    report["model"] = model
    return report


def config_mesh(cfg, source: str = "config"):
    """The config's `mesh` over this job's devices (None: one device), with what a multi-process run needs: a
    mesh, and each host holding whole batch shards."""
    multi = jax.process_count() > 1
    if multi and cfg.get("mesh") is None:
        raise ExperimentConfigError(f"{source}: a multi-process run needs a mesh over every host's devices, e.g. "
                                    "mesh.data=-1")
    if cfg.get("mesh") is None:
        return None
    from ..sharding import check_process_layout, make_mesh

    mesh = make_mesh(cfg.mesh.to_dict())  # MeshError: sizes that do not fit this job's devices
    if multi:
        check_process_layout(mesh)
    return mesh


def gather_whole(model) -> None:
    """A model split over hosts made whole on every host (a collective), once, after its last training: the final
    evaluation (`evaluate_over_hosts` then needs no gather of its own) and the export read this copy."""
    if jax.process_count() > 1:
        from ..distributed import gather_to_host

        nnx.update(model, gather_to_host(nnx.state(model, nnx.Param)))


def write_report(report: dict, workdir: str) -> bool:
    """`<workdir>/report.json`, written by process 0. Returns True on process 0, which also writes the export."""
    if jax.process_index() != 0:
        return False
    atomic_write_json(os.path.join(workdir, "report.json"), report, indent=2, default=str)
    return True


def check_output(output: str, workdir: str, resume: bool, steps_left) -> bool:
    """Before any work: True when `output` holds this workdir's export and the resumed run has nothing left
    to train (it ends without exporting again), False when `output` is missing or empty; otherwise an error, so
    that a run never fails at its export after the training. `steps_left() -> str` says what is left to train
    ('' for nothing), e.g. 'stage: step N of M'."""
    if not output:
        return False
    try:
        own = json.loads((Path(output) / RECIPE).read_text())["workdir"] == os.path.abspath(workdir)
    except (OSError, ValueError, KeyError, TypeError):
        own = False
    if own and resume:
        left = steps_left()
        if left:
            raise WorkdirInUseError(f"{output}: holds this workdir's export from before, and the resumed run "
                                    f"trains on ({left}); set output to a new folder")
        return True
    check_destination(output, "output")
    return False


def checkpointed_steps(folder, checkpoint_dir: str | None = None) -> int:
    """The latest checkpoint's step of a loop run in `folder` (its checkpoints in `<folder>/checkpoints`, or
    `checkpoint_dir`), 0 when there is none."""
    ckpts = checkpoint_location(str(folder), checkpoint_dir)
    return max((int(c.name) for c in ckpts.iterdir() if c.name.isdigit()), default=0) if ckpts.is_dir() else 0


def stage_checkpoints(cfg, stage_name: str) -> str | None:
    """A stage's checkpoint folder when the config's `checkpoint_dir` puts them apart from the workdir (e.g. on
    gs:// for a pod), else None (`<workdir>/<stage>/checkpoints`)."""
    root = cfg.get("checkpoint_dir") or ""
    return f"{root.rstrip('/')}/{stage_name}" if root else None


def _steps_left(cfg) -> str:
    """The training-loop stages (sft, grpo) whose latest checkpoint is short of their steps, as 'stage: step N of M' ('' if none)."""
    left = []
    for st in cfg.stages:
        if st.get("task", "sft") == "vision":  # its finished tower file, not a step count, says it is done
            continue
        done = checkpointed_steps(Path(cfg.workdir) / st.name, stage_checkpoints(cfg, st.name))
        if done < st.steps:
            left.append(f"{st.name}: step {done} of {st.steps}")
    return ", ".join(left)


TOWER_FILE = "vision_tower.npz"


def vision_stage(st: VisionStage, model, train, proc, workdir: str, *, resume: bool, seed: int,
                 progress: bool = False) -> dict:
    """A `task="vision"` stage: dense pretraining of the vision tower on the stage's training scenes
    (`vision_pretrain`, on the shared loop: checkpoints under `<workdir>/checkpoints`, a stopped stage resumes
    where it stopped), the finished tower saved to `<workdir>/vision_tower.npz`; with `resume`, a saved tower
    is loaded instead of training again. Stage fields: steps, batch_size (images), lr, warmup_steps,
    end_lr_fraction, box_weight."""
    path = os.path.join(workdir, TOWER_FILE)
    if os.path.isfile(path):
        if not resume:
            raise WorkdirInUseError(f"{workdir}: holds the vision tower of an earlier run; resume it (--resume) "
                                    "or choose another workdir")
        load_tower(model, path)
        return {"stage": st.name, "task": "vision", "steps": st.steps, "resumed": True}
    scenes = scenes_from_records(train)
    categories = sorted({o.category for s in scenes for o in s.objects})
    # The optional fields fall back on VisionPretrainConfig's own defaults, the one place they are written.
    base = VisionPretrainConfig()
    optional = {f: type(getattr(base, f))(getattr(st, f)) for f in ("warmup_steps", "end_lr_fraction", "box_weight")
                if getattr(st, f) is not None}
    vcfg = dataclasses.replace(base, steps=st.steps, batch_size=st.batch_size, lr=st.lr, seed=seed, **optional)
    ts = time.time()
    rep = pretrain_vision(model, scenes, proc, categories, vcfg, log=log.info, workdir=workdir, resume=resume,
                          progress=progress)
    row = {"stage": st.name, "task": "vision", "steps": st.steps, "seconds": round(time.time() - ts, 1),
           "final_loss": rep["history"][-1]["loss"] if rep["history"] else None, "val": rep["val"],
           "images": rep["train_images"], "categories": rep["categories"], "preempted": rep["preempted"]}
    if not rep["preempted"]:
        save_tower(model, path)
    return row


def _tower_arrays(model) -> dict:
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model.vision, nnx.Param)))[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def save_tower(model, path) -> None:
    """The vision tower's parameters, written atomically (a partial file never has the final name)."""
    tmp = f"{path}.partial.npz"
    np.savez(tmp, **_tower_arrays(model))
    os.replace(tmp, path)


def load_tower(model, path) -> None:
    """Load `save_tower`'s file into `model.vision`; a file of another tower shape is a clear error."""
    state = nnx.to_pure_dict(nnx.state(model.vision, nnx.Param))
    paths, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = [jax.tree_util.keystr(k) for k, _ in paths]
    with np.load(path) as f:
        got = {k: f[k] for k in f.files}
    if set(got) != set(names) or any(got[n].shape != v.shape for n, (_, v) in zip(names, paths)):
        raise CheckpointMismatchError(f"{path}: the saved vision tower does not match this model's tower (other "
                                      "shapes or names)")
    leaves = [jnp.asarray(got[n], dtype=v.dtype) for n, (_, v) in zip(names, paths)]
    nnx.update(model.vision, jax.tree_util.tree_unflatten(treedef, leaves))

