"""`rsground ablate`: the method's ladder (CoT-SFT, GRPO with the IoU reward, + the positional reward,
+ spatial-consistency weighting, and the published GIoU and DIoU rewards) over seeds, from a config."""

from __future__ import annotations

import argparse

from .main import EXIT_STOPPED, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate", help="the method's ablation over seeds (CoT-SFT, then GRPO variants), from a config file",
        description=("Per seed: one CoT-SFT run from the packaged base (cached), then every GRPO variant of the "
                     "config from it with everything else equal; scores on the test expressions whose target "
                     "shares its category with another object, overall and by cue. Writes ablation.md, "
                     "ablation.json and ablation.png to the workdir after each seed. Every run keeps its own "
                     "checkpoints under <workdir>/seed<k>/<run>: run the same command again to continue a "
                     "stopped ablation, or with a larger --seeds to add seeds.\n"
                     "Override any config value as key=value, e.g.  rsground ablate --config "
                     "configs/ablation_demo.py grpo.steps=100"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="path to a config file defining get_config()")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds 0 .. N-1 (default 3)")
    p.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..configs import load_config
    from ..rl.ablation import AblationStopped, check_ablation_config, run_ablation, table_markdown

    cfg = load_config(args.config, args.overrides)
    check_ablation_config(cfg, args.config)
    try:
        summary = run_ablation(cfg, args.seeds, source=args.config)
    except AblationStopped as e:
        print(f"rsground ablate: {e}; run the same command again to continue", flush=True)
        return EXIT_STOPPED
    print(table_markdown(summary))
    return 0
