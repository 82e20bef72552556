"""The referring-expression grammar of the synthetic scenes: categories, cues, phrasing, and the parser.

Referring expressions (one cue each; `Cue`)
    * ``unique``    the only object of its category: "the windmill";
    * ``absolute``  a 3x3 region of the image: corners and centre are cells, "top"/"bottom"/"left"/"right"
                    are the whole third: "the airplane in the upper left", "the ship at the bottom";
    * ``relative``  to an anchor that is the only object of another category: "the vehicle to the left of
                    the storage tank" (boxes entirely left), "above", "below", "closest to" (centres);
    * ``ordinal``   rank of the centre along an axis: "the second storage tank from the top", "the
                    leftmost ship";
    * ``size``      box area: "the larger airplane" (two of them), "the smallest vehicle" (three or more).
    The generator only uses a cue that holds with a margin (`SynthConfig.margin`, a fraction of the image
    side): the target is well inside the region / clear of the anchor / apart from its ordinal neighbours
    / at least 1.5x larger or smaller, and the other objects of the category clearly fail it.
    `resolve_expression(text, objects, width, height)` parses the text back (with no margins) and returns
    every object it fits: the property test asserts that this is exactly the target for every expression.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import numpy as np

# ------------------------------------------------------------------------------------------ categories


@dataclasses.dataclass(frozen=True)
class Category:
    name: str  # DIOR class name (XML <name>)
    noun: str  # as written in expressions
    size_factor: float  # relative to SynthConfig.object_size


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category("airplane", "airplane", 1.0),
        Category("ship", "ship", 0.9),
        Category("storagetank", "storage tank", 0.6),
        Category("vehicle", "vehicle", 0.45),
        Category("tenniscourt", "tennis court", 0.9),
        Category("basketballcourt", "basketball court", 0.95),
        Category("baseballfield", "baseball field", 1.2),
        Category("windmill", "windmill", 0.8),
    )
}
_NOUN_TO_NAME = {c.noun: c.name for c in CATEGORIES.values()}


# ------------------------------------------------------------------------------------- scene geometry

BoxI = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class SceneObject:
    category: str
    box: tuple[float, float, float, float]


def _center(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0


def _area(box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


REGIONS = ("upper left", "upper right", "lower left", "lower right", "center", "top", "bottom", "left", "right")
# (columns, rows) of the 3x3 grid each region covers: corners and centre are one cell, edges a whole third.
_REGION_CELLS = {
    "upper left": ((0,), (0,)),
    "upper right": ((2,), (0,)),
    "lower left": ((0,), (2,)),
    "lower right": ((2,), (2,)),
    "center": ((1,), (1,)),
    "top": ((0, 1, 2), (0,)),
    "bottom": ((0, 1, 2), (2,)),
    "left": ((0,), (0, 1, 2)),
    "right": ((2,), (0, 1, 2)),
}


def region_bounds(region: str, width: float, height: float) -> tuple[float, float, float, float]:
    """The part of the image a region name covers, `(x1, y1, x2, y2)` in the image's own pixels."""
    cols, rows = _REGION_CELLS[region]
    return min(cols) * width / 3, min(rows) * height / 3, (max(cols) + 1) * width / 3, (max(rows) + 1) * height / 3


def grid_cell(point, width: float, height: float) -> tuple[int, int]:
    """(column, row) of the 3x3 grid cell holding a point; the far edge belongs to the last cell."""
    return min(2, max(0, int(3 * point[0] / width))), min(2, max(0, int(3 * point[1] / height)))


def in_region(point, region: str, width, height) -> bool:
    col, row = grid_cell(point, width, height)
    cols, rows = _REGION_CELLS[region]
    return col in cols and row in rows


def _in_bounds(point, bounds, grow: float = 0.0) -> bool:
    x, y = point
    x1, y1, x2, y2 = bounds
    return x1 - grow <= x <= x2 + grow and y1 - grow <= y <= y2 + grow


RELATIONS = ("left", "right", "above", "below", "nearest")
DIRECTIONS = ("left", "right", "top", "bottom")


def relation_holds(relation: str, box, anchor) -> bool:
    """Whether `box` stands in `relation` to `anchor` (directional: entirely beyond the anchor's edge)."""
    if relation == "left":
        return box[2] < anchor[0]
    if relation == "right":
        return box[0] > anchor[2]
    if relation == "above":
        return box[3] < anchor[1]
    if relation == "below":
        return box[1] > anchor[3]
    raise ValueError(f"relation_holds does not handle {relation!r}")


def axis_key(direction: str, box) -> float:
    """Ordinal sort key: smaller = earlier counted from `direction`."""
    cx, cy = _center(box)
    return {"left": cx, "right": -cx, "top": cy, "bottom": -cy}[direction]


@dataclasses.dataclass(frozen=True)
class Cue:
    """What an expression says. `kind` in unique/absolute/relative/ordinal/size."""

    kind: str
    category: str
    region: str | None = None  # absolute
    relation: str | None = None  # relative
    anchor: str | None = None  # relative: category of the anchor
    direction: str | None = None  # ordinal
    rank: int | None = None  # ordinal, 1-based
    extreme: str | None = None  # size: "largest" | "smallest"


