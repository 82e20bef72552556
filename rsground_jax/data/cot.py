"""Chain-of-thought targets for CoT-SFT: position made explicit, then the box.

`make_cot(record, processor, seed)` writes

    <think>{image size} {where the cue points} {candidates considered} {conclusion}</think>
    <answer>
    [x1, y1, x2, y2]
    </answer>

(`ANSWER_LAYOUT`) for any record, synthetic or real. All coordinates in the text are in the model's
resized-pixel frame (`boxes.original_to_resized`, the frame the processor resizes the image to); the answer is
`boxes.answer_box` of the ground truth, so parsing it back and applying `boxes.resized_to_original` lands
within half a resized pixel of the annotation.

What the reasoning says:
  * the resized image size;
  * the cue: for expressions in the synthetic grammar (`expressions.parse_expression`) the cue itself (the
    region's pixel span, the anchor's box, the ordering axis, the size comparison); for free-form (real)
    expressions, a region named in the expression when the target's centre really lies in it, otherwise
    the 3x3 cell the target's centre lies in, with its pixel span. The trace never states a region the
    target is not in.
  * the candidates where the record knows them (the annotated objects of the target's category; all
    annotated objects when the format has no categories), top to bottom, at most `MAX_CANDIDATES`, with
    the evidence the cue needs (order along the axis, areas, which lie beyond the anchor);
  * the conclusion with the box.
Each step has several phrasings; `seed` (an int or a sequence such as `[base_seed, record_index]`) picks
them, so a record's text is reproducible.

`make_cot(..., brief=True)` (answer style "brief_cot") writes one short fixed sentence instead: the cue
restated in words ("In the lower left.", "Number 2 from the left."), with no number, no category noun, no
image size and no candidates; for free-form text, the region as above. The tiny demo model cannot list
candidates it does not find, and it copies numbers from its trace into its box (docs/base_model.md).

Why the box sits on a line of its own: a plain-box model (the packaged base, Qwen2.5-VL asked for a box)
answers `[x1, ...` right after the assistant turn's newline, so its box starts with the tokens `\n`, `[`.
Written flush, `<answer>[` goes through Qwen's pre-tokenizer as `<answer` + `>[` (one punctuation run, merged
by the BPE), so the box would start with a token the model has never read a box after, or begun a box with.
On its own line the box keeps the plain answer's tokens (`\n`, `[`, digits, `]`), and CoT-SFT can reuse the
model's box reading instead of learning it again (docs/base_model.md, "Session 7"). The `<think>`/`<answer>`
format regex of REFERENCE.md allows the whitespace.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import numpy as np

from rsground_jax.data import boxes as box_frames
from rsground_jax.data import expressions
from rsground_jax.data.records import AnnotatedObject, GroundingRecord
from rsground_jax.models.processor import ImageProcessor

MAX_CANDIDATES = 8

DIOR_CLASSES = (
    "airplane", "airport", "baseballfield", "basketballcourt", "bridge", "chimney", "dam", "expresswayservicearea",
    "expresswaytollstation", "golffield", "groundtrackfield", "harbor", "overpass", "ship", "stadium", "storagetank",
    "tenniscourt", "trainstation", "vehicle", "windmill",
)
# Display names of the DIOR classes (XML names are run together).
_DISPLAY = {
    "baseballfield": "baseball field",
    "basketballcourt": "basketball court",
    "expresswayservicearea": "expressway service area",
    "expresswaytollstation": "expressway toll station",
    "golffield": "golf field",
    "groundtrackfield": "ground track field",
    "storagetank": "storage tank",
    "tenniscourt": "tennis court",
    "trainstation": "train station",
}

_CELL_NAMES = {
    (0, 0): "upper left",
    (1, 0): "top",
    (2, 0): "upper right",
    (0, 1): "left",
    (1, 1): "center",
    (2, 1): "right",
    (0, 2): "lower left",
    (1, 2): "bottom",
    (2, 2): "lower right",
}
# Region words in free-form expressions, most specific first. "left of"/"right of" are relations, not regions.
_KEYWORD_REGIONS = [
    (re.compile(r"\b(?:upper|top)[ -]?left\b"), "upper left"),
    (re.compile(r"\b(?:upper|top)[ -]?right\b"), "upper right"),
    (re.compile(r"\b(?:lower|bottom)[ -]?left\b"), "lower left"),
    (re.compile(r"\b(?:lower|bottom)[ -]?right\b"), "lower right"),
    (re.compile(r"\b(?:center|centre|middle)\b"), "center"),
    (re.compile(r"\b(?:top|upper)\b(?! of)"), "top"),
    (re.compile(r"\b(?:bottom|lower)\b(?! of)"), "bottom"),
    (re.compile(r"\bleft\b(?! of)"), "left"),
    (re.compile(r"\bright\b(?! of)"), "right"),
]
# The reasoning, then the box on a line of its own (see the module docstring for why the newlines).
ANSWER_LAYOUT = "<think>{think}</think>\n<answer>\n{box}\n</answer>"


@dataclasses.dataclass(frozen=True)
class CotTarget:
    text: str  # ANSWER_LAYOUT: "<think>...</think>\n<answer>\n[x1, y1, x2, y2]\n</answer>"
    answer_box: tuple[int, int, int, int]  # resized frame
    resized_hw: tuple[int, int]
    cue_kind: str  # synthetic cue kind, or "free" for expressions outside the synthetic grammar


def display_name(category: str | None) -> str:
    if not category:
        return "target"
    return _DISPLAY.get(category, category.replace("-", " ").replace("_", " "))


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def keyword_region(expression: str) -> str | None:
    """The first region a free-form expression names ("upper left", "top", ...), or None."""
    text = expression.lower()
    for pattern, region in _KEYWORD_REGIONS:
        if pattern.search(text):
            return region
    return None


def make_cot(record: GroundingRecord, processor: ImageProcessor, seed, *, brief: bool = False) -> CotTarget:
    """The CoT-SFT target text for a record (see the module docstring; `brief`: the short form)."""
    rng = np.random.default_rng(seed)
    h, w = record.height, record.width
    rh, rw = processor.resized_size(h, w)

    def rbox(b) -> tuple[int, int, int, int]:
        return box_frames.answer_box(b, h, w, processor)

    def fmt(b) -> str:
        return box_frames.format_box(b)

    def pick(*options: str) -> str:
        return options[int(rng.integers(len(options)))]

    answer = rbox(record.box)
    noun = display_name(record.category)
    cue = expressions.parse_expression(record.expression)
    if cue is not None and cue.category != record.category:
        cue = None  # the text is in the grammar but about another category: treat it as free-form
    objects = record.all_objects()
    if record.category is not None:
        candidates = [o for o in objects if o.category == record.category]
    else:
        candidates = list(objects)
    # Listed top to bottom (centre y, then x), about the order in which their image tokens reach the decoder
    # (row by row), rather than in annotation order, which carries nothing the model could learn to reproduce.
    candidates.sort(key=_top_to_bottom)

    if brief:
        steps = _brief_steps(cue, record, answer, rw, rh)
    else:
        steps = _full_steps(cue, record, objects, candidates, noun, rw, rh, rbox, fmt, pick, answer)
    text = ANSWER_LAYOUT.format(think=" ".join(steps), box=fmt(answer))
    return CotTarget(text, answer, (rh, rw), "free" if cue is None else cue.kind)


def _full_steps(cue, record, objects, candidates, noun, rw, rh, rbox, fmt, pick, answer) -> list[str]:
    steps = [pick(f"The image is {rw}x{rh} pixels.", f"The image measures {rw} by {rh} pixels.", f"Working in the {rw}x{rh} pixel frame.")]
    if cue is None:
        steps += _free_steps(record, candidates, noun, rw, rh, rbox, fmt, pick, answer)
    else:
        steps += _cue_steps(cue, record, objects, candidates, noun, rw, rh, rbox, fmt, pick, answer)
    steps.append(pick(f"The target is {fmt(answer)}.", f"So the answer is {fmt(answer)}.", f"That gives {fmt(answer)}."))
    return steps


def _top_to_bottom(obj: AnnotatedObject) -> tuple[float, float]:
    return obj.box[1] + obj.box[3], obj.box[0] + obj.box[2]


def _span(bounds) -> str:
    x1, y1, x2, y2 = (int(round(v)) for v in bounds)
    return f"x {x1}-{x2}, y {y1}-{y2}"


def _region_sentence(region: str, rw: int, rh: int, pick, target_noun: str) -> str:
    span = _span(expressions.region_bounds(region, rw, rh))
    return pick(
        f"The {region} region of the image spans {span}.",
        f"The {target_noun} should lie in the {region} part: {span}.",
        f"'{region}' means {span}.",
    )


def _list_boxes(objs: Sequence[AnnotatedObject], rbox, fmt) -> str:
    return ", ".join(fmt(rbox(o.box)) for o in objs[:MAX_CANDIDATES]) + (
        f" and {len(objs) - MAX_CANDIDATES} more" if len(objs) > MAX_CANDIDATES else ""
    )


def _free_region(record, answer, rw, rh) -> str:
    """For free-form text: the region the expression names when the target's centre lies in it, else the
    3x3 cell the centre lies in (the trace never states a region the target is not in)."""
    centre = _centre(answer)
    named = keyword_region(record.expression)
    return named if named is not None and expressions.in_region(centre, named, rw, rh) else _CELL_NAMES[expressions.grid_cell(centre, rw, rh)]


def _edge(relation: str, anchor_box) -> str:
    """Where a target's edge lies for a relation to an anchor box, in words (`<`/`>` would read as tags)."""
    x1, y1, x2, y2 = anchor_box
    return {"left": f"right edge before x={x1}", "right": f"left edge after x={x2}",
            "above": f"bottom edge above y={y1}", "below": f"top edge below y={y2}"}[relation]


