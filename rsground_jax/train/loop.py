"""The training loop of every trainer (`run_loop`; `run_sft` and `rl.run_grpo` use it): batches in, jitted
steps, metrics out, Orbax checkpoints, exact resume, preemption.

A checkpoint (Orbax `CheckpointManager`, one directory per step under `<workdir>/checkpoints`) holds the
whole `TrainState` (parameters, optimizer state, step and skip counters) and the data iterator's position.
Orbax writes each checkpoint into a temporary directory and renames it when complete, so an interrupted save
never looks like a checkpoint. Saves are asynchronous: the step loop goes on while files are written.

`resume=True` restores the latest checkpoint and the iterator position, so a stopped-and-resumed run sees
exactly the batches, and produces exactly the losses, of an uninterrupted one; the metrics rows the stopped run
wrote after that checkpoint are dropped (`MetricsWriter`). SIGTERM (how TPU VMs are preempted) or Ctrl-C
finishes the current step, saves, waits for the save, and returns with `preempted=True`; a second Ctrl-C
stops at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from ..distributed import all_agree, allgather_json, is_multiprocess
from ..errors import UserError
from ..fileio import atomic_write_text
from ..stopping import stop_requests
from ..workdir import WorkdirInUseError
from ..models.qwen2_5_vl.inputs import add_vision_inputs, group_vision_inputs, group_vision_sizes, static_vision_sizes
from .step import MODEL_KEYS, TrainState, make_sft_step, stack_micro_batches

log = logging.getLogger(__name__)


class CheckpointMismatchError(UserError, ValueError):
    """A training checkpoint that does not match the model/optimizer being resumed."""


class NonFiniteLossError(UserError, RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class LoopConfigError(UserError, ValueError):
    """A loop setting out of range (steps, intervals)."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    total_steps: int
    accum_steps: int = 1
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    max_skips_in_row: int = 5
    async_checkpoints: bool = True
    progress: bool = True
    checkpoint_dir: str | None = None  # None: <workdir>/checkpoints; a folder or a gs:// URL (Orbax writes it)

    def __post_init__(self):
        for name in ("total_steps", "accum_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LoopConfigError(f"{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass
class LoopResult:
    state: TrainState
    history: list[dict]  # logged metrics rows
    preempted: bool
    resumed_from: int | None


class MetricsWriter:
    """Metrics rows to `<workdir>/metrics.jsonl` and TensorBoard event files in `<workdir>/tb`.

    `resumed_at`: the step the run continues from (0 for a fresh start). Rows of later steps, written by the
    earlier run after its last checkpoint, are dropped from the JSONL file (and a line cut short by a kill is
    dropped with them), and TensorBoard is told to purge its events of those steps, so that every step appears
    once after any number of resumes.
    """

    def __init__(self, workdir: str, resumed_at: int = 0):
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(path):
            atomic_write_text(path, "".join(line + "\n" for line in _rows_up_to(path, resumed_at)))
        self._jsonl = open(path, "a")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=resumed_at + 1 if resumed_at else None)
        except ImportError:  # optional: JSONL is always written
            self._tb = None

    def write(self, row: dict) -> None:
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, row["step"])

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _rows_up_to(path: str, step: int) -> list[str]:
    """The complete JSON lines of `path` whose step is at most `step`."""
    kept = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line.rstrip("\n"))
    return kept


def checkpoint_location(workdir: str, checkpoint_dir: str | None = None) -> epath.Path:
    """Where a loop's checkpoints live: `checkpoint_dir` (a local folder, or a URL such as gs://bucket/run/stage
    that Orbax reads and writes directly: every host of a pod writes its shards there), else
    `<workdir>/checkpoints`."""
    if checkpoint_dir:
        return epath.Path(checkpoint_dir if "://" in checkpoint_dir else os.path.abspath(checkpoint_dir))
    return epath.Path(os.path.abspath(os.path.join(workdir, "checkpoints")))


def checkpoint_manager(workdir: str, cfg: LoopConfig) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep_checkpoints, save_interval_steps=cfg.checkpoint_every,
        enable_async_checkpointing=cfg.async_checkpoints, create=True)
    return ocp.CheckpointManager(checkpoint_location(workdir, cfg.checkpoint_dir), options=options)


