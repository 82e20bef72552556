"""The demo's best constant box (the training box that maximizes meanIoU over the records) against a scan."""

import numpy as np

from rsground_jax.cli.demo import best_constant_box
from rsground_jax.data.records import GroundingRecord
from rsground_jax.eval.metrics import box_iou


def _records(rng, n):
    out = []
    for _ in range(n):
        w, h = (int(v) for v in rng.integers(50, 900, 2))
        x1, y1 = rng.uniform(0, 0.7, 2) * (w, h)
        x2, y2 = x1 + rng.uniform(0.05, 0.3) * w, y1 + rng.uniform(0.05, 0.3) * h
        out.append(GroundingRecord("x.jpg", w, h, (x1, y1, x2, y2), "the ship", "ship"))
    return out


def _mean_iou(cand, records):
    sizes = np.array([[r.width, r.height, r.width, r.height] for r in records], np.float64)
    return float(box_iou(cand[None] * sizes, np.array([r.box for r in records], np.float64))[0].mean())


def _scan(records):
    """One candidate at a time, in the order of the records, keeping the first of equal scores."""
    best, best_score = None, -1.0
    for r0 in records:
        cand = np.round([r0.box[0] / r0.width, r0.box[1] / r0.height, r0.box[2] / r0.width, r0.box[3] / r0.height], 3)
        score = _mean_iou(cand, records)
        if score > best_score:
            best, best_score = cand, score
    return best, best_score


def test_best_constant_box_is_the_scan_maximum():
    rng = np.random.default_rng(11)
    records = _records(rng, 300)
    best, best_score = _scan(records)
    for max_pairs in (2_000_000, 5_000):  # one chunk; 18 chunks of candidates
        got = best_constant_box(records, max_pairs=max_pairs)
        assert np.isclose(_mean_iou(got, records), best_score, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(got, best)
    # A record set whose best box is known: all but one target share a box.
    same = [GroundingRecord("x.jpg", 100, 200, (10, 20, 50, 120), "the ship", "ship")] * 5
    odd = GroundingRecord("x.jpg", 100, 100, (60, 60, 90, 90), "the ship", "ship")
    np.testing.assert_array_equal(best_constant_box([odd] + same, max_pairs=4), [0.1, 0.1, 0.5, 0.6])