def cue_matches(cue: Cue, objects: Sequence[SceneObject], width: float, height: float) -> list[int]:
    """Indices of every object the cue fits, with no margins (the resolver's semantics)."""
    same = [i for i, o in enumerate(objects) if o.category == cue.category]
    if cue.kind == "unique":
        return same
    if cue.kind == "absolute":
        return [i for i in same if in_region(_center(objects[i].box), cue.region, width, height)]
    if cue.kind == "relative":
        anchors = [o for o in objects if o.category == cue.anchor]
        if len(anchors) != 1 or cue.anchor == cue.category:
            return []
        a = anchors[0].box
        if cue.relation == "nearest":
            ac = _center(a)
            d = {i: math.dist(_center(objects[i].box), ac) for i in same}
            best = min(d.values(), default=None)
            return [i for i in same if d[i] == best]
        return [i for i in same if relation_holds(cue.relation, objects[i].box, a)]
    if cue.kind == "ordinal":
        keys = {i: axis_key(cue.direction, objects[i].box) for i in same}
        return [i for i in same if 1 + sum(keys[j] < keys[i] for j in same) == cue.rank]
    if cue.kind == "size":
        areas = {i: _area(objects[i].box) for i in same}
        if not areas:
            return []
        target = max(areas.values()) if cue.extreme == "largest" else min(areas.values())
        return [i for i in same if areas[i] == target]
    raise ValueError(f"unknown cue kind {cue.kind!r}")


def valid_cues(index: int, objects: Sequence[SceneObject], width: int, height: int, margin: float) -> list[Cue]:
    """Cues that single out `objects[index]` with a margin of `margin` pixels (the generator's rule)."""
    t = objects[index]
    cat = t.category
    others = [o for i, o in enumerate(objects) if i != index and o.category == cat]
    tc = _center(t.box)
    cues: list[Cue] = []
    if not others:
        cues.append(Cue("unique", cat))
    for region in REGIONS:
        b = region_bounds(region, width, height)
        inner = (b[0] + (margin if b[0] > 0 else 0), b[1] + (margin if b[1] > 0 else 0), b[2] - (margin if b[2] < width else 0), b[3] - (margin if b[3] < height else 0))
        if _in_bounds(tc, inner) and not any(_in_bounds(_center(o.box), b, grow=margin) for o in others):
            cues.append(Cue("absolute", cat, region=region))
    for anchor in sorted({o.category for o in objects} - {cat}):  # sorted: set order varies per process
        anchors = [o for o in objects if o.category == anchor]
        if len(anchors) != 1:
            continue
        a = anchors[0].box
        ac = _center(a)
        gaps = {"left": a[0] - t.box[2], "right": t.box[0] - a[2], "above": a[1] - t.box[3], "below": t.box[1] - a[3]}
        clearly_not = {
            "left": lambda o: _center(o.box)[0] >= ac[0],
            "right": lambda o: _center(o.box)[0] <= ac[0],
            "above": lambda o: _center(o.box)[1] >= ac[1],
            "below": lambda o: _center(o.box)[1] <= ac[1],
        }
        for rel in ("left", "right", "above", "below"):
            if gaps[rel] >= margin and all(clearly_not[rel](o) for o in others):
                cues.append(Cue("relative", cat, relation=rel, anchor=anchor))
        if others:
            dt = math.dist(tc, ac)
            if all(math.dist(_center(o.box), ac) >= 1.3 * dt + margin for o in others):
                cues.append(Cue("relative", cat, relation="nearest", anchor=anchor))
    if others:
        for direction in DIRECTIONS:
            keys = sorted([axis_key(direction, o.box) for o in others] + [axis_key(direction, t.box)])
            k = axis_key(direction, t.box)
            rank = 1 + sum(x < k for x in keys)
            if rank > 5:
                continue
            neighbours = [keys[rank - 2]] if rank > 1 else []
            neighbours += [keys[rank]] if rank < len(keys) else []
            if all(abs(k - n) >= margin for n in neighbours):
                cues.append(Cue("ordinal", cat, direction=direction, rank=rank))
        ta = _area(t.box)
        if all(ta >= 1.5 * _area(o.box) for o in others):
            cues.append(Cue("size", cat, extreme="largest"))
        if all(1.5 * ta <= _area(o.box) for o in others):
            cues.append(Cue("size", cat, extreme="smallest"))
    return cues


# ------------------------------------------------------------------------------------------- language

