"""Evaluation: RSVG grounding metrics."""

from .metrics import THRESHOLDS, box_iou, clip_boxes, grounding_metrics

__all__ = ["THRESHOLDS", "box_iou", "clip_boxes", "grounding_metrics"]
