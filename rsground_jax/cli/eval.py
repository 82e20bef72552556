"""`rsground eval`: evaluate a model on a dataset split (RSVG metrics overall and per category)."""

from __future__ import annotations

import argparse
import os

from .main import UserError, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a model on an RSVG split",
        description=("Batched greedy generation over a split, answer parsing, rescaling to original pixels, "
                     "Pr@0.5..0.9 / meanIoU / cumIoU overall and per category. Writes metrics.json, "
                     "predictions.jsonl (one line per expression) and predictions.png (a grid with ground truth "
                     "in green and predictions in red) to --out."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="base",
                   help="model folder (Hugging Face or Orbax weights, a tokenizer, rsground_prompt.json), or 'base' for "
                        "the packaged base model")
    p.add_argument("--data", required=True, help="dataset folder (DIOR-RSVG, OPT-RSVG, RSVG-HR or VRSBench layout)")
    p.add_argument("--split", default="test")
    p.add_argument("--format", default="auto", help="dataset format (default: detect)")
    add_prompt_args(p)
    p.add_argument("--out", default="eval_out", help="output folder")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="default: 24 for box answers, 320 for CoT")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N expressions")
    p.add_argument("--devices", type=positive_int, default=None,
                   help="split each batch over this many of this host's devices, each generating its own rows "
                        "with a full copy of the weights (default: all of them; --batch-size must divide by it)")
    p.set_defaults(func=run)


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    """--tokenizer and --prompt-spec: what a model folder may lack (a converted Hugging Face release has neither
    our prompt file nor, sometimes, a tokenizer)."""
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model folder's)")
    p.add_argument("--prompt-spec", default=None,
                   help="an rsground_prompt.json (template, pixel budget, answer style) to use instead of the model "
                        "folder's")


def eval_devices(devices: int | None, batch_size: int) -> int:
    """How many of this host's devices to split each batch over (all when `devices` is None), checked
    against the host and the batch size before anything is loaded."""
    import jax

    available = jax.local_device_count()
    n = available if devices is None else devices
    if not 1 <= n <= available:
        raise UserError(f"--devices {devices}: this host has {available} device(s)")
    if batch_size % n:
        raise UserError(f"--batch-size {batch_size} does not split over {n} devices: pass a multiple of {n}"
                        + (", or fewer --devices" if devices is not None else ", or --devices"))
    return n


def eval_sampler(model, n: int):
    """A Sampler with each batch split over a `data` mesh axis of this host's first `n` devices, each
    generating its own rows with a full copy of the weights; None (evaluate's one-device default) for n=1."""
    import jax

    from ..generate import Sampler

    if n == 1:
        return None
    return Sampler(model, jax.sharding.Mesh(jax.local_devices()[:n], ("data",)))


def model_dir(args) -> tuple[str, dict]:
    """(folder, prompt spec) of --model ('base': the packaged base model): the folder checked to hold what
    evaluation needs (weights, and a tokenizer and prompt file unless --tokenizer / --prompt-spec give them), and
    the prompt file read, all before any long work."""
    from ..models.model_dir import missing_parts, read_prompt_spec, resolve

    path = resolve(args.model)
    if not os.path.isdir(path):
        raise UserError(f"{path}: no such model directory")
    missing = missing_parts(path, tokenizer=args.tokenizer is None, prompt=args.prompt_spec is None)
    if missing:
        raise UserError(f"{path}: not a complete model folder; it lacks {', '.join(missing)} (--tokenizer and "
                        "--prompt-spec can stand in for a missing tokenizer and prompt file)")
    if args.tokenizer is not None and not os.path.isdir(args.tokenizer):
        raise UserError(f"--tokenizer {args.tokenizer}: no such folder")
    return path, read_prompt_spec(args.prompt_spec or path)


def load_model_and_prompt(args, checked: tuple[str, dict]):
    """(model, tokenizer, template, processor, answer_style) of the folder and prompt spec `model_dir` checked,
    with --tokenizer."""
    from ..data.chat import prompt_from_spec
    from ..data.tokenizer import load_tokenizer
    from ..models.model_dir import load_model

    path, spec = checked
    template, proc, style = prompt_from_spec(spec)
    tok = load_tokenizer(args.tokenizer or path)
    return load_model(path), tok, template, proc, style


def run(args) -> int:
    from ..data import FORMATS, load_split
    from ..fileio import atomic_write_json, check_writable_dir

    if not os.path.isdir(args.data):
        raise UserError(f"{args.data}: dataset folder does not exist")
    if args.format not in ("auto", *FORMATS):
        raise UserError(f"--format {args.format!r}: expected auto or one of {', '.join(FORMATS)}")
    checked = model_dir(args)  # before the split is read
    check_writable_dir(args.out, "--out")
    n_devices = eval_devices(args.devices, args.batch_size)  # starts JAX
    records = load_split(args.data, args.split, format=args.format)[: args.limit]
    if not records:
        raise UserError(f"{args.data}: split {args.split!r} has no expressions to evaluate")

    from ..eval.draw import grid
    from ..eval.evaluate import evaluate, write_predictions
    from ..eval.metrics import grounding_metrics
    model, tok, template, proc, style = load_model_and_prompt(args, checked)
    max_new = args.max_new_tokens or (24 if style == "box" else 320)
    sampler = eval_sampler(model, n_devices)
    result = evaluate(model, records, tok, proc, template=template, batch_size=args.batch_size, max_new_tokens=max_new,
                      sampler=sampler)
    by_cat = {}
    for cat in sorted({r["category"] for r in result.predictions if r["category"]}):
        rows = [r for r in result.predictions if r["category"] == cat]
        by_cat[cat] = grounding_metrics([r["pred_box"] for r in rows], [r["gt_box"] for r in rows],
                                        [r["image_hw"] for r in rows])
    # Each file is written whole or not at all: a full disk leaves no empty or cut-off results.
    os.makedirs(args.out, exist_ok=True)
    write_predictions(os.path.join(args.out, "predictions.jsonl"), result.predictions)
    grid(result.predictions[:16], os.path.join(args.out, "predictions.png"))
    atomic_write_json(os.path.join(args.out, "metrics.json"), {"overall": result.metrics, "per_category": by_cat},
                      indent=2)
    m = result.metrics
    print(f"{len(records)} expressions: " + "  ".join(f"{k} {100 * m[k]:.2f}" for k in
          ("Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "meanIoU", "cumIoU")) +
          f"  unparsable {m['num_unparsable']}")
    for cat, cm in by_cat.items():
        print(f"  {cat:<24s} n={cm['num_samples']:<5d} Pr@0.5 {100 * cm['Pr@0.5']:.2f}  meanIoU {100 * cm['meanIoU']:.2f}")
    print(f"wrote {args.out}/metrics.json, predictions.jsonl, predictions.png")
    return 0
