"""`rsground predict`: ground one expression in one image."""

from __future__ import annotations

import argparse
import os

from .eval import add_prompt_args
from .main import UserError, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="find the object a sentence refers to in one image",
                       description="Prints the model's answer (reasoning and box) and the box in original pixels, "
                                   "and writes the image with the box drawn.")
    p.add_argument("--image", required=True)
    p.add_argument("--query", required=True, help='the referring expression, e.g. "the ship at the lower left"')
    p.add_argument("--model", default="base",
                   help="model folder (Hugging Face or Orbax weights, a tokenizer, rsground_prompt.json), or 'base' for "
                        "the packaged base model")
    add_prompt_args(p)
    p.add_argument("--out", default=None, help="output image (default: <image>_pred.png)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None)
    p.set_defaults(func=run)


def run(args) -> int:
    from PIL import Image

    from ..data import boxes as box_frames
    from ..data.readers import probe_image
    from ..data.records import GroundingRecord
    from ..fileio import atomic_path, check_writable_dir
    from .eval import load_model_and_prompt, model_dir

    if not os.path.isfile(args.image):
        raise UserError(f"{args.image}: no such image file")
    if not args.query.strip():
        raise UserError("--query is empty")
    width, height = probe_image(args.image, "decode")
    out = args.out or os.path.splitext(args.image)[0] + "_pred.png"
    if os.path.splitext(out)[1].lower() not in Image.registered_extensions():
        raise UserError(f"--out {out}: not an image file name (use .png or .jpg)")
    check_writable_dir(os.path.dirname(os.path.abspath(out)), "--out" if args.out else "the picture's folder (--out)")
    checked = model_dir(args)

    from ..eval.draw import draw_boxes
    from ..eval.evaluate import evaluate

    model, tok, template, proc, style = load_model_and_prompt(args, checked)
    # the ground-truth box is unknown: a whole-image placeholder, not used for the answer
    record = GroundingRecord(image_path=args.image, width=width, height=height, box=(0.0, 0.0, float(width), float(height)),
                             expression=args.query.strip(), category=None)
    result = evaluate(model, [record], tok, proc, template=template, batch_size=1,
                      max_new_tokens=args.max_new_tokens or (24 if style == "box" else 320))
    row = result.predictions[0]
    print(row["text"])
    if row["pred_box"] is None:
        print("no box could be parsed from the answer")
        return 1
    box = box_frames.clip_to_image(row["pred_box"], height, width)
    print("box (original pixels): [" + ", ".join(f"{v:.1f}" for v in box) + "]")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with Image.open(args.image) as src, atomic_path(out) as tmp:
        draw_boxes(src, pred=box).save(tmp)
    print(f"wrote {out}")
    return 0
