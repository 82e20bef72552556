"""The SFT training loop: batches in, jitted steps, metrics out, Orbax checkpoints, exact resume, preemption.

A checkpoint (Orbax `CheckpointManager`, one directory per step under `<workdir>/checkpoints`) holds the
whole `TrainState` (parameters, optimizer state, step and skip counters) and the data iterator's position.
Orbax writes each checkpoint into a temporary directory and renames it when complete, so an interrupted save
never looks like a checkpoint. Saves are asynchronous: the step loop goes on while files are written.

`resume=True` restores the latest checkpoint and the iterator position, so a stopped-and-resumed run sees
exactly the batches, and produces exactly the losses, of an uninterrupted one. SIGTERM (how TPU VMs are
preempted) finishes the current step, saves, waits for the save, and returns with `preempted=True`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from flax import nnx

from .step import TrainState, add_vision_inputs, make_sft_step, stack_micro_batches, static_vision_sizes

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A training checkpoint that does not match the model/optimizer being resumed."""


class WorkdirInUseError(ValueError):
    """A fresh (not resumed) run pointed at a workdir that already holds training checkpoints."""


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


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


@dataclasses.dataclass
class LoopResult:
    state: TrainState
    history: list[dict]  # logged metrics rows
    preempted: bool
    resumed_from: int | None


class MetricsWriter:
    """Metrics rows to `<workdir>/metrics.jsonl` and TensorBoard event files in `<workdir>/tb`."""

    def __init__(self, workdir: str):
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tb"))
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


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (restores the old handler on exit)."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, no preemption support
            self._old = None
        return self

    def _handle(self, signum, frame):
        self.requested = True
        log.warning("SIGTERM received: saving a checkpoint after this step, then stopping")

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def checkpoint_manager(workdir: str, cfg: LoopConfig) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=cfg.keep_checkpoints, save_interval_steps=cfg.checkpoint_every,
        enable_async_checkpointing=cfg.async_checkpoints, create=True)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=options)


def run_sft(model, pipeline, tx: optax.GradientTransformation, cfg: LoopConfig, workdir: str, *,
            resume: bool = False, schedule: Callable[[int], float] | None = None,
            on_log: Callable[[dict], None] | None = None, freeze_vision: bool = False) -> LoopResult:
    """Train `model` (NNX, updated in place at the end, also when the run stops on an error) on `pipeline`
    batches for `cfg.total_steps` steps."""
    graphdef, params = nnx.split(model, nnx.Param)
    state = TrainState.create(params, tx)
    step_fn = make_sft_step(graphdef, tx, freeze_vision=freeze_vision)
    mngr = checkpoint_manager(workdir, cfg)
    try:
        state, iterator, resumed_from = _restore(mngr, state, pipeline, resume, workdir)
    except BaseException:
        mngr.close()
        raise
    return _train(model, state, step_fn, mngr, pipeline, iterator, cfg, workdir, schedule, on_log, resumed_from)


def _restore(mngr, state, pipeline, resume, workdir):
    iterator = iter(pipeline)
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
        try:
            restored = mngr.restore(resumed_from, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        except (ValueError, KeyError, TypeError) as e:
            raise misfit(str(e).splitlines()[0][:300]) from None
        state = restored["state"]
        pipeline.load_state_dict(iterator, restored["data"], source=f"checkpoint {resumed_from}")
        log.info("resumed from step %d", resumed_from)
    elif resume:
        log.info("no checkpoint in %s: starting from scratch", workdir)
    elif mngr.latest_step() is not None:
        raise WorkdirInUseError(
            f"{workdir}: holds checkpoints up to step {mngr.latest_step()} of an earlier run; resume it "
            f"(--resume) or choose another workdir")
    return state, iterator, resumed_from


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


def _train(model, state, step_fn, mngr, pipeline, iterator, cfg, workdir, schedule, on_log, resumed_from):
    vcfg = model.config.vision
    grids = pipeline.plan.grid_thw
    B = pipeline.config.batch_size
    history: list[dict] = []
    step = int(state.step)  # counted on the host from here on: no device sync per step
    writer = bar = None
    preempted = False
    t_last, samples_since = time.perf_counter(), 0
    previous = None  # last step's metrics, read one step late so the host never waits for the device
    try:
        writer = MetricsWriter(workdir)
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.total_steps, initial=step, desc="sft", unit="step", dynamic_ncols=True)
        with _Preemption() as preempt:
            for _ in range(step, cfg.total_steps):
                micro = []
                for _ in range(cfg.accum_steps):
                    batch = next(iterator)
                    nw, fs = static_vision_sizes(grids, vcfg, B, batch["pixel_values"].shape[0])
                    micro.append(add_vision_inputs(batch, vcfg, num_windows=nw, frame_slots=fs))
                    samples_since += int(batch["sample_valid"].sum())
                state, metrics = step_fn(state, stack_micro_batches(micro))
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
                    writer.write(row)
                    if on_log:
                        on_log(row)
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", rate=f"{row['samples_per_s']:.1f}/s")
                if bar is not None:
                    bar.update(1)
                mngr.save(step, args=_ckpt_args(state, pipeline, iterator),
                          force=preempt.requested or step == cfg.total_steps)
                if preempt.requested:
                    preempted = True
                    break
            _check_skips(previous, cfg)
    finally:
        mngr.wait_until_finished()
        mngr.close()
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
        if not any(getattr(x, "is_deleted", lambda: False)() for x in jax.tree.leaves(state.params)):
            nnx.update(model, state.params)
    return LoopResult(state=state, history=history, preempted=preempted, resumed_from=resumed_from)


def _check_skips(metrics, cfg: LoopConfig) -> None:
    if metrics is not None and int(metrics["skipped_in_row"]) > cfg.max_skips_in_row:
        raise NonFiniteLossError(
            f"{int(metrics['skipped_in_row'])} consecutive steps had a non-finite loss or gradient; the state holds "
            f"the last finite update. Lower the learning rate or check the data; the run can be resumed from the "
            f"last checkpoint.")


def _ckpt_args(state: TrainState, pipeline, iterator) -> Any:
    return ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(pipeline.state_dict(iterator)))