class PipelineData:
    """A Grain pipeline as a loop's data: an iterator whose exact position is saved with each checkpoint."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.iterator = iter(pipeline)

    def __next__(self) -> dict:
        return next(self.iterator)

    def state_dict(self) -> dict:
        """The position; with several processes every process's, in process order (a collective)."""
        state = self.pipeline.state_dict(self.iterator)
        return {"processes": allgather_json(state)} if is_multiprocess() else state

    def load_state_dict(self, payload: dict, source: str) -> None:
        saved = len(payload["processes"]) if "processes" in payload else 1
        if saved != jax.process_count():
            raise CheckpointMismatchError(
                f"{source}: the data position was saved by {saved} process(es), this run has {jax.process_count()}; "
                f"resume with {saved}")
        if "processes" in payload:
            payload = payload["processes"][jax.process_index()]
        self.pipeline.load_state_dict(self.iterator, payload, source=source)


def micro_batches(data: PipelineData, vision_config, accum_steps: int, keys: tuple[str, ...] = MODEL_KEYS,
                  samples_per_row: int = 1, groups: int = 1) -> Callable[[], tuple[dict, int]]:
    """`next_inputs` for `run_loop` from a pipeline: `accum_steps` batches, each with the vision tower's index
    arrays at the run's static sizes, stacked on a leading micro-batch axis; the count is the real rows times
    `samples_per_row` (GRPO: completions per prompt). `groups` > 1: the images packed per group of rows
    (`group_vision_inputs`), one group per device the batch is split over."""
    grids, B = data.pipeline.plan.grid_thw, data.pipeline.config.batch_size
    sizes = group_vision_sizes(grids, vision_config, B // groups) if groups > 1 else None

    def next_inputs():
        micro, samples = [], 0
        for _ in range(accum_steps):
            batch = next(data)
            if sizes is not None:
                micro.append(group_vision_inputs(batch, vision_config, groups, **sizes))
            else:
                nw, fs = static_vision_sizes(grids, vision_config, B, batch["pixel_values"].shape[0])
                micro.append(add_vision_inputs(batch, vision_config, num_windows=nw, frame_slots=fs))
            samples += int(batch["sample_valid"].sum()) * samples_per_row
        return stack_micro_batches(micro, keys), samples

    return next_inputs


def run_loop(state: TrainState, step_fn: Callable, next_inputs: Callable[[], tuple[Any, int]], data,
             cfg: LoopConfig, workdir: str, *, resume: bool = False, name: str = "train",
             schedule: Callable[[int], float] | None = None, on_log: Callable[[dict], None] | None = None,
             on_exit: Callable[[TrainState], None] | None = None, run_info: dict | None = None,
             shown: tuple[str, ...] = ("loss",)) -> LoopResult:
    """The training loop every trainer uses (SFT, GRPO): `step_fn(state, inputs) -> (state, metrics)` for
    `cfg.total_steps` steps, with checkpoints, exact resume, preemption, the non-finite skip policy and metrics.

    next_inputs: () -> (the next step's inputs, the number of real samples in them), drawn from `data`.
    data: `state_dict()` / `load_state_dict(payload, source)` of the data's position (`PipelineData`).
    on_exit: called with the final state when the loop ends, also on an error (e.g. to update an NNX model).
    run_info: JSON facts saved with every checkpoint (e.g. where the reference policy was read from).
    shown: the metrics the progress bar shows beside the rate.
    """
    mngr = checkpoint_manager(workdir, cfg)
    try:
        state, resumed_from = _restore(mngr, state, data, resume, workdir, run_info is not None)
    except BaseException:
        mngr.close()
        raise
    return _train(state, step_fn, next_inputs, data, mngr, cfg, workdir, name, schedule, on_log, on_exit,
                  run_info, resumed_from, shown)


def run_sft(model, pipeline, tx: optax.GradientTransformation, cfg: LoopConfig, workdir: str, *,
            resume: bool = False, schedule: Callable[[int], float] | None = None,
            on_log: Callable[[dict], None] | None = None, freeze_vision: bool = False, mesh=None) -> LoopResult:
    """Train `model` (NNX, updated in place at the end, also when the run stops on an error) on `pipeline`
    batches for `cfg.total_steps` steps: `run_loop` with the SFT loss, `cfg.accum_steps` micro-batches a step.

    `mesh` (a (data, fsdp, tensor) `jax.sharding.Mesh`, or None for one device): the state is placed by the
    sharding rules (`rsground_jax.sharding`), each batch split over data x fsdp with its images packed per
    device (each device runs the vision tower over its own rows' images), and the step runs over the mesh;
    checkpoints hold whole arrays, so a run may resume on another mesh."""
    graphdef, params = nnx.split(model, nnx.Param)
    data = PipelineData(pipeline)
    state = TrainState.create(params, tx)
    groups = 1
    if mesh is not None:
        from ..sharding import batch_groups

        groups = batch_groups(mesh)
    next_inputs = micro_batches(data, model.config.vision, cfg.accum_steps, groups=groups)
    if mesh is None:
        step = make_sft_step(graphdef, tx, freeze_vision=freeze_vision)
    else:
        from ..sharding import place, state_shardings

        state_sh = state_shardings(state, mesh)
        state = place(state, state_sh)
        step = mesh_step(lambda b_sh: make_sft_step(graphdef, tx, freeze_vision=freeze_vision,
                                                    shardings=(state_sh, b_sh)), mesh)

    return run_loop(state, step, next_inputs, data, cfg, workdir, resume=resume, name="sft", schedule=schedule,
                    on_log=on_log, on_exit=lambda state: nnx.update(model, state.params))


def mesh_step(build: Callable, mesh) -> Callable:
    """A step over `mesh` for batches of any layout: `build(batch_shardings)` jits it once per layout (the keys
    and ranks; length buckets of one layout share the program) and, with several processes, each process's
    rows become the step's global batch. The batch is the step's last argument."""
    from ..sharding import batch_shardings, global_batch

    steps, processes = {}, jax.process_count()

    def step(*args):
        *rest, batch = args
        layout = jax.tree.structure(batch), tuple(np.ndim(x) for x in jax.tree.leaves(batch))
        if layout not in steps:
            b_sh = batch_shardings(batch, mesh, processes=processes)
            steps[layout] = build(b_sh), b_sh
        fn, b_sh = steps[layout]
        return fn(*rest, global_batch(batch, b_sh) if processes > 1 else batch)

    return step


def _restore(mngr, state, data, resume, workdir, with_run_info: bool):
    resumed_from = None
    if resume and mngr.latest_step() is not None:
        resumed_from = mngr.latest_step()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)

        def misfit(detail: str) -> CheckpointMismatchError:
            return CheckpointMismatchError(
                f"{workdir}: checkpoint {resumed_from} does not fit this model and optimizer (was it written for "
                f"another model shape or optimizer?): {detail}")

        mismatch = _shape_mismatch(mngr, resumed_from, abstract)
        if mismatch:
            raise misfit(mismatch)
        items = dict(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())
        if with_run_info:
            items["run"] = ocp.args.JsonRestore()
        try:
            restored = mngr.restore(resumed_from, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, TypeError) as e:
            raise misfit(str(e).splitlines()[0][:300]) from None
        state = restored["state"]
        data.load_state_dict(restored["data"], source=f"checkpoint {resumed_from}")
        log.info("resumed from step %d", resumed_from)
    elif resume:
        log.info("no checkpoint in %s: starting from scratch", workdir)
    elif mngr.latest_step() is not None:
        raise WorkdirInUseError(
            f"{workdir}: holds checkpoints up to step {mngr.latest_step()} of an earlier run; resume it "
            f"(--resume) or choose another workdir")
    return state, resumed_from


