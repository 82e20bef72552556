"""`rsground convert`: Hugging Face checkpoint directory <-> Orbax model directory, with a dtype change."""

from __future__ import annotations

import argparse
import os

from .main import UserError, positive_int

DTYPES = ("bfloat16", "float16", "float32")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert model weights between Hugging Face and Orbax formats",
        description=(
            "Convert a Qwen2.5-VL checkpoint. SRC is a Hugging Face directory (config.json + model.safetensors "
            "or a sharded index) or an Orbax model directory written by this command (config.json + params/). "
            "The output format is chosen with --to. DST must be missing or empty; it appears only when complete, "
            "with the source's tokenizer, rsground_prompt.json and RECIPE.json beside the weights. Examples:\n"
            "  rsground convert ./Qwen2.5-VL-3B-Instruct ./qwen3b_orbax --to orbax\n"
            "  rsground convert ./qwen3b_orbax ./exported --to hf --dtype bfloat16"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("src", help="source directory (format detected)")
    p.add_argument("dst", help="destination directory (missing or empty)")
    p.add_argument("--to", choices=["hf", "orbax"], required=True, help="output format")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="store weights in this dtype (default: keep the source dtype)")
    p.add_argument("--max-shard-size", type=positive_int, default=5 * 2**30,
                   help="HF output: split safetensors files above this many bytes (default 5 GiB)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..fileio import check_destination

    if not os.path.isdir(args.src):
        raise UserError(f"{args.src}: no such directory")
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        raise UserError("source and destination are the same directory")
    check_destination(args.dst)  # before the weights load: nothing already there is touched

    import jax.numpy as jnp

    from ..models.model_dir import load_model, save_model_dir
    from ..models.qwen2_5_vl import is_orbax_dir
    from ..models.qwen2_5_vl.checkpoint import checkpoint_dtype
    from ..models.qwen2_5_vl.orbax_io import stored_dtype

    orbax_src = is_orbax_dir(args.src)
    # without --dtype the weights keep the dtype they are stored in
    dtype = jnp.dtype(args.dtype) if args.dtype else (stored_dtype(args.src) if orbax_src else checkpoint_dtype(args.src))
    model = load_model(args.src, dtype=dtype)
    save_model_dir(model, args.dst, to=args.to, dtype=dtype, max_shard_size=args.max_shard_size,
                   side_files_from=args.src)
    print(f"converted {'orbax' if orbax_src else 'hf'} {args.src} -> {args.to} {args.dst}")
    return 0