def _free_steps(record, candidates, noun, rw, rh, rbox, fmt, pick, answer) -> list[str]:
    steps = [_region_sentence(_free_region(record, answer, rw, rh), rw, rh, pick, noun)]
    if len(candidates) > 1:
        word = plural(noun) if noun != "target" else "annotated objects"
        listed = _list_boxes(candidates, rbox, fmt)
        steps.append(pick(f"There are {len(candidates)} {word}: {listed}.", f"Candidates: {listed}."))
        steps.append(pick(f"The one matching the description, in that region, is {fmt(answer)}.", f"Only {fmt(answer)} fits the description and the position."))
    return steps


def _cue_steps(cue, record, objects, candidates, noun, rw, rh, rbox, fmt, pick, answer) -> list[str]:
    many = plural(noun)
    listed = _list_boxes(candidates, rbox, fmt)
    if cue.kind == "unique":
        return [pick(f"There is exactly one {noun} in the image, at {fmt(answer)}.", f"Only one {noun} appears: {fmt(answer)}.")]
    if cue.kind == "absolute":
        steps = [_region_sentence(cue.region, rw, rh, pick, noun)]
        if len(candidates) > 1:
            steps.append(pick(f"There are {len(candidates)} {many}: {listed}.", f"Candidates: {listed}."))
            steps.append(pick(f"Only {fmt(answer)} has its centre there.", f"Of these, {fmt(answer)} is the one in that region."))
        else:
            steps.append(pick(f"The {noun} there is at {fmt(answer)}.", f"It is at {fmt(answer)}."))
        return steps
    if cue.kind == "relative":
        anchor = next(o for o in objects if o.category == cue.anchor)
        ab = rbox(anchor.box)
        aname = display_name(cue.anchor)
        steps = [pick(f"The reference {aname} is at {fmt(ab)}.", f"First find the {aname}: {fmt(ab)}.")]
        if len(candidates) > 1:
            steps.append(pick(f"There are {len(candidates)} {many}: {listed}.", f"Candidates: {listed}."))
        if cue.relation == "nearest":
            acx, acy = (ab[0] + ab[2]) / 2, (ab[1] + ab[3]) / 2
            dists = ", ".join(f"{fmt(rbox(o.box))} at {int(round(math.dist(_centre(rbox(o.box)), (acx, acy))))}" for o in candidates[:MAX_CANDIDATES])
            steps.append(f"Centre distances to it: {dists}.")
            steps.append(pick(f"The closest is {fmt(answer)}.", f"{fmt(answer)} is nearest."))
        else:
            edge = _edge(cue.relation, ab)
            where = {"left": "to its left", "right": "to its right", "above": "above it", "below": "below it"}[cue.relation]
            steps.append(pick(f"Only {fmt(answer)} lies entirely {where} ({edge}).", f"The {noun} {where} must have {edge}: {fmt(answer)}."))
        return steps
    if cue.kind == "ordinal":
        axis = "x" if cue.direction in ("left", "right") else "y"
        ordered = sorted(candidates, key=lambda o: expressions.axis_key(cue.direction, o.box))
        centres = ", ".join(f"{axis}={int(round(_centre(rbox(o.box))[0 if axis == 'x' else 1]))}" for o in ordered[:MAX_CANDIDATES])
        ordinal = ("first", "second", "third", "fourth", "fifth")[cue.rank - 1]
        return [
            pick(f"Ordering the {len(candidates)} {many} from the {cue.direction}: {_list_boxes(ordered, rbox, fmt)}.", f"From the {cue.direction}, the {many} are {_list_boxes(ordered, rbox, fmt)}."),
            f"Their centres: {centres}.",
            pick(f"The {ordinal} one is {fmt(answer)}.", f"Number {cue.rank} from the {cue.direction} is {fmt(answer)}."),
        ]
    if cue.kind == "size":
        areas = ", ".join(f"{fmt(b)} area {(b[2] - b[0]) * (b[3] - b[1])}" for b in (rbox(o.box) for o in candidates[:MAX_CANDIDATES]))
        word = "largest" if cue.extreme == "largest" else "smallest"
        return [
            pick(f"Comparing the {len(candidates)} {many}: {areas}.", f"Sizes of the {many}: {areas}."),
            pick(f"The {word} is {fmt(answer)}.", f"{fmt(answer)} is the {word}."),
        ]
    raise ValueError(f"unknown cue kind {cue.kind!r}")