def _shape_mismatch(mngr, step: int, abstract) -> str | None:
    """The first difference between the saved state's leaves and `abstract`'s (a missing or extra leaf, a
    shape, a dtype), read from the checkpoint's metadata; None when they agree or the metadata cannot be read
    (the restore then reports what it finds). Checked before restoring because a restore that fails partway
    leaves orbax's read coroutines behind."""
    try:
        meta = ocp.StandardCheckpointHandler().metadata(mngr.directory / str(step) / "state")
        saved = ocp.tree.to_flat_dict(getattr(meta, "tree", meta))
    except Exception:  # noqa: BLE001 - an unreadable or unexpected layout is left to the restore's own error
        return None
    want = ocp.tree.to_flat_dict(abstract)
    name = "/".join
    for key in want:
        if key not in saved:
            return f"{name(key)} is not in the checkpoint"
        got, exp = saved[key], want[key]
        if tuple(got.shape) != tuple(exp.shape):
            return f"{name(key)} has shape {tuple(got.shape)} in the checkpoint, {tuple(exp.shape)} here"
        if got.dtype is not None and jnp.dtype(got.dtype) != jnp.dtype(exp.dtype):
            return f"{name(key)} is {jnp.dtype(got.dtype)} in the checkpoint, {jnp.dtype(exp.dtype)} here"
    extra = [k for k in saved if k not in want]
    return f"the checkpoint has {name(extra[0])}, which this model and optimizer lack" if extra else None


