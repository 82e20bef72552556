"""`rsground data`: synthetic dataset, dataset checks, the small tokenizer, the TFDS build, a sample view."""

from __future__ import annotations

import argparse
import os

from .main import UserError, non_negative_float, non_negative_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="build and check RSVG data (synthetic set, readers, tokenizer, TFDS)",
        description=(
            "RSVG data tools. Examples:\n"
            "  rsground data synth --out data/synth --num-images 2000 --seed 0 --preset tiny\n"
            "  rsground data check data/DIOR_RSVG --split test --on-error skip\n"
            "  rsground data show data/synth --split train --count 3\n"
            "  rsground data tokenizer --out my_tokenizer\n"
            "  rsground data tfds --manual-dir data/DIOR_RSVG --data-dir data/tfds"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    s = dsub.add_parser("synth", help="write a synthetic RSVG dataset in the DIOR-RSVG layout")
    s.add_argument("--out", required=True, help="output folder (created when complete; must be missing or empty unless "
                   "--overwrite)")
    s.add_argument("--num-images", type=positive_int, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--preset", default="tiny", help="tiny (112-224 px, the demo), small (224-448 px) or dior (800x800)")
    s.add_argument("--image-size", type=int, nargs=2, metavar=("MIN", "MAX"), help="side length range in pixels")
    s.add_argument("--square", action=argparse.BooleanOptionalAction, default=None, help="square images")
    s.add_argument("--categories", nargs="+", help="DIOR class names to draw from")
    s.add_argument("--num-categories", type=int, nargs=2, metavar=("MIN", "MAX"), help="categories with instances per image")
    s.add_argument("--instances", type=int, nargs=2, metavar=("MIN", "MAX"), help="instances per category")
    s.add_argument("--distractors", type=int, nargs=2, metavar=("MIN", "MAX"), help="extra objects of other categories")
    s.add_argument("--object-size", type=float, nargs=2, metavar=("MIN", "MAX"), help="object length / shorter image side")
    s.add_argument("--max-expressions", type=positive_int, help="expressions per image at most")
    s.add_argument("--splits", default="train=0.8,val=0.1,test=0.1", help="split fractions, e.g. train=0.9,test=0.1")
    s.add_argument("--workers", type=non_negative_int, default=0, help="render in this many processes (0: here)")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the synthetic set already in --out (its Annotations/, JPEGImages/, split files and "
                        "rsground_synthetic.json; nothing else there is touched)")
    s.set_defaults(func=run_synth)

    c = dsub.add_parser("check", help="read a split with a reader and report every bad record")
    _reader_args(c)
    c.set_defaults(func=run_check)

    v = dsub.add_parser("show", help="print records with their prompt and CoT target")
    _reader_args(v)
    v.add_argument("--count", type=positive_int, default=3)
    v.add_argument("--min-pixels", type=positive_int, default=None)
    v.add_argument("--max-pixels", type=positive_int, default=None)
    v.set_defaults(func=run_show)

    t = dsub.add_parser("tokenizer", help="build the small HF tokenizer from the synthetic corpus")
    t.add_argument("--out", required=True, help="output folder (missing or empty)")
    t.add_argument("--num-images", type=positive_int, default=400,
                   help="synthetic images whose texts form the corpus (400: the shipped copy)")
    t.add_argument("--vocab-size", type=positive_int, default=1024,
                   help="tokens in all, at least the special tokens and the 256 byte symbols (default 1024)")
    t.set_defaults(func=run_tokenizer)

    f = dsub.add_parser("tfds", help="build the DIOR-RSVG TFDS dataset (ArrayRecord) from a manual folder")
    f.add_argument("--manual-dir", required=True, help="folder in the DIOR-RSVG layout")
    f.add_argument("--data-dir", required=True, help="TFDS data_dir to write into")
    f.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    f.set_defaults(func=run_tfds)


def _reader_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", help="dataset folder")
    p.add_argument("--split", required=True)
    p.add_argument("--format", default="auto", help="dior_rsvg, opt_rsvg, rsvg_hr, vrsbench or auto")
    p.add_argument("--on-error", choices=["raise", "skip"], default="skip")
    p.add_argument("--check-images", choices=["decode", "header", "none"], default="decode")
    p.add_argument("--clip-tolerance", type=non_negative_float, default=0.0,
                   help="clip boxes outside the image by at most this many px")
    p.add_argument("--images-dir", default=None)


def _load(args):
    from ..data import load_split

    if not os.path.isdir(args.root):
        raise UserError(f"{args.root}: no such directory")
    from ..data import DataError, FORMATS

    if args.format not in FORMATS + ("auto",):
        raise UserError(f"--format: unknown format {args.format!r}; expected one of {', '.join(FORMATS)} or auto")
    try:
        return load_split(
            args.root,
            args.split,
            args.format,
            on_error=args.on_error,
            check_images=args.check_images,
            clip_tolerance=args.clip_tolerance,
            images_dir=args.images_dir,
        )
    except DataError:
        raise
    except ValueError as e:
        raise UserError(str(e)) from None


def _parse_splits(text: str) -> list[tuple[str, float]]:
    out = []
    for part in text.split(","):
        name, _, frac = part.partition("=")
        try:
            out.append((name.strip(), float(frac)))
        except ValueError:
            raise UserError(f"--splits: expected name=fraction pairs like train=0.8,val=0.2, got {part!r}") from None
        if not name.strip():
            raise UserError(f"--splits: missing split name in {part!r}")
    return out


def run_synth(args) -> int:
    import dataclasses

    from ..data import synthetic
    from ..fileio import check_destination
    from ..stopping import stop_requests

    if args.preset not in synthetic.PRESETS:
        raise UserError(f"--preset: unknown preset {args.preset!r}; known: {', '.join(sorted(synthetic.PRESETS))}")
    if not (args.overwrite and os.path.isfile(os.path.join(args.out, synthetic.SYNTH_META))):
        check_destination(args.out, "--out")  # --overwrite replaces a synthetic set, nothing else
    overrides = {
        "image_size": args.image_size,
        "square": args.square,
        "categories": args.categories,
        "num_categories": args.num_categories,
        "instances_per_category": args.instances,
        "num_distractors": args.distractors,
        "object_size": args.object_size,
        "max_expressions": args.max_expressions,
    }
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None}
    try:
        config = dataclasses.replace(synthetic.PRESETS[args.preset], **overrides)
    except ValueError as e:
        raise UserError(str(e)) from None
    splits = _parse_splits(args.splits)
    try:
        with stop_requests() as stop:
            summary = synthetic.generate_dataset(args.out, args.num_images, args.seed, config, splits,
                                                 workers=args.workers, stop=stop, replace=args.overwrite)
    except ValueError as e:
        raise UserError(str(e)) from None
    sizes = ", ".join(f"{k} {v}" for k, v in summary.split_sizes.items())
    print(f"wrote {summary.num_images} images, {summary.num_objects} objects, {summary.num_expressions} expressions ({sizes}) to {args.out}")
    return 0


def run_check(args) -> int:
    records = _load(args)
    print(records.report.summary(max_examples=20))
    return 0 if not records.report.skipped else 1


def run_show(args) -> int:
    from ..data.chat import ChatTemplate
    from ..data.cot import make_cot
    from ..models.processor import ImageProcessor

    kwargs = {k: v for k, v in (("min_pixels", args.min_pixels), ("max_pixels", args.max_pixels)) if v is not None}
    processor = ImageProcessor(**kwargs)
    records = _load(args)
    template = ChatTemplate()
    for i, r in enumerate(records[: args.count]):
        rh, rw = processor.resized_size(r.height, r.width)
        print(f"--- {r.source}  {r.width}x{r.height} -> {rw}x{rh}, box {r.box}")
        print(f"user: {template.question.format(expression=r.expression)}")
        print(f"assistant: {make_cot(r, processor, [0, i]).text}")
    return 0


def run_tokenizer(args) -> int:
    from ..data.tokenizer import build_small_tokenizer, default_small_corpus, minimum_vocab_size, special_token_ids
    from ..fileio import staged_dir

    if args.vocab_size < minimum_vocab_size():
        raise UserError(f"--vocab-size {args.vocab_size}: must be at least {minimum_vocab_size()} (the special tokens "
                        "and the 256 byte symbols)")
    with staged_dir(args.out, "--out") as tmp:
        tok = build_small_tokenizer(tmp, default_small_corpus(args.num_images), args.vocab_size)
    print(f"wrote a {len(tok)}-token tokenizer to {args.out}: {special_token_ids(tok).as_dict()}")
    return 0


def run_tfds(args) -> int:
    from ..data.tfds_dior import build_dior_rsvg

    if not os.path.isdir(args.manual_dir):
        raise UserError(f"{args.manual_dir}: no such directory")
    builder = build_dior_rsvg(args.manual_dir, args.data_dir, on_error=args.on_error)
    splits = ", ".join(f"{k} {v.num_examples}" for k, v in builder.info.splits.items())
    print(f"built {builder.name} {builder.version} in {builder.data_dir}: {splits}")
    return 0
