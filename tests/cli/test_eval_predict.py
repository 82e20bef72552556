"""`rsground eval` and `rsground predict` end to end, with the packaged base on fresh synthetic scenes: the
files they write agree with each other and with IoU computed here by hand; the batch split over devices
gives the same predictions; predict gives eval's answer for the same expression."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from rsground_jax.cli.main import main
from rsground_jax.data import load_split
from rsground_jax.data.synthetic import generate_dataset
from rsground_jax.eval.evaluate import parse_prediction

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIMIT = 10


def _hand_iou(pred, gt, h, w):
    """RSVG IoU of one prediction (None scores 0), clamped to the image first; also (inter, union)."""
    gx1, gy1, gx2, gy2 = gt
    g_area = (gx2 - gx1) * (gy2 - gy1)
    if pred is None:
        return 0.0, 0.0, g_area
    x1, x2 = (min(max(v, 0.0), w) for v in (pred[0], pred[2]))
    y1, y2 = (min(max(v, 0.0), h) for v in (pred[1], pred[3]))
    inter = max(0.0, min(x2, gx2) - max(x1, gx1)) * max(0.0, min(y2, gy2) - max(y1, gy1))
    union = max(0.0, x2 - x1) * max(0.0, y2 - y1) + g_area - inter
    return (inter / union if union > 0 else 0.0), inter, union


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    seed = int(np.random.SeedSequence().entropy % 2**31)
    print(f"[test_eval_predict] data seed={seed}")
    root = tmp_path_factory.mktemp("eval_cli")
    data = root / "data"
    generate_dataset(data, num_images=6, seed=seed, config="demo", splits=(("test", 1.0),))
    out = root / "out"
    argv = ["eval", "--data", str(data), "--model", "base", "--out", str(out), "--batch-size", "4",
            "--limit", str(LIMIT), "--devices", "1"]
    return data, out, main(argv)


def test_eval_writes_consistent_metrics_predictions_and_picture(evaluated, capsys):
    data, out, rc = evaluated
    assert rc == 0
    records = load_split(data, "test")[:LIMIT]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [(r["image"], r["expression"]) for r in rows] == [(str(r.image_path), r.expression) for r in records]
    ious, inters, unions = [], [], []
    for row, rec in zip(rows, records):
        assert row["gt_box"] == list(rec.box) and row["image_hw"] == [rec.height, rec.width]
        resized = parse_prediction(row["text"])
        assert (row["pred_box_resized"] is None) == (resized is None)
        if resized is not None:
            assert row["pred_box_resized"] == list(resized)
        iou, inter, union = _hand_iou(row["pred_box"], rec.box, rec.height, rec.width)
        assert row["iou"] == pytest.approx(iou, abs=1e-9)
        ious.append(iou), inters.append(inter), unions.append(union)
    assert sum(r["pred_box"] is not None for r in rows) >= LIMIT // 2, "the base should answer with boxes"
    metrics = json.loads((out / "metrics.json").read_text())
    overall = metrics["overall"]
    ious = np.array(ious)
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        assert overall[f"Pr@{t}"] == pytest.approx(float(np.mean(ious > t)))
    assert overall["meanIoU"] == pytest.approx(float(ious.mean()))
    assert overall["cumIoU"] == pytest.approx(sum(inters) / sum(unions))
    assert overall["num_samples"] == LIMIT
    assert overall["num_unparsable"] == sum(r["pred_box"] is None for r in rows)
    per_cat = metrics["per_category"]
    assert sorted(per_cat) == sorted({r.category for r in records})
    for cat, m in per_cat.items():
        idx = [i for i, r in enumerate(records) if r.category == cat]
        assert m["num_samples"] == len(idx)
        assert m["meanIoU"] == pytest.approx(float(ious[idx].mean()))
    with Image.open(out / "predictions.png") as im:
        assert im.format == "PNG" and min(im.size) >= 112


def test_eval_split_over_two_devices_gives_the_same_predictions(evaluated, tmp_path):
    """Each device generates half of every batch (2 XLA:CPU devices in a child process); the predictions
    equal the one-device run's. A device count the host lacks, or a batch that does not split, is refused
    with one line before anything loads."""
    data, out, _ = evaluated
    child = f"""
import jax
jax.config.update("jax_num_cpu_devices", 2)
from rsground_jax.cli.main import main
common = ["eval", "--data", {str(data)!r}, "--model", "base", "--limit", "{LIMIT}"]
assert main(common + ["--out", {str(tmp_path / 'split')!r}, "--batch-size", "4"]) == 0  # default: both devices
assert main(common + ["--devices", "3"]) == 2
assert main(common + ["--batch-size", "3"]) == 2
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout[-2000:] + res.stderr[-4000:]
    assert "this host has 2 device(s)" in res.stderr
    assert "--batch-size 3 does not split over 2 devices" in res.stderr
    one = (out / "predictions.jsonl").read_text().splitlines()
    two = (tmp_path / "split" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(r)["text"] for r in two] == [json.loads(r)["text"] for r in one]
    assert (tmp_path / "split" / "metrics.json").read_text() == (out / "metrics.json").read_text()


def test_predict_prints_the_answer_and_draws_it(evaluated, tmp_path, capsys):
    data, out, _ = evaluated
    row = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    picture = tmp_path / "pred.png"
    rc = main(["predict", "--image", row["image"], "--query", row["expression"], "--out", str(picture)])
    printed = capsys.readouterr().out
    assert printed.startswith(row["text"])  # one expression in a batch of one: eval's greedy answer
    if row["pred_box"] is None:
        assert rc == 1 and "no box could be parsed" in printed
        return
    assert rc == 0
    h, w = row["image_hw"]
    clipped = [min(max(row["pred_box"][i], 0.0), (w, h)[i % 2]) for i in range(4)]
    assert f"box (original pixels): [{', '.join(f'{v:.1f}' for v in clipped)}]" in printed
    with Image.open(picture) as im, Image.open(row["image"]) as src:
        assert im.size == src.size
        assert np.any(np.asarray(im.convert("RGB")) != np.asarray(src.convert("RGB")))  # the box is drawn


def test_predict_refuses_an_output_it_cannot_write_before_loading(evaluated, tmp_path, capsys):
    data, out, _ = evaluated
    image = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])["image"]
    (tmp_path / "file").write_text("x")
    for target, message in [(tmp_path / "file" / "p.png", "file is a file"),
                            (tmp_path / "p.txt", "not an image file name")]:
        assert main(["predict", "--image", image, "--query", "the ship", "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
