"""`rsground eval`: evaluate a model on a dataset split (RSVG metrics overall and per category)."""

from __future__ import annotations

import argparse
import json
import os

from .main import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a model on an RSVG split",
        description=("Batched greedy generation over a split, answer parsing, rescaling to original pixels, "
                     "Pr@0.5..0.9 / meanIoU / cumIoU overall and per category. Writes metrics.json, "
                     "predictions.jsonl (one line per expression) and predictions.png (a grid with ground truth "
                     "in green and predictions in red) to --out."),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="base", help="HF model directory, or 'base' for the packaged base model")
    p.add_argument("--data", required=True, help="dataset folder (DIOR-RSVG, OPT-RSVG, RSVG-HR or VRSBench layout)")
    p.add_argument("--split", default="test")
    p.add_argument("--format", default="auto", help="dataset format (default: detect)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the model directory's)")
    p.add_argument("--out", default="eval_out", help="output folder")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: 24 for box answers, 320 for CoT")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N expressions")
    p.add_argument("--devices", type=int, default=None,
                   help="split each batch over this many of this host's devices, each generating its own rows "
                        "with a full copy of the weights (default: all of them; --batch-size must divide by it)")
    p.set_defaults(func=run)


def ensure_writable_dir(path: str, flag: str) -> None:
    """Create `path` if needed and make sure files can be written there, before any long work starts."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: the folder is not writable")


def eval_devices(devices: int | None, batch_size: int) -> int:
    """How many of this host's devices to split each batch over (all when `devices` is None), checked
    against the host and the batch size before anything is loaded."""
    import jax

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
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


def model_dir(model_arg: str) -> str:
    """The model directory that --model names ('base': the packaged base model), checked to exist."""
    from ..train.experiment import BASE_MODEL_DIR

    path = str(BASE_MODEL_DIR) if model_arg == "base" else model_arg
    if not os.path.isdir(path):
        raise UserError(f"{path}: no such model directory")
    return path


def load_model_and_prompt(model_arg: str, tokenizer_arg: str | None):
    """(model, tokenizer, template, processor, answer_style) for a model directory or 'base'."""
    from ..data.tokenizer import load_tokenizer
    from ..models import load_pretrained
    from ..train.experiment import read_prompt_spec

    path = model_dir(model_arg)
    model = load_pretrained(path)
    tok = load_tokenizer(tokenizer_arg or path)
    template, proc, style = read_prompt_spec(path)
    return model, tok, template, proc, style


def run(args) -> int:
    from ..data import load_split
    from ..eval.draw import grid
    from ..eval.evaluate import evaluate
    from ..eval.metrics import grounding_metrics

    if not os.path.isdir(args.data):
        raise UserError(f"{args.data}: dataset folder does not exist")
    model_dir(args.model)  # before the split is read
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1, got {args.limit}")
    n_devices = eval_devices(args.devices, args.batch_size)
    ensure_writable_dir(args.out, "--out")
    records = load_split(args.data, args.split, format=args.format)[: args.limit]
    if not records:
        raise UserError(f"{args.data}: split {args.split!r} has no expressions to evaluate")
    model, tok, template, proc, style = load_model_and_prompt(args.model, args.tokenizer)
    max_new = args.max_new_tokens or (24 if style == "box" else 320)
    sampler = eval_sampler(model, n_devices)
    result = evaluate(model, records, tok, proc, template=template, batch_size=args.batch_size, max_new_tokens=max_new,
                      sampler=sampler)
    by_cat = {}
    for cat in sorted({r["category"] for r in result.predictions if r["category"]}):
        rows = [r for r in result.predictions if r["category"] == cat]
        by_cat[cat] = grounding_metrics([r["pred_box"] for r in rows], [r["gt_box"] for r in rows],
                                        [r["image_hw"] for r in rows])
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump({"overall": result.metrics, "per_category": by_cat}, f, indent=2)
    with open(os.path.join(args.out, "predictions.jsonl"), "w") as f:
        for row in result.predictions:
            f.write(json.dumps(row) + "\n")
    grid(result.predictions[:16], os.path.join(args.out, "predictions.png"))
    m = result.metrics
    print(f"{len(records)} expressions: " + "  ".join(f"{k} {100 * m[k]:.2f}" for k in
          ("Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "meanIoU", "cumIoU")) +
          f"  unparsable {m['num_unparsable']}")
    for cat, cm in by_cat.items():
        print(f"  {cat:<24s} n={cm['num_samples']:<5d} Pr@0.5 {100 * cm['Pr@0.5']:.2f}  meanIoU {100 * cm['meanIoU']:.2f}")
    print(f"wrote {args.out}/metrics.json, predictions.jsonl, predictions.png")
    return 0