_RELATION_WORDS = {"left": "left of", "right": "right of", "above": "above", "below": "below", "nearest": "closest to"}


def _brief_steps(cue, record, answer, rw, rh) -> list[str]:
    """The cue restated in a few words, without the category noun and without a number: "In the lower
    left.", "Number 2 from the left.", "The largest one.", "The one left of the storage tank.", "The only
    one." For free-form text, the region as `_free_region` finds it.

    Why so little (docs/base_model.md, session 10): the 1.8M demo model copies what the trace says into its
    box. A region's pixel span ("x 75-112") pulled the box's edges onto the span's (Pr@0.5 on absolute cues
    20.5 % against 22.2 % without it, after the same 1,200 steps), a relative cue's anchor box must be found
    in the image first and was never right, and restating the noun let it write the wrong category ("the
    smaller airplane" -> "The smallest ship.") and then box that."""
    if cue is None or cue.kind == "absolute":
        region = _free_region(record, answer, rw, rh) if cue is None else cue.region
        return [f"In the {region}."]
    if cue.kind == "unique":
        return ["The only one."]
    if cue.kind == "relative":
        return [f"The one {_RELATION_WORDS[cue.relation]} the {display_name(cue.anchor)}."]
    if cue.kind == "ordinal":
        return [f"Number {cue.rank} from the {cue.direction}."]
    if cue.kind == "size":
        return [f"The {'largest' if cue.extreme == 'largest' else 'smallest'} one."]
    raise ValueError(f"unknown cue kind {cue.kind!r}")


def _centre(b) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
