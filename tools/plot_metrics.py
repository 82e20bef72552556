"""Line charts of a run's metrics.jsonl (one panel per metric), drawn with PIL: no plotting library needed.

    python tools/plot_metrics.py runs/grpo_tiny/grpo/metrics.jsonl docs/grpo_tiny_run.png \
        --metrics reward/format reward/iou rollout_pr@0.5 kl completion_length pred_box_area [--smooth 10]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from PIL import Image, ImageDraw

W, H, PAD = 360, 200, 34


def panel(steps: np.ndarray, values: np.ndarray, title: str, smooth: int) -> Image.Image:
    im = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(im)
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if hi == lo:
        hi = lo + 1e-9
    x0, x1, y0, y1 = PAD + 14, W - 10, 22, H - PAD

    def xy(s, v):
        return (x0 + (s - steps[0]) / max(steps[-1] - steps[0], 1) * (x1 - x0), y1 - (v - lo) / (hi - lo) * (y1 - y0))

    d.rectangle([x0, y0, x1, y1], outline=(180, 180, 180))
    d.text((x0, 4), title, fill="black")
    d.text((2, y0 - 4), f"{hi:.3g}", fill=(90, 90, 90))
    d.text((2, y1 - 8), f"{lo:.3g}", fill=(90, 90, 90))
    d.text((x0, y1 + 6), f"step {steps[0]}", fill=(90, 90, 90))
    d.text((x1 - 60, y1 + 6), f"step {steps[-1]}", fill=(90, 90, 90))
    d.line([xy(s, v) for s, v in zip(steps, values)], fill=(170, 200, 235), width=1)
    if smooth > 1 and len(values) > smooth:
        kernel = np.ones(smooth) / smooth
        sm = np.convolve(values, kernel, mode="valid")
        d.line([xy(s, v) for s, v in zip(steps[smooth - 1:], sm)], fill=(20, 70, 160), width=2)
    return im


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics")
    ap.add_argument("out")
    ap.add_argument("--metrics", dest="names", nargs="+", required=True)
    ap.add_argument("--smooth", type=int, default=10, help="moving average drawn over the raw values (1: none)")
    ap.add_argument("--columns", type=int, default=3)
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.metrics)]
    steps = np.array([r["step"] for r in rows])
    panels = [panel(steps, np.array([r.get(n, np.nan) for r in rows], float), n, args.smooth) for n in args.names]
    cols = min(args.columns, len(panels))
    out = Image.new("RGB", (cols * W, -(-len(panels) // cols) * H), "white")
    for i, p in enumerate(panels):
        out.paste(p, ((i % cols) * W, (i // cols) * H))
    out.save(args.out)
    print(f"wrote {args.out}: {len(panels)} panels over {len(rows)} rows")


if __name__ == "__main__":
    main()
