"""`rsground plan`: per-device memory, FLOPs and step time of a training step on a mesh, before renting it."""

from __future__ import annotations

import argparse
import json
import math

from .main import positive_float, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    from ..accelerators import DEVICES

    p = sub.add_parser(
        "plan",
        help="compile a training step ahead of time for a mesh: memory per device, FLOPs, step time",
        description=(
            "Compile one training step from abstract shapes (nothing is allocated) for a mesh of fake CPU "
            "devices, one per accelerator, and print per-device memory (parameters, optimizer state, "
            "activations and other temporaries), whether it fits the device, FLOPs and the step time at a "
            "stated MFU. Example:\n"
            "  rsground plan --model 7b --mesh data=2,fsdp=16,tensor=4 --stage sft --device tpu-v5p\n"
            "--stage grpo compiles the whole GRPO step (rollouts from a shared prefill, rewards, the reference "
            "policy's log-probs, the update) and adds the rollouts' KV cache and a step time that counts decoding "
            "as bound by memory bandwidth"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, choices=["tiny", "3b", "7b", "32b", "72b"])
    p.add_argument("--mesh", required=True, help="axis=size over data, fsdp, tensor, e.g. data=2,fsdp=16,tensor=4")
    p.add_argument("--stage", default="sft", choices=["sft", "grpo"])
    p.add_argument("--device", default="tpu-v5p", choices=sorted(DEVICES))
    p.add_argument("--batch", type=positive_int, default=None,
                   help="sequences a step (default: one per data x fsdp shard)")
    p.add_argument("--seq", type=positive_int, default=1024, help="tokens a sequence, its image included")
    p.add_argument("--image-side", type=positive_int, default=448, help="pixels of each sequence's square image")
    p.add_argument("--generations", type=positive_int, default=8,
                   help="GRPO: completions per prompt (--batch then counts prompts)")
    p.add_argument("--new-tokens", type=positive_int, default=256, help="GRPO: tokens a completion")
    p.add_argument("--mfu", type=positive_float, default=0.4, help="model FLOPs utilization for the time estimate")
    p.add_argument("--remat", default="full", choices=["none", "full", "dots"])
    p.add_argument("--compute-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..plan import PlanRequest, format_plan, parse_mesh, plan

    mesh = parse_mesh(args.mesh)
    import jax

    # fake devices, before JAX starts its backends: the plan never runs on (or needs) the real accelerators
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", math.prod(mesh.values()))
    result = plan(PlanRequest(model=args.model, mesh=mesh, stage=args.stage, batch=args.batch or 0, seq=args.seq,
                              image_side=args.image_side, generations=args.generations,
                              new_tokens=args.new_tokens, device=args.device, mfu=args.mfu, remat=args.remat,
                              compute_dtype=args.compute_dtype))
    print(json.dumps(result, indent=1) if args.json else format_plan(result))
    return 0