_REGION_PHRASES = {
    "upper left": ("in the upper left", "in the top left corner", "at the upper left"),
    "upper right": ("in the upper right", "in the top right corner", "at the upper right"),
    "lower left": ("in the lower left", "in the bottom left corner", "at the lower left"),
    "lower right": ("in the lower right", "in the bottom right corner", "at the lower right"),
    "center": ("in the center", "in the middle"),
    "top": ("at the top", "in the upper part", "in the top part"),
    "bottom": ("at the bottom", "in the lower part", "in the bottom part"),
    "left": ("on the left", "on the left side", "in the left part"),
    "right": ("on the right", "on the right side", "in the right part"),
}
_RELATION_PHRASES = {
    "left": ("to the left of", "left of", "on the left side of"),
    "right": ("to the right of", "right of", "on the right side of"),
    "above": ("above",),
    "below": ("below",),
    "nearest": ("closest to", "nearest to"),
}
_ORDINALS = ("first", "second", "third", "fourth", "fifth")
_SUPERLATIVE = {"left": ("leftmost",), "right": ("rightmost",), "top": ("topmost", "uppermost"), "bottom": ("bottommost", "lowermost")}
_SIZE_WORDS = {("largest", 2): ("larger", "bigger"), ("smallest", 2): ("smaller",), ("largest", 3): ("largest", "biggest"), ("smallest", 3): ("smallest",)}
_PREFIXES = ("", "", "find ", "locate ")


def render_cue(cue: Cue, num_same: int, rng: np.random.Generator) -> str:
    """Text for a cue; `num_same` = objects of the category (chooses "larger" vs "largest")."""
    noun = CATEGORIES[cue.category].noun
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    if cue.kind == "unique":
        body = pick((f"the {noun}", f"the only {noun}", f"the {noun} in the image"))
    elif cue.kind == "absolute":
        where = pick(_REGION_PHRASES[cue.region])
        body = pick((f"the {noun} {where}", f"the {noun} located {where}", f"the {noun} {where} of the image"))
    elif cue.kind == "relative":
        body = f"the {noun} {pick(_RELATION_PHRASES[cue.relation])} the {CATEGORIES[cue.anchor].noun}"
    elif cue.kind == "ordinal":
        if cue.rank == 1 and rng.random() < 0.5:
            body = f"the {pick(_SUPERLATIVE[cue.direction])} {noun}"
        else:
            body = f"the {_ORDINALS[cue.rank - 1]} {noun} from the {cue.direction}"
    elif cue.kind == "size":
        body = f"the {pick(_SIZE_WORDS[(cue.extreme, min(num_same, 3))])} {noun}"
    else:
        raise ValueError(f"unknown cue kind {cue.kind!r}")
    prefix = pick(_PREFIXES)
    if prefix == "locate " and " located " in body:
        prefix = "find "
    return prefix + body


def _alt(options) -> str:
    return "|".join(re.escape(o) for o in sorted(options, key=len, reverse=True))


_CAT = f"(?P<cat>{_alt(_NOUN_TO_NAME)})"
_PARSERS: list[tuple[str, re.Pattern]] = [
    ("ordinal", re.compile(rf"^the (?P<ord>{_alt(_ORDINALS)}) {_CAT} from the (?P<dir>left|right|top|bottom)$")),
    ("superlative", re.compile(rf"^the (?P<sup>{_alt(w for ws in _SUPERLATIVE.values() for w in ws)}) {_CAT}$")),
    ("size", re.compile(rf"^the (?P<size>{_alt(w for ws in _SIZE_WORDS.values() for w in ws)}) {_CAT}$")),
    ("relative", re.compile(rf"^the {_CAT} (?P<rel>{_alt(p for ps in _RELATION_PHRASES.values() for p in ps)}) the (?P<anchor>{_alt(_NOUN_TO_NAME)})$")),
    ("absolute", re.compile(rf"^the {_CAT} (?:located )?(?P<where>{_alt(p for ps in _REGION_PHRASES.values() for p in ps)})(?: of the image)?$")),
    ("unique", re.compile(rf"^the (?:only )?{_CAT}(?: in the image)?$")),
]


def parse_expression(text: str) -> Cue | None:
    """The cue of a synthetic expression, or None when the text is not in the generator's grammar."""
    t = " ".join(text.lower().strip().rstrip(".").split())
    t = re.sub(r"^(?:find|locate) ", "", t)
    for kind, pattern in _PARSERS:
        m = pattern.match(t)
        if not m:
            continue
        cat = _NOUN_TO_NAME[m["cat"]]
        if kind == "ordinal":
            return Cue("ordinal", cat, direction=m["dir"], rank=_ORDINALS.index(m["ord"]) + 1)
        if kind == "superlative":
            direction = next(d for d, ws in _SUPERLATIVE.items() if m["sup"] in ws)
            return Cue("ordinal", cat, direction=direction, rank=1)
        if kind == "size":
            extreme = next(e for (e, _), ws in _SIZE_WORDS.items() if m["size"] in ws)
            return Cue("size", cat, extreme=extreme)
        if kind == "relative":
            relation = next(r for r, ps in _RELATION_PHRASES.items() if m["rel"] in ps)
            return Cue("relative", cat, relation=relation, anchor=_NOUN_TO_NAME[m["anchor"]])
        if kind == "absolute":
            region = next(r for r, ps in _REGION_PHRASES.items() if m["where"] in ps)
            return Cue("absolute", cat, region=region)
        return Cue("unique", cat)
    return None


def resolve_expression(text: str, objects: Sequence[SceneObject], width: float, height: float) -> list[int]:
    """Indices of the objects a synthetic expression fits (no margins). [] when it does not parse."""
    cue = parse_expression(text)
    return [] if cue is None else cue_matches(cue, objects, width, height)
