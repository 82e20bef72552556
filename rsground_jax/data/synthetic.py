"""Synthetic RSVG: procedural aerial scenes with positional referring expressions, written as DIOR-RSVG.

The embedded default dataset. Every image is a function of `(seed, image index, config)` only.

Scenes
    Textured ground (vegetation, arid, urban or mixed palette; low- and mid-frequency noise), field
    patchwork, roads, and a water band when ships are present. Objects of eight DIOR categories, each a
    distinct shape and colour family: airplane (light cross shape), ship (pointed hull on water), storage
    tank (white disc with ring), vehicle (small coloured rectangle with windshield), tennis court (green or
    blue with white lines), basketball court (orange/tan with centre circle), baseball field (green fan with
    brown diamond), windmill (three white blades). Objects are rotated, cast shadows, do not overlap, and
    several instances of a category appear so that position is needed to tell them apart. Boxes are the
    integer pixel extent of the drawn shape (shadows excluded).

Referring expressions: `expressions` (the cues, their rendering and their parser).

On disk (`generate_dataset`): DIOR-RSVG layout (`Annotations/NNNNN.xml`, `JPEGImages/NNNNN.jpg`,
`train.txt`/`val.txt`/`test.txt` with global object indices, `rsground_synthetic.json` with the config and
counts). Objects without an expression (no cue held for them) are written without `<description>` and
listed in no split: they are distractors, counted by the global numbering like any DIOR object, and appear
as `others` of the records. Images, not objects, are assigned to splits.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import math
import multiprocessing
import shutil
import signal
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from rsground_jax.data.expressions import CATEGORIES, Cue, SceneObject, render_cue, valid_cues
from rsground_jax.fileio import DestinationNotEmptyError, atomic_write_json, check_destination, publish
from rsground_jax.stopping import Stopped
from rsground_jax.workdir import WorkdirLock

# ----------------------------------------------------------------------------------------------- config


# Ground palettes: base colour and field colours.
_PALETTES = {
    "vegetation": ((88, 112, 62), ((70, 98, 50), (112, 128, 72), (96, 104, 58), (130, 120, 80))),
    "arid": ((176, 158, 124), ((160, 140, 104), (190, 172, 136), (150, 136, 110), (170, 150, 120))),
    "urban": ((128, 126, 122), ((110, 108, 104), (146, 142, 136), (120, 116, 108), (96, 100, 98))),
    "mixed": ((120, 128, 96), ((92, 116, 70), (150, 140, 110), (120, 120, 116), (104, 122, 84))),
}


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Difficulty knobs. Ranges are inclusive `(min, max)`.

    image_size: side lengths in pixels, drawn independently for width and height (`square=True`: once)
        among the multiples of `size_step` in the range, uniformly.
    categories: DIOR class names to draw from.
    num_categories: how many categories carry the (possibly repeated) instances.
    instances_per_category: instances of each of those categories.
    num_distractors: extra single objects of other categories.
    object_size: object length as a fraction of the shorter image side (times the category's factor).
    size_variation: per-instance size factor drawn log-uniformly in [1/v, v].
    margin: how clearly a cue must hold, as a fraction of the shorter side (at least 3 px).
    cue_weights: relative preference of the cue kinds when several hold.
    max_expressions: expressions per image at most (None: one for every object a cue holds for).
    clutter: how much of the ground's detail (fields, roads, water, texture) shows, from 0 (flat ground of
        the palette's base colour, for the first steps of a curriculum) to 1 (the full scene). The random
        draws are the same for every value, so only the ground's look changes.
    palettes: the ground palettes to draw from (names of `_PALETTES`: vegetation, arid, urban, mixed); empty:
        all of them. With one palette and no clutter every image has the same ground colour (the first stage
        of the base model's curriculum).
    """

    image_size: tuple[int, int] = (112, 224)
    square: bool = False
    size_step: int = 28
    categories: tuple[str, ...] = tuple(CATEGORIES)
    num_categories: tuple[int, int] = (1, 2)
    instances_per_category: tuple[int, int] = (1, 3)
    num_distractors: tuple[int, int] = (0, 2)
    object_size: tuple[float, float] = (0.14, 0.24)
    size_variation: float = 1.5
    margin: float = 0.03
    cue_weights: tuple[tuple[str, float], ...] = (
        ("absolute", 1.0),
        ("relative", 1.0),
        ("ordinal", 1.0),
        ("size", 0.7),
        ("unique", 0.3),
    )
    max_expressions: int | None = None
    jpeg_quality: int = 90
    clutter: float = 1.0
    palettes: tuple[str, ...] = ()

    def __post_init__(self):
        for name in self.categories:
            if name not in CATEGORIES:
                raise ValueError(f"unknown synthetic category {name!r}; known: {sorted(CATEGORIES)}")
        for field in ("image_size", "num_categories", "instances_per_category", "num_distractors", "object_size"):
            lo, hi = getattr(self, field)
            if lo > hi or lo < 0:
                raise ValueError(f"SynthConfig.{field} must be an increasing (min, max) pair, got {(lo, hi)}")
        if self.image_size[0] < max(self.size_step, 32):
            raise ValueError(f"image sides must be at least {max(self.size_step, 32)} px, got {self.image_size}")
        step = max(1, self.size_step)
        if -(-self.image_size[0] // step) > self.image_size[1] // step:
            raise ValueError(f"SynthConfig.image_size {self.image_size} holds no multiple of size_step {self.size_step}")
        if self.num_categories[0] < 1:
            raise ValueError("num_categories must allow at least one category")
        if self.size_variation < 1.0:
            raise ValueError(f"size_variation must be >= 1, got {self.size_variation}")
        if not 0.0 <= self.clutter <= 1.0:
            raise ValueError(f"SynthConfig.clutter must lie in [0, 1], got {self.clutter}")
        for name in self.palettes:
            if name not in _PALETTES:
                raise ValueError(f"unknown ground palette {name!r}; known: {sorted(_PALETTES)}")
        if not 0 < self.object_size[1] <= 0.6:
            raise ValueError(f"object_size fractions must lie in (0, 0.6], got {self.object_size}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "SynthConfig":
        data = dict(data)
        for k in ("image_size", "num_categories", "instances_per_category", "num_distractors", "object_size", "categories",
                  "palettes"):
            if k in data:
                data[k] = tuple(data[k])
        if "cue_weights" in data:
            data["cue_weights"] = tuple(tuple(p) for p in data["cue_weights"])
        return cls(**data)


# The demo of issue 4: 112-224 px (16-64 image tokens at 28 px per token), few large objects, the four most
# distinct categories.
_TINY = SynthConfig(
    image_size=(112, 224),
    size_step=28,
    categories=("airplane", "ship", "storagetank", "tenniscourt"),
    num_categories=(1, 2),
    instances_per_category=(1, 3),
    num_distractors=(0, 1),
    object_size=(0.16, 0.26),
)

PRESETS: dict[str, SynthConfig] = {
    "tiny": _TINY,
    # `rsground demo` and the base model's last stage: the tiny preset on plain ground of one colour (no clutter,
    # one palette, as in every stage of the base's curriculum), 112x112, 2-3 instances of a category told apart
    # by position, maybe one of another category.
    "demo": dataclasses.replace(_TINY, image_size=(112, 112), instances_per_category=(2, 3), object_size=(0.2, 0.35),
                                clutter=0.0, palettes=("urban",)),
    "small": SynthConfig(
        image_size=(224, 448),
        num_categories=(1, 3),
        instances_per_category=(1, 4),
        num_distractors=(0, 2),
        object_size=(0.08, 0.16),
    ),
    # DIOR-RSVG-like: 800x800, small objects, many instances and distractors.
    "dior": SynthConfig(
        image_size=(800, 800),
        square=True,
        size_step=1,
        num_categories=(1, 3),
        instances_per_category=(1, 5),
        num_distractors=(0, 4),
        object_size=(0.04, 0.10),
        margin=0.02,
    ),
}

# ------------------------------------------------------------------------------------------ rendering

_WATER = (46, 78, 96)


def _rot(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _circle(cx, cy, r, n=24) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], -1)


def _rect(x0, y0, x1, y1) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def _jitter(rng, color, amount=14):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def _shape(category: str, s: float, rng: np.random.Generator) -> tuple[list[tuple[np.ndarray, tuple]], bool]:
    """Polygons (local coordinates, unrotated, centred near 0) with colours; and whether it casts a shadow."""
    parts: list[tuple[np.ndarray, tuple]] = []
    if category == "airplane":
        body = _jitter(rng, (226, 228, 230), 18)
        parts.append((np.array([[-0.5, -0.05], [0.38, -0.06], [0.5, 0], [0.38, 0.06], [-0.5, 0.05]]) * s, body))
        for sgn in (-1, 1):
            parts.append((np.array([[0.12, 0.0], [-0.1, 0.5], [-0.2, 0.5], [-0.08, 0.0]]) * [1, sgn] * s, body))
            parts.append((np.array([[-0.36, 0.0], [-0.46, 0.18], [-0.52, 0.18], [-0.47, 0.0]]) * [1, sgn] * s, body))
        return parts, True
    if category == "ship":
        hull = [(236, 236, 232), (150, 152, 156), (120, 44, 40), (40, 52, 86)][int(rng.integers(4))]
        parts.append((np.array([[-0.5, -0.1], [0.3, -0.1], [0.5, 0.0], [0.3, 0.1], [-0.5, 0.1]]) * s, _jitter(rng, hull)))
        parts.append((_rect(-0.38, -0.06, -0.1, 0.06) * s, _jitter(rng, (210, 206, 196))))
        return parts, False
    if category == "storagetank":
        base = _jitter(rng, (222, 222, 218), 16)
        parts.append((_circle(0, 0, 0.5 * s), base))
        parts.append((_circle(0, 0, 0.4 * s), tuple(int(c * 0.86) for c in base)))
        parts.append((_circle(0, 0, 0.08 * s, 12), tuple(int(c * 0.7) for c in base)))
        return parts, True
    if category == "vehicle":
        colors = [(200, 30, 30), (30, 60, 170), (235, 235, 235), (25, 25, 25), (220, 190, 30), (90, 90, 96)]
        parts.append((_rect(-0.5, -0.22, 0.5, 0.22) * s, _jitter(rng, colors[int(rng.integers(len(colors)))], 10)))
        parts.append((_rect(0.12, -0.17, 0.3, 0.17) * s, (40, 48, 56)))
        return parts, False
    if category in ("tenniscourt", "basketballcourt"):
        half_h = 0.26 if category == "tenniscourt" else 0.3
        if category == "tenniscourt":
            court = [(52, 120, 70), (46, 86, 150), (60, 132, 84)][int(rng.integers(3))]
        else:
            court = [(196, 112, 56), (184, 150, 100), (150, 70, 60)][int(rng.integers(3))]
        lw = max(0.025, 1.0 / max(s, 1.0))
        parts.append((_rect(-0.5, -half_h, 0.5, half_h) * s, (240, 240, 240)))
        parts.append((_rect(-0.5 + lw, -half_h + lw, 0.5 - lw, half_h - lw) * s, _jitter(rng, court, 10)))
        parts.append((_rect(-lw / 2, -half_h, lw / 2, half_h) * s, (240, 240, 240)))
        if category == "basketballcourt":
            parts.append((_circle(0, 0, 0.09 * s, 16), (240, 240, 240)))
            parts.append((_circle(0, 0, 0.09 * s - lw * s, 16), _jitter(rng, court, 6)))
        return parts, False
    if category == "baseballfield":
        a = np.linspace(-np.pi / 2, 0, 16)
        fan = np.concatenate([[[0.0, 0.0]], np.stack([np.cos(a), np.sin(a)], -1)]) * s + [-0.5 * s, 0.5 * s]
        parts.append((fan, _jitter(rng, (84, 140, 70))))
        d = 0.32 * s
        diamond = np.array([[0, 0], [d, 0], [d, -d], [0, -d]]) + [-0.5 * s + 0.06 * s, 0.5 * s - 0.06 * s]
        parts.append((diamond, _jitter(rng, (170, 120, 80))))
        return parts, False
    if category == "windmill":
        white = _jitter(rng, (236, 236, 236), 10)
        phase = rng.uniform(0, 2 * np.pi / 3)
        for k in range(3):
            blade = np.array([[0.0, -0.035], [0.5, -0.01], [0.5, 0.01], [0.0, 0.035]]) * s
            parts.append((_rot(blade, phase + k * 2 * np.pi / 3), white))
        parts.append((_circle(0, 0, 0.06 * s, 12), white))
        return parts, True
    raise ValueError(f"no shape for category {category!r}")


@dataclasses.dataclass
class SynthImage:
    """One generated image: pixels, its objects and their expressions (None: no cue held)."""

    index: int
    image: np.ndarray  # [H, W, 3] uint8
    objects: list[SceneObject]
    expressions: list[str | None]
    cues: list[Cue | None]

    @property
    def width(self) -> int:
        return self.image.shape[1]

    @property
    def height(self) -> int:
        return self.image.shape[0]


def _noise(rng, h, w, cell) -> np.ndarray:
    small = (rng.random((h // cell + 2, w // cell + 2)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w + cell, h + cell), Image.Resampling.BILINEAR), np.float32)[:h, :w] / 255.0


def _boxes_overlap(a, b, gap) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def generate_image(config: SynthConfig, seed: int, index: int) -> SynthImage:
    """Image `index` of the dataset with this seed: a pure function of its arguments."""
    rng = np.random.default_rng([seed, index])
    lo, hi = config.image_size
    step = max(1, config.size_step)

    def side():  # a multiple of size_step in [lo, hi], each equally likely
        return step * int(rng.integers(-(-lo // step), hi // step + 1))

    width = side()
    height = width if config.square else side()
    short = min(width, height)

    # ---- what to place
    pool = list(config.categories)
    n_cat = min(int(rng.integers(config.num_categories[0], config.num_categories[1] + 1)), len(pool))
    chosen = [pool[i] for i in rng.permutation(len(pool))[:n_cat]]
    rest = [c for c in pool if c not in chosen]
    wanted: list[tuple[str, float]] = []
    for cat in chosen:
        base = rng.uniform(*config.object_size) * short * CATEGORIES[cat].size_factor
        for _ in range(int(rng.integers(config.instances_per_category[0], config.instances_per_category[1] + 1))):
            v = math.exp(rng.uniform(-1, 1) * math.log(config.size_variation))
            wanted.append((cat, base * v))
    for _ in range(int(rng.integers(config.num_distractors[0], config.num_distractors[1] + 1))):
        if rest:
            cat = rest[int(rng.integers(len(rest)))]
            wanted.append((cat, rng.uniform(*config.object_size) * short * CATEGORIES[cat].size_factor))
    wanted.sort(key=lambda cs: -cs[1])

    palette_names = list(config.palettes or _PALETTES)
    palette_name = palette_names[int(rng.integers(len(palette_names)))]
    base_color, field_colors = _PALETTES[palette_name]
    canvas = Image.new("RGB", (width, height), base_color)
    draw = ImageDraw.Draw(canvas)

    # ---- ground: fields, roads, water
    for _ in range(int(rng.integers(2, 7))):
        x0, y0 = rng.uniform(-0.2, 0.9, 2) * [width, height]
        fw, fh = rng.uniform(0.15, 0.6, 2) * [width, height]
        pts = _rot(_rect(-fw / 2, -fh / 2, fw / 2, fh / 2), rng.uniform(-0.3, 0.3)) + [x0 + fw / 2, y0 + fh / 2]
        draw.polygon([tuple(p) for p in pts], fill=_jitter(rng, field_colors[int(rng.integers(len(field_colors)))], 8))
    has_ships = any(c == "ship" for c, _ in wanted)
    water = None
    if has_ships:
        side_name = ("left", "right", "top", "bottom")[int(rng.integers(4))]
        frac = rng.uniform(0.3, 0.45)
        water = {
            "left": (0, 0, int(width * frac), height),
            "right": (width - int(width * frac), 0, width, height),
            "top": (0, 0, width, int(height * frac)),
            "bottom": (0, height - int(height * frac), width, height),
        }[side_name]
    for _ in range(int(rng.integers(0, 3))):
        horizontal = rng.random() < 0.5
        pos = rng.uniform(0.1, 0.9) * (height if horizontal else width)
        rw = max(2, int(rng.uniform(0.02, 0.045) * short))
        slope = rng.uniform(-0.15, 0.15)
        if horizontal:
            p0, p1 = (0, pos), (width, pos + slope * width)
        else:
            p0, p1 = (pos, 0), (pos + slope * height, height)
        draw.line([p0, p1], fill=_jitter(rng, (118, 118, 116), 10), width=rw)
        if rw >= 6:
            draw.line([p0, p1], fill=(200, 200, 190), width=1)
    if water is not None:
        draw.rectangle([water[0], water[1], water[2] - 1, water[3] - 1], fill=_jitter(rng, _WATER, 8))

    # texture: luminance modulation at two scales plus grain
    tex = 1.0 + 0.22 * (_noise(rng, height, width, max(8, short // 6)) - 0.5) + 0.12 * (_noise(rng, height, width, 4) - 0.5)
    tex += rng.normal(0.0, 0.025, (height, width)).astype(np.float32)
    ground = np.asarray(canvas, np.float32) * tex[..., None]
    if config.clutter < 1.0:
        flat = np.asarray(base_color, np.float32)
        ground = flat + np.float32(config.clutter) * (ground - flat)

    # ---- objects: place, then shadows, then shapes
    margin_px = max(3.0, config.margin * short)
    placed: list[tuple[str, list[tuple[np.ndarray, tuple]], bool, tuple[int, int, int, int]]] = []
    for cat, size in wanted:
        for _attempt in range(40):
            parts, shadow = _shape(cat, size, rng)
            angle = rng.uniform(0, 2 * np.pi)
            if cat in ("tenniscourt", "basketballcourt", "baseballfield"):
                angle = int(rng.integers(4)) * np.pi / 2 + rng.uniform(-0.25, 0.25)
            rotated = [(_rot(p, angle), c) for p, c in parts]
            allpts = np.concatenate([p for p, _ in rotated])
            lo_xy, hi_xy = allpts.min(0), allpts.max(0)
            region = (0, 0, width, height)
            if cat == "ship":
                region = water
            cx = rng.uniform(region[0] - lo_xy[0] + 1, region[2] - hi_xy[0] - 2) if region[2] - hi_xy[0] - 2 > region[0] - lo_xy[0] + 1 else None
            cy = rng.uniform(region[1] - lo_xy[1] + 1, region[3] - hi_xy[1] - 2) if region[3] - hi_xy[1] - 2 > region[1] - lo_xy[1] + 1 else None
            if cx is None or cy is None:
                continue
            pts = [(p + [cx, cy], c) for p, c in rotated]
            allpts = allpts + [cx, cy]
            box = (
                int(math.floor(allpts[:, 0].min() + 0.5)),
                int(math.floor(allpts[:, 1].min() + 0.5)),
                int(math.floor(allpts[:, 0].max() + 0.5)) + 1,
                int(math.floor(allpts[:, 1].max() + 0.5)) + 1,
            )
            if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
                continue
            if any(_boxes_overlap(box, q[3], 3) for q in placed):
                continue
            if water is not None and cat != "ship" and _boxes_overlap(box, water, 2):
                continue
            placed.append((cat, pts, shadow, box))
            break

    shadow_img = Image.new("L", (width, height), 0)
    sdraw = ImageDraw.Draw(shadow_img)
    sun = rng.uniform(0, 2 * np.pi)
    for cat, pts, shadow, box in placed:
        if shadow:
            off = np.array([math.cos(sun), math.sin(sun)]) * 0.08 * max(box[2] - box[0], box[3] - box[1])
            for p, _ in pts:
                sdraw.polygon([tuple(q) for q in p + off], fill=255)
    ground *= 1.0 - 0.45 * (np.asarray(shadow_img, np.float32)[..., None] / 255.0)
    image = Image.fromarray(np.clip(ground, 0, 255).astype(np.uint8))
    odraw = ImageDraw.Draw(image)
    for cat, pts, _, _ in placed:
        for p, color in pts:
            odraw.polygon([tuple(q) for q in p], fill=color)

    objects = [SceneObject(cat, tuple(float(v) for v in box)) for cat, _, _, box in placed]
    expressions, cues = _choose_expressions(objects, width, height, margin_px, config, rng)
    return SynthImage(index, np.asarray(image), objects, expressions, cues)


def _choose_expressions(objects, width, height, margin_px, config: SynthConfig, rng):
    weights = dict(config.cue_weights)
    expressions: list[str | None] = [None] * len(objects)
    cues: list[Cue | None] = [None] * len(objects)
    order = rng.permutation(len(objects))
    count = 0
    for i in order:
        if config.max_expressions is not None and count >= config.max_expressions:
            break
        options = valid_cues(int(i), objects, width, height, margin_px)
        kinds = sorted({c.kind for c in options if weights.get(c.kind, 0) > 0})
        if not kinds:
            continue
        p = np.array([weights[k] for k in kinds], float)
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
        of_kind = [c for c in options if c.kind == kind]
        cue = of_kind[int(rng.integers(len(of_kind)))]
        num_same = sum(o.category == cue.category for o in objects)
        cues[i] = cue
        expressions[i] = render_cue(cue, num_same, rng)
        count += 1
    return expressions, cues


# ------------------------------------------------------------------------------------ DIOR-RSVG output


def dior_xml(filename: str, width: int, height: int, objects: Sequence[SceneObject], expressions: Sequence[str | None]) -> bytes:
    """A DIOR-RSVG annotation: one <object> per object, <description> only where there is an expression.

    Child order of <object> is name, pose, bndbox, description, as in DIOR-RSVG (its reference loader
    reads them by position).
    """
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "rsground-synthetic"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for obj, expr in zip(objects, expressions):
        o = ET.SubElement(root, "object")
        ET.SubElement(o, "name").text = obj.category
        ET.SubElement(o, "pose").text = "Unspecified"
        bb = ET.SubElement(o, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box):
            ET.SubElement(bb, key).text = str(int(value))
        if expr is not None:
            ET.SubElement(o, "description").text = expr
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def _render_files(args) -> tuple[int, bytes, bytes, list[bool]]:
    config, seed, index, stem = args
    img = generate_image(config, seed, index)
    buf = io.BytesIO()
    Image.fromarray(img.image).save(buf, format="JPEG", quality=config.jpeg_quality)
    xml = dior_xml(f"{stem}.jpg", img.width, img.height, img.objects, img.expressions)
    return index, buf.getvalue(), xml, [e is not None for e in img.expressions]


@dataclasses.dataclass
class SynthSummary:
    out_dir: str
    num_images: int
    num_objects: int
    num_expressions: int
    split_sizes: dict[str, int]


SYNTH_META = "rsground_synthetic.json"
PARTIAL_META = "rsground_synthetic.partial.json"


def generate_dataset(
    out_dir,
    num_images: int,
    seed: int = 0,
    config: SynthConfig | str = "tiny",
    splits: Sequence[tuple[str, float]] = (("train", 0.8), ("val", 0.1), ("test", 0.1)),
    workers: int = 0,
    *,
    stop=None,
    replace: bool = False,
) -> SynthSummary:
    """Write a synthetic dataset in the DIOR-RSVG layout (see the module docstring). Deterministic.

    Images are assigned to splits by a seeded permutation cut at the given fractions (so small sets still
    get every split when the fractions allow). `workers > 0` renders in that many processes; the files are
    the same either way.

    The set is built in a hidden folder beside `out_dir` (`.NAME.partial`) and renamed to `out_dir` when
    complete, so a folder under that name is always a whole dataset. `out_dir` must be missing or empty, or,
    with `replace`, hold a synthetic set: its dataset files (Annotations/, JPEGImages/, split files,
    rsground_synthetic.json) are replaced and nothing else there is touched. `stop`: an object whose
    `.requested` turns true to stop (`rsground_jax.stopping`); the images written so far stay in the partial
    folder, `Stopped` is raised, and a later call with the same arguments continues from them (with other
    arguments it starts over).
    """
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown synthetic preset {config!r}; known: {sorted(PRESETS)}")
        config = PRESETS[config]
    if num_images <= 0:
        raise ValueError(f"num_images must be positive, got {num_images}")
    if workers < 0:
        raise ValueError(f"workers must be 0 (render here) or a positive number of processes, got {workers}")
    total = sum(f for _, f in splits)
    if not splits or any(f < 0 for _, f in splits) or total <= 0:
        raise ValueError(f"split fractions must be non-negative and not all zero, got {list(splits)}")
    out = Path(out_dir).absolute()
    old_set = replace and (out / SYNTH_META).is_file()
    if old_set:
        _check_replaceable(out, [f"{name}.txt" for name, _ in splits])
    else:
        check_destination(out, "dataset")
    partial = out.parent / f".{out.name}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    with WorkdirLock(partial):
        meta = {"seed": seed, "num_images": num_images, "config": config.to_json(), "splits": [list(s) for s in splits]}
        other_args = (partial / PARTIAL_META).is_file() and json.loads((partial / PARTIAL_META).read_text()) != meta
        for child in ("Annotations", "JPEGImages"):  # an interrupted run's files cut short, or all its files
            for f in (partial / child).glob("*" if other_args else "*.tmp"):
                f.unlink()
        atomic_write_json(partial / PARTIAL_META, meta)
        (partial / "Annotations").mkdir(exist_ok=True)
        (partial / "JPEGImages").mkdir(exist_ok=True)
        digits = max(5, len(str(num_images)))
        jobs = [(config, seed, i, f"{i + 1:0{digits}d}") for i in range(num_images)]
        described = {i: d for i, d in ((job[2], _described(partial, job[3])) for job in jobs) if d is not None}
        todo = [job for job in jobs if job[2] not in described]

        perm = np.random.default_rng([seed, 2**31 - 1]).permutation(num_images)
        split_of = np.empty(num_images, dtype=object)
        bounds = np.round(np.cumsum([f / total for _, f in splits]) * num_images).astype(int)
        start = 0
        for (name, _), end in zip(splits, bounds):
            split_of[perm[start:end]] = name
            start = end

        if workers > 0 and todo:
            # Not fork: a caller that has started JAX (or any threads) would fork them mid-flight, which can
            # deadlock the children (Python 3.12 warns of it). forkserver's workers fork from a clean server.
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                                          initializer=_ignore_ctrl_c)
            try:
                complete = _write_all(partial, todo, pool.map(_render_files, todo, chunksize=16), described, stop)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        else:
            complete = _write_all(partial, todo, map(_render_files, todo), described, stop)
        if not complete:
            raise Stopped(f"stopped after {len(described)} of {num_images} synthetic images, kept in {partial}; the "
                          "same call continues from them")

        members: dict[str, list[int]] = {name: [] for name, _ in splits}
        g = 0
        num_objects = 0
        for i in range(num_images):
            for has_expr in described[i]:
                if has_expr:
                    members[split_of[i]].append(g)
                g += 1
            num_objects += len(described[i])
        for name, idx in members.items():
            (partial / f"{name}.txt").write_text("".join(f"{v}\n" for v in idx))
        summary = SynthSummary(str(out), num_images, num_objects, sum(map(len, members.values())), {k: len(v) for k, v in members.items()})
        meta = {"generator": "rsground_jax.data.synthetic", "seed": seed, "config": config.to_json(), "splits": [list(s) for s in splits], **dataclasses.asdict(summary)}
        meta.pop("out_dir")
        (partial / SYNTH_META).write_text(json.dumps(meta, indent=1) + "\n")
        (partial / PARTIAL_META).unlink()
        (partial / "rsground.lock").unlink()
        if old_set:
            _replace_set(out, partial)
        else:
            publish(partial, out, "dataset")
    return summary


def _described(folder: Path, stem: str) -> list[bool] | None:
    """Which objects of an already written image have an expression; None when the image is not complete
    (its XML, written after its JPEG, is missing)."""
    xml = folder / "Annotations" / f"{stem}.xml"
    if not (xml.is_file() and (folder / "JPEGImages" / f"{stem}.jpg").is_file()):
        return None
    return [o.find("description") is not None for o in ET.parse(xml).getroot().findall("object")]


def _ignore_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides how to stop


def _old_parts(out: Path) -> set[str]:
    old = json.loads((out / SYNTH_META).read_text())
    return {"Annotations", "JPEGImages", SYNTH_META, *(f"{name}.txt" for name, _ in old.get("splits", []))}


def _check_replaceable(out: Path, split_files: list[str]) -> None:
    """Refuse to replace a set when a file of the new one would take the name of a file that is not the old
    set's (the user's own)."""
    old = _old_parts(out)
    clash = [n for n in split_files if (out / n).exists() and n not in old]
    if clash:
        raise DestinationNotEmptyError(f"{out / clash[0]}: not a file of the synthetic set there, and the new set "
                                       "would write it; move it or choose another folder")


def _replace_set(out: Path, new: Path) -> None:
    """Swap the synthetic set in `out` for the one in `new`: the old set's own files go, nothing else."""
    parts = _old_parts(out)
    trash = out.parent / f".{out.name}.replaced"
    shutil.rmtree(trash, ignore_errors=True)
    trash.mkdir()
    for name in parts:
        if (out / name).exists():
            (out / name).rename(trash / name)
    for child in new.iterdir():
        child.rename(out / child.name)  # `generate_dataset` checked that no file of the user's has this name
    new.rmdir()
    shutil.rmtree(trash)


def _write_all(out: Path, jobs, results, described: dict[int, list[bool]], stop) -> bool:
    """Write each rendered image (JPEG, then XML: an image counts as written once its XML is there), adding
    it to `described`; False when `stop` asked to stop first."""
    for k, ((_, _, index, stem), (ri, jpeg, xml, has)) in enumerate(zip(jobs, results)):
        assert ri == index
        _write_file(out / "JPEGImages" / f"{stem}.jpg", jpeg)
        _write_file(out / "Annotations" / f"{stem}.xml", xml)
        described[index] = has
        if stop is not None and stop.requested and k < len(jobs) - 1:
            return False
    return True


def _write_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
