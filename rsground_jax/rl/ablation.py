"""`rsground ablate`: the method's ladder measured over seeds (configs/ablation_demo.py).

One synthetic benchmark; per seed a CoT-SFT model (cached: a finished run is not trained again), then each
variant's GRPO from it with everything else equal. Every run lives in its own folder under the workdir
(`seed<k>/cot_sft`, `seed<k>/<variant>`) with the commands' own checkpoints, so a stopped ablation resumes
where it stopped: finished runs and their scores are read back, an interrupted one continues from its latest
checkpoint. Scores: greedy decoding on the test expressions whose target shares its category with another
object (of the benchmark's test split, or of a fresh synthetic test set: `test_data`), overall (Pr@0.5, Pr@0.7,
meanIoU) and Pr@0.5 by cue; from training, the share of rollouts with no
overlap (no box, or a box off the target: where IoU gives no signal). Writes ablation.md, ablation.json and
ablation.png (training reward, rollout Pr@0.5 and KL per variant, averaged over seeds).
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import ml_collections
import numpy as np

from ..configs import (ConfigError, check_ablation_fields, check_experiment, check_grpo_config, config_differences,
                       plain_config, VARIANT_TABLE_KEYS)
from ..data import load_split
from ..data.synthetic import PRESETS, generate_dataset
from ..eval.cues import CUE_COLUMNS, metrics_by_cue, shares_category
from ..fileio import atomic_write_json
from ..stopping import stop_requests
from ..workdir import claim

METRICS = ("Pr@0.5", "Pr@0.7", "meanIoU")
CURVES = ("reward", "rollout_pr@0.5", "kl")
SFT_ROW = "cot_sft"


class AblationStopped(Exception):
    """A run was stopped (SIGTERM or Ctrl-C) and saved; the same command continues it."""


def check_ablation_config(cfg, source: str = "config") -> None:
    """The runner's own keys, then every run's config as its command would check it (before any work)."""
    check_ablation_fields(cfg, source)
    fresh = cfg.get("test_data")
    if fresh is not None and fresh.num_images and fresh.data_seed == cfg.data.data_seed:
        # image i is a function of (seed, i): the same seed would score the model on its own training images
        raise ConfigError(f"{source}: test_data.data_seed {fresh.data_seed} is the benchmark's data_seed; a fresh "
                          "test set needs another seed")
    names = [v["name"] for v in cfg.variants]
    if len(set(names)) != len(names) or SFT_ROW in names:
        raise ConfigError(f"{source}: variants need distinct names other than {SFT_ROW!r}; got {names}")
    for v in cfg.variants:
        for against in _against(v):
            if against not in [SFT_ROW, *names] or against == v["name"]:
                raise ConfigError(f"{source}: variant {v['name']}: against={against!r} must name another variant of "
                                  f"the list or {SFT_ROW!r}")
    root = cfg.workdir
    check_experiment(sft_config(cfg, 0, root), f"{source} (sft)")
    for v in cfg.variants:
        check_grpo_config(grpo_config(cfg, 0, v, root), f"{source} (variant {v['name']})")


def _against(variant) -> list[str]:
    """The rows a variant is compared with, as a list: `against` may be one name or a list of names."""
    against = variant.get("against")
    return [] if against is None else [against] if isinstance(against, str) else list(against)


def sft_config(cfg, seed: int, root: str) -> ml_collections.ConfigDict:
    s = copy.deepcopy(cfg.sft)
    s.seed, s.workdir = seed, os.path.join(root, f"seed{seed}", SFT_ROW)
    s.output = os.path.join(s.workdir, "model")
    for st in s.stages:
        st.data_root = os.path.join(root, "data")
    return s


def grpo_config(cfg, seed: int, variant: dict, root: str) -> ml_collections.ConfigDict:
    g = copy.deepcopy(cfg.grpo)
    g.seed = seed
    g.init = os.path.join(root, f"seed{seed}", SFT_ROW, "model")
    g.workdir = os.path.join(root, f"seed{seed}", variant["name"])
    g.output = os.path.join(g.workdir, "model")
    g.data = ml_collections.ConfigDict(dict(synth=None, data_root=os.path.join(root, "data"), prompts=0))
    for key, value in variant.get("set", {}).items():  # "grpo.temperature": one key inside a dict setting
        *parents, leaf = key.split(".")
        node = g
        for name in parents:
            if not isinstance(node.get(name), ml_collections.ConfigDict):
                raise ConfigError(f"variant {variant['name']}: set key {key!r}: {name!r} is not a dict setting of grpo")
            node = node[name]
        node[leaf] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    return g


# what a rerun may change without training anything again: the variants listed, and the test set (each test
# set's scores are cached under their own name in every run's folder)
RERUN_MAY_CHANGE = ("variants", "test_data")


def ablation_differences(saved: dict, now: dict) -> list[str]:
    """What a rerun may not change: every setting but the variants and the test set, and any variant that has run
    under its name. New variants may be added (and old ones left out of the table)."""
    out = config_differences({k: v for k, v in saved.items() if k not in RERUN_MAY_CHANGE},
                             {k: v for k, v in now.items() if k not in RERUN_MAY_CHANGE})
    before = {v["name"]: _trained(v) for v in saved.get("variants", [])}
    for v in now.get("variants", []):
        if v["name"] in before and before[v["name"]] != _trained(v):
            out.append(f"variants.{v['name']}: {before[v['name']]!r} then, {v!r} now (give a changed variant a new name)")
    return out


def _trained(variant: dict) -> dict:
    """What a variant trains: its settings without the table's keys (`VARIANT_TABLE_KEYS`), which may change."""
    return {k: v for k, v in variant.items() if k not in VARIANT_TABLE_KEYS}


