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
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value (also as --config.key.sub=value)")
    p.set_defaults(func=run)


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
    from ..workdir import claim

    cfg = load_config(args.config, args.overrides)
    check(cfg, args.config)
    lock = claim(cfg.workdir, plain_config(cfg), resume=args.resume, command=command, differences=differences)
    try:
        report = experiment(cfg, resume=args.resume, source=args.config, workdir_claim=lock)
    finally:
        lock.release()
    return EXIT_STOPPED if report.get("preempted") else 0
