"""Pictures of predictions: ground truth in green, prediction in red, on the original image."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from ..fileio import atomic_path
from ..models.processor import to_rgb

GT_COLOR, PRED_COLOR = (40, 220, 60), (235, 40, 40)


def draw_boxes(image: Image.Image, gt=None, pred=None, width: int = 2) -> Image.Image:
    out = to_rgb(image).copy()
    d = ImageDraw.Draw(out)
    for box, color in ((gt, GT_COLOR), (pred, PRED_COLOR)):
        if box is not None:
            x1, y1, x2, y2 = (float(v) for v in box)  # a predicted box may come inverted
            d.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=color, width=width)
    return out


def grid(rows: list[dict], path: str, cell: int = 224, columns: int = 4) -> None:
    """A PNG grid of `rows` (dicts with image, gt_box, pred_box, iou), each drawn and scaled to `cell` px;
    written whole or not at all."""
    n = len(rows)
    if n == 0:
        return
    cols = min(columns, n)
    canvas = Image.new("RGB", (cols * cell, math.ceil(n / cols) * (cell + 14)), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    for i, r in enumerate(rows):
        with Image.open(r["image"]) as src:
            scale = cell / max(src.size)  # fit the cell, up or down; boxes are drawn after scaling
            size = (max(1, round(src.width * scale)), max(1, round(src.height * scale)))
            img = draw_boxes(to_rgb(src).resize(size, Image.Resampling.BICUBIC),
                             *(None if b is None else [v * scale for v in b] for b in (r.get("gt_box"), r.get("pred_box"))))
        x, y = (i % cols) * cell, (i // cols) * (cell + 14)
        canvas.paste(img, (x, y))
        d.text((x + 2, y + img.height), f"IoU {r.get('iou', 0):.2f}", fill=(0, 0, 0))
    with atomic_path(path) as tmp:
        canvas.save(tmp)