def _done(folder: str) -> bool:
    return (Path(folder) / "model" / "model.safetensors").is_file() and (Path(folder) / "report.json").is_file()


def scored_set(cfg, root: str, stop=None) -> tuple[list, str, str]:
    """(records, cache file name, description) of the expressions every run is scored on: the test expressions
    whose target shares its category with another object, from the benchmark's own test split (at most
    `eval_records`) or, with `test_data.num_images` > 0, all of them from a fresh synthetic set of the same preset
    drawn with its own seed (every image a test image; generated once under the workdir)."""
    fresh = cfg.get("test_data")
    if fresh is not None and fresh.num_images > 0:
        name = f"test_data_seed{fresh.data_seed}_{fresh.num_images}"
        folder = os.path.join(root, name)
        if not os.path.isdir(os.path.join(folder, "Annotations")):
            generate_dataset(folder, fresh.num_images, seed=fresh.data_seed, config=PRESETS[cfg.data.preset],
                             splits=(("test", 1.0),), stop=stop)
        records = [r for r in load_split(folder, "test") if shares_category(r)]
        return records, f"{name}.json", f"a fresh test set ({fresh.num_images} images, data seed {fresh.data_seed})"
    records = [r for r in load_split(os.path.join(root, "data"), "test") if shares_category(r)][: cfg.eval_records]
    return records, "test.json", "the benchmark's test split"


def _score(model_dir: str, test, cache: str) -> dict:
    """Greedy scores of a model folder on the test records (cached in `cache`)."""
    if os.path.isfile(cache):
        return json.loads(Path(cache).read_text())
    from ..data.chat import prompt_from_spec
    from ..data.tokenizer import load_tokenizer
    from ..eval.evaluate import evaluate
    from ..models.model_dir import load_model, read_prompt_spec

    template, proc, _ = prompt_from_spec(read_prompt_spec(model_dir))
    ev = evaluate(load_model(model_dir), test, load_tokenizer(model_dir), proc, template=template, batch_size=32,
                  max_new_tokens=96, length_buckets=(128, 192))
    cues = metrics_by_cue(test, ev.predictions)
    out = {"overall": {k: ev.metrics[k] for k in (*METRICS, "num_samples", "num_unparsable")},
           "by_cue": {k: {"Pr@0.5": m["Pr@0.5"], "n": m["num_samples"]} for k, m in cues.items()},
           "iou": [p.get("iou") for p in ev.predictions]}
    atomic_write_json(cache, out)
    return out


