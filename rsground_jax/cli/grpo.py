"""`rsground grpo`: GRPO reinforcement fine-tuning from a CoT-SFT model folder and an ml_collections config."""

from __future__ import annotations

import argparse

from .sft import add_distributed_arguments, run_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "grpo", help="GRPO reinforcement fine-tuning from a config file",
        description=("GRPO from a model folder (`init`, usually a CoT-SFT export) on grounding prompts: each prompt "
                     "prefilled once and sampled grpo.num_generations times, rewards (format, IoU, GIoU, positional) "
                     "computed on device from the token ids, group-relative advantages, the clipped surrogate with a KL "
                     "penalty to the frozen reference: one jitted program per step. Orbax checkpoints under "
                     "<workdir>/grpo (--resume reproduces the uninterrupted run's rewards and losses; SIGTERM or Ctrl-C "
                     "saves and exits with status 3), metrics in <workdir>/grpo/metrics.jsonl and TensorBoard files, "
                     "validation at the end, and a complete model folder written to `output`.\n"
                     "One run at a time per workdir; --resume refuses another config (except steps, output, "
                     "eval_images, mesh and the log and checkpoint intervals).\n"
                     "The config's `mesh` (e.g. mesh.fsdp=-1) splits the policy, reference and prompts over the "
                     "devices; with --coordinator/--distributed one job spans several hosts.\n"
                     "Override any config value as key=value, e.g.  rsground grpo --config configs/grpo_tiny_synthetic.py "
                     "steps=20 grpo.num_generations=4"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="path to a config file defining get_config()")
    p.add_argument("--resume", action="store_true",
                   help="continue from the latest checkpoint in the workdir (parameters, optimizer, rollout key, data "
                        "position). Without it, a workdir that holds an earlier run is an error")
    add_distributed_arguments(p)
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value (also as --config.key.sub=value)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..configs import check_grpo_config, grpo_config_differences

    def experiment(cfg, **kw):
        from ..rl.experiment import run_grpo_experiment

        return run_grpo_experiment(cfg, **kw)

    return run_config(args, "grpo", check_grpo_config, grpo_config_differences, experiment)
