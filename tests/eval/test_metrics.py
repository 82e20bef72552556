"""grounding_metrics against hand-computed cases (RSVG convention: continuous areas, strict thresholds)."""

import numpy as np
import pytest

from rsground_jax.eval import grounding_metrics


def test_hand_computed_cases():
    gt = [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [2, 2, 4, 4], [0, 0, 4, 4]]
    pred = [
        [0, 0, 10, 10],    # identical: IoU 1
        [10, 0, 20, 10],   # touching along an edge: intersection 0
        [0, 0, 5, 10],     # contained, half the area: IoU exactly 0.5, not counted at 0.5
        [2, 2, 8, 8],      # contained: 36 / 100 = 0.36
        [0, 0, 10, 10],    # contains the target: 4 / 100 = 0.04
        [1, 1, 1, 3],      # zero-area prediction inside: IoU 0
    ]
    m = grounding_metrics(pred, gt)
    ious = [1.0, 0.0, 0.5, 0.36, 0.04, 0.0]
    assert m["Pr@0.5"] == pytest.approx(1 / 6)  # IoU == 0.5 is not > 0.5
    assert m["Pr@0.9"] == pytest.approx(1 / 6)
    assert m["meanIoU"] == pytest.approx(sum(ious) / 6)
    inter = 100 + 0 + 50 + 36 + 4 + 0
    union = 100 + 200 + 100 + 100 + 100 + 16
    assert m["cumIoU"] == pytest.approx(inter / union)
    assert m["num_unparsable"] == 0 and m["num_samples"] == 6


def test_iou_exactly_at_each_threshold_is_not_counted():
    gt = [[0, 0, 100, 10]] * 5
    pred = [[0, 0, w, 10] for w in (50, 60, 70, 80, 90)]  # IoU = w / 100, exactly the threshold
    m = grounding_metrics(pred, gt)
    assert m["Pr@0.5"] == pytest.approx(4 / 5)  # 0.6..0.9 are > 0.5
    assert m["Pr@0.6"] == pytest.approx(3 / 5)
    assert m["Pr@0.9"] == 0.0


def test_unparsable_predictions_score_zero_and_are_counted():
    gt = [[0, 0, 10, 10], [5, 5, 15, 25]]
    m = grounding_metrics([None, [5, 5, 15, 25]], gt)
    assert m["num_unparsable"] == 1
    assert m["meanIoU"] == pytest.approx(0.5) and m["Pr@0.5"] == pytest.approx(0.5)
    assert m["cumIoU"] == pytest.approx(200 / (100 + 200))
    m2 = grounding_metrics(np.array([[np.nan] * 4, [5, 5, 15, 25]]), gt)
    assert m2 == m


def test_clamping_to_the_image():
    gt = [[80, 80, 100, 100]]
    m = grounding_metrics([[80, 80, 130, 130]], gt, image_hw=[[100, 100]])
    assert m["meanIoU"] == pytest.approx(1.0)
    m = grounding_metrics([[80, 80, 130, 130]], gt)
    assert m["meanIoU"] == pytest.approx(400 / 2500)


def test_degenerate_pairs_and_bad_input():
    assert grounding_metrics([[1, 1, 1, 1]], [[1, 1, 1, 1]])["meanIoU"] == 0.0
    with pytest.raises(ValueError, match="2 boxes but gt_boxes has 1"):
        grounding_metrics([[0, 0, 1, 1], [0, 0, 1, 1]], [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="at least one"):
        grounding_metrics([], [])


def test_random_boxes_against_a_direct_loop(rng):
    n = 200
    a = rng.uniform(0, 50, (n, 2)); gt = np.concatenate([a, a + rng.uniform(0, 30, (n, 2))], 1)
    b = rng.uniform(0, 50, (n, 2)); pr = np.concatenate([b, b + rng.uniform(0, 30, (n, 2))], 1)
    ious, I, U = [], 0.0, 0.0
    for p, g in zip(pr, gt):
        iw = max(0.0, min(p[2], g[2]) - max(p[0], g[0])); ih = max(0.0, min(p[3], g[3]) - max(p[1], g[1]))
        inter = iw * ih
        union = (p[2] - p[0]) * (p[3] - p[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
        ious.append(inter / union if union > 0 else 0.0); I += inter; U += union
    m = grounding_metrics(pr, gt)
    assert m["meanIoU"] == pytest.approx(np.mean(ious))
    assert m["cumIoU"] == pytest.approx(I / U)
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        assert m[f"Pr@{t}"] == pytest.approx(np.mean(np.array(ious) > t))