def _training(folder: str) -> dict:
    """Curves and the no-overlap share (mean over the last fifth of the steps) of a GRPO run."""
    path = Path(folder) / "grpo" / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    rows = [r for r in rows if "rollout_iou" in r]
    if not rows:
        return {}
    tail = rows[-max(1, len(rows) // 5):]
    out = {"steps": [r["step"] for r in rows], **{c: [r.get(c) for r in rows] for c in CURVES}}
    if "rollout_no_overlap" in rows[0]:
        out["no_overlap_first"] = float(np.mean([r["rollout_no_overlap"] for r in rows[: len(tail)]]))
        out["no_overlap_last"] = float(np.mean([r["rollout_no_overlap"] for r in tail]))
    return out


def run_ablation(cfg, seeds: int, *, progress: bool = True, source: str = "config") -> dict:
    """Run (or continue) the ablation of `cfg` over seeds 0 .. seeds-1; returns the summary (also ablation.json).
    Raises `AblationStopped` when a run was stopped and saved."""
    check_ablation_config(cfg, source)
    root = cfg.workdir
    os.makedirs(root, exist_ok=True)
    # one ablation per workdir; a rerun continues it and may add seeds and variants, nothing else may change
    settings = {k: v for k, v in plain_config(cfg).items() if k != "workdir"}
    lock = claim(root, settings, resume=True, command="ablate", differences=ablation_differences)
    try:
        lock.commit()
        return _run(cfg, seeds, root, progress)
    finally:
        lock.release()


def _run(cfg, seeds: int, root: str, progress: bool) -> dict:
    from ..train.experiment import run_experiment
    from .experiment import run_grpo_experiment

    t0 = time.time()
    data = os.path.join(root, "data")
    with stop_requests() as stop:
        if not os.path.isdir(os.path.join(data, "Annotations")):
            generate_dataset(data, cfg.data.num_images, seed=cfg.data.data_seed, config=PRESETS[cfg.data.preset],
                             stop=stop)
        test, score_file, test_name = scored_set(cfg, root, stop)
    results: dict[str, dict] = {}
    for seed in range(seeds):
        sft = sft_config(cfg, seed, root)
        if not _done(sft.workdir):
            print(f"[{time.time() - t0:6.0f}s] seed {seed}: CoT-SFT", flush=True)
            rep = run_experiment(sft, progress=progress, resume=os.path.isdir(sft.workdir))
            if rep.get("preempted"):
                raise AblationStopped(f"CoT-SFT of seed {seed} stopped and saved")
        results.setdefault(SFT_ROW, {})[seed] = {"test": _score(sft.output, test, os.path.join(sft.workdir, score_file))}
        for v in cfg.variants:
            g = grpo_config(cfg, seed, v, root)
            if not _done(g.workdir):
                print(f"[{time.time() - t0:6.0f}s] seed {seed}: GRPO {v['name']}", flush=True)
                rep = run_grpo_experiment(g, progress=progress, resume=os.path.isdir(g.workdir))
                if rep.get("preempted"):
                    raise AblationStopped(f"GRPO {v['name']} of seed {seed} stopped and saved")
            results.setdefault(v["name"], {})[seed] = {
                "test": _score(g.output, test, os.path.join(g.workdir, score_file)), "train": _training(g.workdir)}
        summary = summarize(cfg, results, len(test), test_name)
        write_outputs(root, summary, results)
        print(f"[{time.time() - t0:6.0f}s] seed {seed} done", flush=True)
    return summary


def _mean_std(values) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None, "n": int(len(v))}


def summarize(cfg, results: dict, num_test: int, test_name: str = "the benchmark's test split") -> dict:
    """Mean and standard deviation over seeds per row, and each row against the one before it: the first variant
    its `against` names, else the rung before it (a rung), else CoT-SFT (the mean and standard deviation of the
    per-seed differences, as the seeds pair the runs). `steps` holds every comparison, that one and any further
    `against` names, with each seed's difference."""
    labels = {SFT_ROW: "CoT-SFT", **{v["name"]: v["label"] for v in cfg.variants}}
    rows = {}
    for name, per_seed in results.items():
        seeds = sorted(per_seed)
        row = {"label": labels[name], "seeds": seeds}
        for m in METRICS:
            row[m] = _mean_std([100 * per_seed[s]["test"]["overall"][m] for s in seeds])
        row["by_cue"] = {c: _mean_std([100 * per_seed[s]["test"]["by_cue"][c]["Pr@0.5"] for s in seeds])
                         for c in CUE_COLUMNS if all(c in per_seed[s]["test"]["by_cue"] for s in seeds)}
        for key, when in (("no_overlap", "last"), ("no_overlap_start", "first")):
            share = [per_seed[s].get("train", {}).get(f"no_overlap_{when}") for s in seeds]
            if all(x is not None for x in share):
                row[key] = _mean_std([100 * x for x in share])
        rows[name] = row
    ladder = [SFT_ROW] + [v["name"] for v in cfg.variants if v.get("rung")]
    chosen = {v["name"]: _against(v) for v in cfg.variants if v.get("against")}
    steps = []
    for name in rows:
        if name == SFT_ROW:
            continue
        baselines = chosen.get(name) or [ladder[ladder.index(name) - 1] if name in ladder else SFT_ROW]
        for k, prev in enumerate(baselines):
            common = sorted(set(results[name]) & set(results.get(prev, {})))
            if not common:
                continue
            step = {"row": name, "against": prev, "label": f"{labels[name]} − {labels[prev]}", "seeds": common,
                    **_difference(results[name], results[prev], common)}
            steps.append(step)
            if k == 0:
                rows[name]["against"] = labels[prev]
                rows[name]["delta"] = step["delta"]
                if "delta_se" in step:
                    rows[name]["delta_se"] = step["delta_se"]
    order = [n for n in [SFT_ROW] + [v["name"] for v in cfg.variants] if n in rows]
    return {"num_test": num_test, "test_set": test_name, "rows": rows, "order": order, "steps": steps}


def _difference(runs: dict, baseline: dict, seeds: list) -> dict:
    """One row against another, paired by seed: each seed's difference (points), their mean and standard
    deviation, and the mean over seeds of one seed's paired standard error (when both have per-expression IoUs)."""
    per_seed = {s: {m: 100 * (runs[s]["test"]["overall"][m] - baseline[s]["test"]["overall"][m]) for m in METRICS}
                for s in seeds}
    out = {"per_seed": per_seed, "delta": {m: _mean_std([per_seed[s][m] for s in seeds]) for m in METRICS}}
    se = [_paired_se(runs[s]["test"].get("iou"), baseline[s]["test"].get("iou")) for s in seeds]
    if all(x is not None for x in se):
        out["delta_se"] = {m: float(np.mean([x[m] for x in se])) for m in ("Pr@0.5", "meanIoU")}
    return out


def _paired_se(iou_a, iou_b) -> dict | None:
    """The standard error of a difference in Pr@0.5 and meanIoU (points) from the noise of the test expressions
    alone, paired by expression: what one seed's difference may be off by before seeds vary at all."""
    if not iou_a or not iou_b or len(iou_a) != len(iou_b):
        return None
    a, b = np.asarray(iou_a, np.float64), np.asarray(iou_b, np.float64)
    n = len(a)
    return {"Pr@0.5": 100 * float(np.std((a > 0.5).astype(float) - (b > 0.5), ddof=1) / np.sqrt(n)),
            "meanIoU": 100 * float(np.std(a - b, ddof=1) / np.sqrt(n))}


def _fmt(ms: dict | None, signed: bool = False) -> str:
    if not ms:
        return "-"
    s = f"{ms['mean']:+.1f}" if signed else f"{ms['mean']:.1f}"
    return s + (f" ± {ms['std']:.1f}" if ms.get("std") is not None else "")


def _se_cell(se: dict | None) -> str:
    return f"{se['Pr@0.5']:.1f} / {se['meanIoU']:.1f}" if se else "-"


def table_markdown(summary: dict) -> str:
    lines = [f"Test expressions of {summary.get('test_set', 'the test split')} whose target shares its category "
             f"with another object (n={summary['num_test']}); "
             "mean ± standard deviation over seeds; Δ: the per-seed difference from the row named, mean ± std over "
             "seeds; s.e.: the standard error of one seed's Δ from the test expressions alone (paired), Pr@0.5 / "
             "meanIoU.", "",
             "| run | seeds | Pr@0.5 | Pr@0.7 | meanIoU | Δ Pr@0.5 | Δ meanIoU | s.e. of Δ | against | rollouts with no overlap (%), first -> last fifth of training |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in summary["order"]:
        r = summary["rows"][name]
        d = r.get("delta", {})
        se = _se_cell(r.get("delta_se"))
        overlap = f"{_fmt(r.get('no_overlap_start'))} -> {_fmt(r['no_overlap'])}" if r.get("no_overlap") else "-"
        lines.append(f"| {r['label']} | {len(r['seeds'])} | {_fmt(r['Pr@0.5'])} | {_fmt(r['Pr@0.7'])} | "
                     f"{_fmt(r['meanIoU'])} | {_fmt(d.get('Pr@0.5'), True)} | {_fmt(d.get('meanIoU'), True)} | "
                     f"{se} | {r.get('against', '-')} | {overlap} |")
    if summary.get("steps"):
        lines += ["", "Every comparison, seed by seed (Δ Pr@0.5 / Δ meanIoU of each seed; mean ± std over seeds):", "",
                  "| step | seeds | per seed | Δ Pr@0.5 | Δ Pr@0.7 | Δ meanIoU | s.e. of Δ |", "|---|---|---|---|---|---|---|"]
        for st in summary["steps"]:
            per_seed = ", ".join(f"{st['per_seed'][s]['Pr@0.5']:+.1f} / {st['per_seed'][s]['meanIoU']:+.1f}"
                                 for s in st["seeds"])
            d = st["delta"]
            lines.append(f"| {st['label']} | {', '.join(map(str, st['seeds']))} | {per_seed} | "
                         f"{_fmt(d['Pr@0.5'], True)} | {_fmt(d['Pr@0.7'], True)} | {_fmt(d['meanIoU'], True)} | "
                         f"{_se_cell(st.get('delta_se'))} |")
    cues = [c for c in CUE_COLUMNS if all(c in summary["rows"][n]["by_cue"] for n in summary["order"])]
    lines += ["", "Pr@0.5 by the kind of cue (positional: absolute, ordinal and relative together):", "",
              "| run | " + " | ".join(cues) + " |", "|---|" + "---|" * len(cues)]
    for name in summary["order"]:
        r = summary["rows"][name]
        lines.append(f"| {r['label']} | " + " | ".join(_fmt(r["by_cue"][c]) for c in cues) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(root: str, summary: dict, results: dict) -> None:
    atomic_write_json(os.path.join(root, "ablation.json"), {
        "summary": summary,
        "runs": {name: {str(s): {"test": {k: v for k, v in r["test"].items() if k != "iou"},
                                 "no_overlap_first": r.get("train", {}).get("no_overlap_first"),
                                 "no_overlap_last": r.get("train", {}).get("no_overlap_last")}
                        for s, r in per_seed.items()} for name, per_seed in results.items()}}, indent=2)
    tmp = os.path.join(root, "ablation.md.partial")
    Path(tmp).write_text(table_markdown(summary))
    os.replace(tmp, os.path.join(root, "ablation.md"))
    curves = {name: [r["train"] for r in per_seed.values() if r.get("train")] for name, per_seed in results.items()
              if name != SFT_ROW}
    if any(curves.values()):
        plot_curves({summary["rows"][n]["label"]: c for n, c in curves.items() if c}, os.path.join(root, "ablation.png"))


COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def plot_curves(curves: dict[str, list[dict]], path: str, smooth: int = 10) -> None:
    """One panel per training curve (CURVES), one line per variant: the mean over seeds, smoothed over
    `smooth` logged steps. Drawn with PIL."""
    from PIL import Image, ImageDraw

    w, h, pad = 380, 230, 36
    im = Image.new("RGB", (w * len(CURVES), h + 18 * len(curves)), "white")
    d = ImageDraw.Draw(im)
    for p, metric in enumerate(CURVES):
        lines = {}
        for label, runs in curves.items():
            n = min(len(r["steps"]) for r in runs)
            y = np.nanmean([np.asarray(r[metric][:n], np.float64) for r in runs], axis=0)
            k = max(1, min(smooth, n))
            lines[label] = (np.asarray(runs[0]["steps"][:n]), np.convolve(y, np.ones(k) / k, mode="valid"), k)
        values = np.concatenate([v for _, v, _ in lines.values()])
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        hi = hi if hi > lo else lo + 1e-9
        x0, x1, y0, y1 = p * w + pad + 10, (p + 1) * w - 10, 22, h - pad
        d.rectangle([x0, y0, x1, y1], outline=(180, 180, 180))
        d.text((x0, 4), f"{metric} (mean over seeds, {smooth}-point average)", fill="black")
        d.text((p * w + 2, y0), f"{hi:.3g}", fill="black")
        d.text((p * w + 2, y1 - 10), f"{lo:.3g}", fill="black")
        for c, (label, (steps, v, k)) in enumerate(lines.items()):
            s = steps[k - 1:]
            if len(s) < 2:
                continue
            span = max(s[-1] - steps[0], 1)
            pts = [(x0 + (a - steps[0]) / span * (x1 - x0), y1 - (b - lo) / (hi - lo) * (y1 - y0)) for a, b in zip(s, v)]
            d.line(pts, fill=COLOURS[c % len(COLOURS)], width=2)
        d.text((x0, y1 + 6), "step", fill="black")
    for c, label in enumerate(curves):
        d.rectangle([10, h + 18 * c + 4, 28, h + 18 * c + 8], fill=COLOURS[c % len(COLOURS)])
        d.text((34, h + 18 * c), label, fill=COLOURS[c % len(COLOURS)])
    tmp = path + ".partial.png"
    im.save(tmp)
    os.replace(tmp, path)
