"""RSVG grounding metrics (the RSVG-pytorch evaluation convention).

Boxes are (x1, y1, x2, y2) in original-image pixels. IoU uses continuous areas (no +1):
`inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1))`. `Pr@t` is the fraction of expressions with
IoU strictly greater than t; `meanIoU` the mean per-sample IoU; `cumIoU` the sum of intersections over the
sum of unions. A prediction that could not be parsed (None or a row with NaN) scores IoU 0, adds 0 to the
intersections and the ground-truth area to the unions, and is counted in `num_unparsable`. A pair whose
union is 0 (two degenerate boxes) scores IoU 0.
"""

from __future__ import annotations

import functools

from collections.abc import Sequence

import numpy as np

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _as_boxes(boxes, what: str) -> np.ndarray:
    rows = [[np.nan] * 4 if b is None else list(b) for b in boxes] if not isinstance(boxes, np.ndarray) else boxes
    if len(rows) == 0:
        return np.zeros((0, 4))
    arr = np.asarray(rows, np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{what} must be boxes (x1, y1, x2, y2), got an array of shape {arr.shape}")
    return arr


def clip_boxes(boxes: np.ndarray, image_hw: np.ndarray) -> np.ndarray:
    """Clamp [n, 4] boxes to their images ([n, 2] height, width); NaN rows stay NaN."""
    boxes = np.array(boxes, np.float64)
    hw = np.asarray(image_hw, np.float64).reshape(-1, 2)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, hw[:, 1:2])
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, hw[:, 0:1])
    return boxes


def box_iou(pred, gt, xp=np):
    """Elementwise IoU of [..., 4] boxes; returns (iou, intersection, union). NaN predictions give 0 / gt area.

    `xp` is the array module: numpy for the metrics, `jax.numpy` for the rewards computed on device (the
    same formula, so the rollout IoU a GRPO run reports is the IoU evaluation reports).
    """
    valid = xp.all(xp.isfinite(pred), axis=-1)
    p = xp.where(valid[..., None], pred, 0.0)
    iw = xp.maximum(0.0, xp.minimum(p[..., 2], gt[..., 2]) - xp.maximum(p[..., 0], gt[..., 0]))
    ih = xp.maximum(0.0, xp.minimum(p[..., 3], gt[..., 3]) - xp.maximum(p[..., 1], gt[..., 1]))
    inter = xp.where(valid, iw * ih, 0.0)
    union = xp.where(valid, box_area(p, xp) + box_area(gt, xp) - inter, box_area(gt, xp))
    iou = xp.where(union > 0, inter / xp.where(union > 0, union, 1.0), 0.0)
    return iou, inter, union


def box_area(boxes, xp=np):
    """Area of [..., 4] boxes (0 for a box with x2 < x1 or y2 < y1)."""
    return xp.maximum(0.0, boxes[..., 2] - boxes[..., 0]) * xp.maximum(0.0, boxes[..., 3] - boxes[..., 1])


def box_giou(pred, gt, xp=np):
    """Generalized IoU of finite [..., 4] boxes: IoU - |C minus (A u B)| / |C|, C the smallest box enclosing
    both; in [-1, 1] (-1 when C has no area)."""
    iou, _, union = box_iou(pred, gt, xp)
    cw = xp.maximum(pred[..., 2], gt[..., 2]) - xp.minimum(pred[..., 0], gt[..., 0])
    ch = xp.maximum(pred[..., 3], gt[..., 3]) - xp.minimum(pred[..., 1], gt[..., 1])
    c = xp.maximum(cw, 0.0) * xp.maximum(ch, 0.0)
    return xp.where(c > 0, iou - (c - union) / xp.where(c > 0, c, 1.0), -1.0)


def box_diou(pred, gt, xp=np):
    """Distance IoU of finite [..., 4] boxes: IoU - |c_pred - c_gt|^2 / d_C^2, with c the centres and d_C the
    diagonal of the smallest box enclosing both; in [-1, 1] (IoU alone where that box is a point). The enclosing
    box spans all four coordinates of each axis, so an inverted box (x2 < x1) cannot push it below -1."""
    iou, _, _ = box_iou(pred, gt, xp)
    dx = (pred[..., 0] + pred[..., 2] - gt[..., 0] - gt[..., 2]) / 2
    dy = (pred[..., 1] + pred[..., 3] - gt[..., 1] - gt[..., 3]) / 2
    xs = [pred[..., 0], pred[..., 2], gt[..., 0], gt[..., 2]]
    ys = [pred[..., 1], pred[..., 3], gt[..., 1], gt[..., 3]]
    cw = functools.reduce(xp.maximum, xs) - functools.reduce(xp.minimum, xs)
    ch = functools.reduce(xp.maximum, ys) - functools.reduce(xp.minimum, ys)
    d2 = cw**2 + ch**2
    return iou - xp.where(d2 > 0, (dx**2 + dy**2) / xp.where(d2 > 0, d2, 1.0), 0.0)


def grounding_metrics(pred_boxes: Sequence | np.ndarray, gt_boxes: Sequence | np.ndarray,
                      image_hw: np.ndarray | None = None) -> dict[str, float]:
    """Pr@0.5 ... Pr@0.9, meanIoU, cumIoU (fractions in [0, 1]) plus counts.

    Args:
      pred_boxes: [n] boxes (x1, y1, x2, y2); None or NaN for an unparsable prediction.
      gt_boxes: [n, 4] ground-truth boxes.
      image_hw: optional [n, 2] original (height, width): predictions are clamped to the image first.
    """
    pred = _as_boxes(pred_boxes, "pred_boxes")
    gt = _as_boxes(gt_boxes, "gt_boxes")
    if pred.shape != gt.shape:
        raise ValueError(f"pred_boxes has {len(pred)} boxes but gt_boxes has {len(gt)}")
    if not np.isfinite(gt).all():
        raise ValueError("gt_boxes contains NaN or infinite coordinates")
    n = len(gt)
    if n == 0:
        raise ValueError("grounding_metrics needs at least one sample")
    if image_hw is not None:
        pred = clip_boxes(pred, image_hw)
    iou, inter, union = box_iou(pred, gt)
    out = {f"Pr@{t}": float(np.mean(iou > t)) for t in THRESHOLDS}
    out["meanIoU"] = float(iou.mean())
    out["cumIoU"] = float(inter.sum() / union.sum()) if union.sum() > 0 else 0.0
    out["num_samples"] = n
    out["num_unparsable"] = int((~np.isfinite(pred).all(-1)).sum())
    return out
