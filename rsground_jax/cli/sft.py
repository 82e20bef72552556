"""`rsground sft`: CoT-SFT (or base-model pretraining) from an ml_collections config."""

from __future__ import annotations

import argparse

from .main import EXIT_STOPPED


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sft", help="supervised fine-tuning from a config file",
        description=("Run the stages of an SFT config (configs/*.py): data (synthetic or a dataset folder), "
                     "the jitted train step, Orbax checkpoints under the workdir (--resume continues "
                     "exactly where a run stopped; SIGTERM or Ctrl-C saves and exits with status 3), metrics in "
                     "<workdir>/<stage>/metrics.jsonl and TensorBoard files, validation after each stage, and a "
                     "complete model folder written to `output` (which must be missing or empty).\n"
                     "One run at a time per workdir; the workdir keeps the config it was started with, and --resume "
                     "refuses another (except steps, output, eval_images, max_new_tokens and the log and checkpoint "
                     "intervals).\n"
                     "Override any config value: rsground sft --config configs/demo_cot_sft.py --config.stages.0.steps=200 "
                     "or key=value, e.g.  rsground sft --config configs/base_pretrain.py workdir=runs/b2"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="path to a config file defining get_config()")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint of each stage in the workdir (parameters, optimizer, "
                        "step, data position): the losses equal those of an uninterrupted run. Without it, a "
                        "workdir that holds an earlier run is an error")
    add_distributed_arguments(p)
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value (also as --config.key.sub=value)")
    p.set_defaults(func=run)


def add_distributed_arguments(p: argparse.ArgumentParser) -> None:
    """The multi-host flags (`rsground_jax.distributed`): the same command on every host."""
    g = p.add_argument_group(
        "multi-host", "one process per host through jax.distributed; the config's `mesh` spans every host's devices")
    g.add_argument("--distributed", action="store_true",
                   help="start JAX's multi-host runtime and let it find the hosts (TPU VMs); RSGROUND_DISTRIBUTED=1")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="process 0's address, where no cluster is detected (RSGROUND_COORDINATOR)")
    g.add_argument("--num-processes", type=int, metavar="N", help="processes in all (RSGROUND_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, metavar="I", help="this process, 0 .. N-1 (RSGROUND_PROCESS_ID)")


def run(args) -> int:
    from ..configs import check_experiment, config_differences

    def experiment(cfg, **kw):
        from ..train.experiment import run_experiment

        return run_experiment(cfg, **kw)

    return run_config(args, "sft", check_experiment, config_differences, experiment)


def run_config(args, command: str, check, differences, experiment) -> int:
    """A config command (`sft`, `grpo`): the config loaded and checked and the workdir claimed before JAX
    starts (a bad config, or a workdir in use or of another run, is refused at once), then the experiment."""
    from ..configs import load_config, plain_config
    from ..workdir import HeldElsewhere, claim

    dist = _distributed_settings(args)
    cfg = load_config(args.config, args.overrides)
    check(cfg, args.config)
    if not dist.enabled:
        lock = claim(cfg.workdir, plain_config(cfg), resume=args.resume, command=command, differences=differences)
    else:
        from .. import distributed

        distributed.initialize(dist)
        lock, refused = HeldElsewhere(), None
        if distributed.is_leader():  # one process holds the workdir; the others learn whether it could
            try:
                lock = claim(cfg.workdir, plain_config(cfg), resume=args.resume, command=command,
                             differences=differences)
            except Exception as e:  # noqa: BLE001 - re-raised below, after the others were told
                refused = e
        if not distributed.broadcast_ok(refused is None):
            raise refused or distributed.DistributedError(
                f"process 0 refused this run (its error says why); process {distributed.process_index()} stops too")
    try:
        report = experiment(cfg, resume=args.resume, source=args.config, workdir_claim=lock)
    finally:
        lock.release()
    return EXIT_STOPPED if report.get("preempted") else 0


def _distributed_settings(args):
    from ..distributed import DistributedSettings

    return DistributedSettings.resolve(getattr(args, "coordinator", None), getattr(args, "num_processes", None),
                                       getattr(args, "process_id", None), getattr(args, "distributed", False))
