"""`rsground sft`: CoT-SFT (or base-model pretraining) from an ml_collections config."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sft", help="supervised fine-tuning from a config file",
        description=("Run the stages of an SFT config (configs/*.py): data (synthetic or a dataset folder), "
                     "the jitted train step, Orbax checkpoints under the workdir (--resume continues "
                     "exactly where a run stopped; SIGTERM saves and exits with status 3), metrics in <workdir>/<stage>/metrics.jsonl and TensorBoard files, validation "
                     "after each stage, and an HF export to `output`.\n"
                     "Override any config value: rsground sft --config configs/demo.py --config.stages=... or "
                     "key=value, e.g.  rsground sft --config configs/base_pretrain.py workdir=runs/b2"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="path to a config file defining get_config()")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint of each stage in the workdir (parameters, optimizer, "
                        "step, data position): the losses equal those of an uninterrupted run. Without it, a "
                        "workdir that holds checkpoints is an error")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value (also as --config.key.sub=value)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..configs import load_config
    from ..train.experiment import run_experiment

    cfg = load_config(args.config, args.overrides)
    report = run_experiment(cfg, resume=args.resume)
    return 3 if report.get("preempted") else 0