def _train(state, step_fn, next_inputs, data, mngr, cfg, workdir, name, schedule, on_log, on_exit, run_info,
           resumed_from, shown):
    history: list[dict] = []
    step = int(state.step)  # counted on the host from here on: no device sync per step
    writer = bar = None
    multi = is_multiprocess()
    leader = not multi or jax.process_index() == 0  # files and the progress bar: process 0's
    preempted = False
    t_last, samples_since = time.perf_counter(), 0
    previous = None  # last step's metrics, read one step late so the host never waits for the device
    try:
        writer = MetricsWriter(workdir, resumed_at=step) if leader else None
        if cfg.progress and leader:
            from tqdm import tqdm

            bar = tqdm(total=cfg.total_steps, initial=step, desc=name, unit="step", dynamic_ncols=True)
        with stop_requests() as preempt:
            for _ in range(step, cfg.total_steps):
                inputs, samples = next_inputs()
                samples_since += samples * jax.process_count()  # the processes' batches are alike in size
                state, metrics = step_fn(state, inputs)
                step += 1
                _check_skips(previous, cfg)
                previous = metrics
                if step % cfg.log_every == 0 or step == cfg.total_steps:
                    row = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.perf_counter()
                    row.update(step=step, samples_per_s=samples_since / (now - t_last),
                               skipped_total=int(state.skipped_total))
                    if schedule is not None:
                        row["lr"] = float(schedule(step - 1))
                    t_last, samples_since = now, 0
                    history.append(row)
                    if writer is not None:
                        writer.write(row)
                    if on_log:
                        on_log(row)
                    if bar is not None:
                        bar.set_postfix(**{k: f"{row[k]:.4f}" for k in shown if k in row},
                                        rate=f"{row['samples_per_s']:.1f}/s")
                if bar is not None:
                    bar.update(1)
                stop = preempt.requested  # read once: a signal between two reads would stop without saving
                if multi:  # a signal on any host stops every host at this step, so they save together
                    stop = all_agree(stop)
                if stop or step == cfg.total_steps or mngr.should_save(step):
                    _check_space(mngr, state, step)
                    mngr.save(step, args=_ckpt_args(state, data, run_info), force=True)
                if stop:
                    preempted = True
                    break
            _check_skips(previous, cfg)
    finally:
        mngr.wait_until_finished()
        mngr.close()
        if writer is not None:
            try:
                writer.close()
            except OSError as e:  # a full disk: the error that stopped the run matters more than a last flush
                log.warning("metrics of %s not flushed: %s", workdir, e)
        if bar is not None:
            bar.close()
        if on_exit is not None and not any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(state.params)):
            on_exit(state)
    return LoopResult(state=state, history=history, preempted=preempted, resumed_from=resumed_from)


class DiskSpaceError(UserError, OSError):
    """Too little free space for the next checkpoint: found before writing it, not half-way through."""


def _check_space(mngr, state: TrainState, step: int) -> None:
    """Stop before a checkpoint that cannot fit: Orbax writes in background threads, and a disk that fills up
    under them gives hundreds of lines of their errors and a checkpoint that is lost anyway."""
    if "://" in str(mngr.directory):  # object storage: no disk to fill
        return
    need = sum(x.nbytes for x in jax.tree.leaves(state)) + 4 * 2**20  # the arrays, uncompressed, and metadata
    free = shutil.disk_usage(mngr.directory).free
    if free < need:
        latest = mngr.latest_step()
        raise DiskSpaceError(
            f"{mngr.directory}: {free / 2**20:.1f} MiB free, the checkpoint of step {step} needs about "
            f"{need / 2**20:.1f} MiB; make room and resume (--resume) from "
            f"{f'step {latest}' if latest is not None else 'the start: no checkpoint was written yet'}")


def _check_skips(metrics, cfg: LoopConfig) -> None:
    if metrics is not None and int(metrics["skipped_in_row"]) > cfg.max_skips_in_row:
        raise NonFiniteLossError(
            f"{int(metrics['skipped_in_row'])} consecutive steps had a non-finite loss or gradient; the state holds "
            f"the last finite update. Lower the learning rate or check the data; the run can be resumed from the "
            f"last checkpoint.")


def _ckpt_args(state: TrainState, data, run_info: dict | None) -> Any:
    items = dict(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data.state_dict()))
    if run_info is not None:
        items["run"] = ocp.args.JsonSave(run_info)
    return ocp.args.Composite(**items)
