"""The demo's table by kind of cue: each group scored alone, positional = absolute + ordinal + relative."""

import numpy as np
import pytest

from rsground_jax.eval.cues import metrics_by_cue
from rsground_jax.data.records import GroundingRecord
from rsground_jax.eval.metrics import grounding_metrics

EXPRESSIONS = {
    "absolute": "the airplane in the middle of the image",
    "ordinal": "the third airplane from the left",
    "relative": "the ship above the storage tank",
    "size": "find the smaller airplane",
    "unique": "the storage tank",
    "free": "a grey plane parked near the hangar",
}


def test_each_kind_is_scored_on_its_own_records(rng):
    kinds = [k for k in EXPRESSIONS for _ in range(int(rng.integers(2, 6)))]
    rng.shuffle(kinds)
    records, preds = [], []
    for kind in kinds:
        w, h = (int(v) for v in rng.integers(60, 800, 2))
        x1, y1 = rng.uniform(0, 0.6, 2) * (w, h)
        box = (x1, y1, x1 + rng.uniform(0.1, 0.4) * w, y1 + rng.uniform(0.1, 0.4) * h)
        records.append(GroundingRecord("x.jpg", w, h, box, EXPRESSIONS[kind], "airplane"))
        draw = rng.uniform()
        if draw < 0.15:
            pred = None  # unparsable
        else:  # a jittered box, some far enough off to miss, some past the image edge (clipped)
            pred = list(np.asarray(box) + rng.normal(0, 0.15 * min(w, h), 4))
        preds.append({"pred_box": pred})

    got = metrics_by_cue(records, preds)

    assert set(got) == set(EXPRESSIONS) | {"positional"}
    for kind in [*EXPRESSIONS, "positional"]:
        want = ("absolute", "ordinal", "relative") if kind == "positional" else (kind,)
        idx = [i for i, k in enumerate(kinds) if k in want]
        direct = grounding_metrics([preds[i]["pred_box"] for i in idx], [records[i].box for i in idx],
                                   [(records[i].height, records[i].width) for i in idx])
        assert got[kind] == direct, kind
        assert got[kind]["num_samples"] == len(idx)


def test_rows_must_be_the_records():
    record = GroundingRecord("x.jpg", 100, 100, (1, 2, 30, 40), EXPRESSIONS["size"], "airplane")
    with pytest.raises(ValueError, match="1 records but 2 predictions"):
        metrics_by_cue([record], [{"pred_box": None}, {"pred_box": None}])
    # evaluate()'s rows name their expression: a row out of order would score under the wrong kind of cue
    with pytest.raises(ValueError, match="prediction 0 is for 'the ship above the storage tank'"):
        metrics_by_cue([record], [{"pred_box": None, "expression": EXPRESSIONS["relative"]}])
    ok = metrics_by_cue([record], [{"pred_box": [1, 2, 30, 40], "expression": EXPRESSIONS["size"]}])
    assert ok["size"]["Pr@0.5"] == 1.0
