"""`rsground ablate`: the summary's statistics against a hand computation, and the command itself at the
smallest size through the installed `rsground`: a run, a rerun that adds a seed without retraining the first,
and a rerun with another setting refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np

from rsground_jax.data import load_split
from rsground_jax.eval.cues import shares_category
from rsground_jax.rl.ablation import SFT_ROW, summarize, table_markdown

REPO = Path(__file__).resolve().parents[2]
RSGROUND = Path(sys.executable).parent / "rsground"


def _result(p5, p7, miou, cue=0.3, no_overlap=None):
    out = {"test": {"overall": {"Pr@0.5": p5, "Pr@0.7": p7, "meanIoU": miou},
                    "by_cue": {"ordinal": {"Pr@0.5": cue, "n": 10}, "positional": {"Pr@0.5": cue, "n": 12}}}}
    if no_overlap is not None:
        out["train"] = {"no_overlap_last": no_overlap}
    return out


def test_summary_pairs_each_rung_with_the_one_before_it_by_seed(rng):
    cfg = ml_collections.ConfigDict({"variants": [dict(name="a", label="A", rung=True),
                                                  dict(name="b", label="B", rung=True),
                                                  dict(name="alt", label="Alt", rung=False),
                                                  dict(name="vs_a", label="vs A", rung=False, against=["a", "alt"])]})
    names = [SFT_ROW, "a", "b", "alt", "vs_a"]
    x = rng.uniform(0.1, 0.5, (5, 3, 3))  # [row, seed, metric]
    results = {n: {s: _result(*x[i, s], no_overlap=None if n == SFT_ROW else 0.4 + 0.01 * s) for s in range(3)}
               for i, n in enumerate(names)}
    summary = summarize(cfg, results, num_test=99)
    rows = summary["rows"]
    assert summary["order"] == names
    for i, n in enumerate(names):
        for j, m in enumerate(("Pr@0.5", "Pr@0.7", "meanIoU")):
            assert np.isclose(rows[n][m]["mean"], 100 * x[i, :, j].mean())
            assert np.isclose(rows[n][m]["std"], 100 * x[i, :, j].std(ddof=1))
    # a rung against the rung before it, an alternative against CoT-SFT, a variant against the one it names
    for n, prev in (("a", SFT_ROW), ("b", "a"), ("alt", SFT_ROW), ("vs_a", "a")):
        i, k = names.index(n), names.index(prev)
        d = 100 * (x[i, :, 2] - x[k, :, 2])
        assert np.isclose(rows[n]["delta"]["meanIoU"]["mean"], d.mean())
        assert np.isclose(rows[n]["delta"]["meanIoU"]["std"], d.std(ddof=1))
    assert "delta" not in rows[SFT_ROW] and "no_overlap" not in rows[SFT_ROW]
    # every comparison, the further ones a variant's `against` lists included, seed by seed
    steps = {(st["row"], st["against"]): st for st in summary["steps"]}
    assert set(steps) == {("a", SFT_ROW), ("b", "a"), ("alt", SFT_ROW), ("vs_a", "a"), ("vs_a", "alt")}
    i, k = names.index("vs_a"), names.index("alt")
    for s in range(3):
        assert np.isclose(steps["vs_a", "alt"]["per_seed"][s]["Pr@0.5"], 100 * (x[i, s, 0] - x[k, s, 0]))
    assert np.isclose(steps["vs_a", "alt"]["delta"]["Pr@0.7"]["std"], 100 * (x[i, :, 1] - x[k, :, 1]).std(ddof=1))
    assert rows["vs_a"]["against"] == "A" and steps["vs_a", "alt"]["label"] == "vs A − Alt"
    assert np.isclose(rows["b"]["no_overlap"]["mean"], 41.0)
    # with per-expression IoUs, the paired standard error of one seed's difference, averaged over seeds
    ious = {n: {s: rng.uniform(0, 1, 50) for s in range(3)} for n in names}
    for n in names:
        for s in range(3):
            results[n][s]["test"]["iou"] = ious[n][s].tolist()
    summary = summarize(cfg, results, num_test=50)
    rows = summary["rows"]
    hit = lambda n, s: (ious[n][s] > 0.5).astype(float)  # noqa: E731
    want = np.mean([np.std(hit("b", s) - hit("a", s), ddof=1) / np.sqrt(50) for s in range(3)]) * 100
    assert np.isclose(rows["b"]["delta_se"]["Pr@0.5"], want)
    want = np.mean([np.std(ious["b"][s] - ious["a"][s], ddof=1) / np.sqrt(50) for s in range(3)]) * 100
    assert np.isclose(rows["b"]["delta_se"]["meanIoU"], want)
    assert summary["steps"][1]["against"] == "a" and summary["steps"][1]["delta_se"] == rows["b"]["delta_se"]
    md = table_markdown(summary)
    assert "n=50" in md and md.count("\n| ") >= 2 * len(names) + len(steps)
    d = 100 * (x[i, :, 0] - x[k, :, 0])
    assert f"| vs A − Alt | 0, 1, 2 | {d[0]:+.1f} / " in md and f"| {d.mean():+.1f} ± {d.std(ddof=1):.1f} |" in md


VARIANTS = ("variants=[{'name': 'consistency', 'label': 'GRPO, the method', 'rung': True, 'set': {'rewards': "
            "{'format': 0.25, 'positional': 1.0}, 'coherence': {'enabled': True, 'kind': 'target_pairwise_iou', "
            "'min_weight': 0.5}}}]")


def _ablate(work, seeds, *extra):
    return subprocess.run([str(RSGROUND), "ablate", "--config", str(REPO / "configs" / "ablation_demo.py"),
                           "--seeds", str(seeds), f"workdir={work}", "sft.stages.0.steps=2", "grpo.steps=2",
                           "grpo.batch_size=64",
                           "data.num_images=24", "eval_records=8", VARIANTS, *extra],
                          capture_output=True, text=True, timeout=900)


def test_ablate_runs_resumes_with_another_seed_and_refuses_other_settings(tmp_path):
    work = tmp_path / "abl"
    out = _ablate(work, 1, "test_data.num_images=0")
    assert out.returncode == 0, out.stderr[-3000:]
    first = (work / "seed0" / "consistency" / "report.json").stat().st_mtime_ns
    assert "the benchmark's test split" in (work / "ablation.md").read_text()
    # the rerun adds a seed and scores every run on a fresh test set instead, training nothing again
    out = _ablate(work, 2, "test_data.num_images=6")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (work / "seed0" / "consistency" / "report.json").stat().st_mtime_ns == first  # seed 0 not trained again
    assert "seed 0: GRPO" not in out.stdout and "seed 1: GRPO consistency" in out.stdout
    summary = json.loads((work / "ablation.json").read_text())["summary"]
    fresh = [r for r in load_split(work / "test_data_seed4321_6", "test") if shares_category(r)]
    assert summary["test_set"].startswith("a fresh test set (6 images") and summary["num_test"] == len(fresh) > 0
    for run in ("seed0/cot_sft", "seed0/consistency", "seed1/consistency"):
        scored = json.loads((work / run / "test_data_seed4321_6.json").read_text())
        assert scored["overall"]["num_samples"] == len(fresh) and len(scored["iou"]) == len(fresh)
    assert summary["order"] == [SFT_ROW, "consistency"]
    rows = summary["rows"]
    assert all(rows[n]["seeds"] == [0, 1] and rows[n]["meanIoU"]["std"] is not None for n in summary["order"])
    assert rows["consistency"]["against"] == "CoT-SFT" and rows["consistency"]["delta_se"]["Pr@0.5"] >= 0
    assert 0 <= rows["consistency"]["no_overlap"]["mean"] <= 100
    assert (work / "ablation.md").read_text() in out.stdout and (work / "ablation.png").stat().st_size > 0
    refused = _ablate(work, 2, "test_data.num_images=0", "grpo.lr=0.001")
    assert refused.returncode == 2 and "grpo.lr" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_a_rerun_may_add_variants_but_not_change_one_that_ran():
    from rsground_jax.rl.ablation import ablation_differences

    a = dict(name="a", label="A", rung=True, set={"rewards": {"iou": 1.0}})
    saved = {"grpo": {"lr": 1e-4}, "variants": [a]}
    assert ablation_differences(saved, {"grpo": {"lr": 1e-4}, "variants": [a, dict(a, name="b")]}) == []
    assert ablation_differences(saved, {"grpo": {"lr": 1e-4}, "variants": []}) == []
    changed = ablation_differences(saved, {"grpo": {"lr": 1e-4}, "variants": [dict(a, set={"rewards": {"giou": 1.0}})]})
    assert len(changed) == 1 and changed[0].startswith("variants.a")
    assert ablation_differences(saved, {"grpo": {"lr": 3e-4}, "variants": [a]})[0].startswith("grpo.lr")
    # the table's keys may change: they train nothing
    assert ablation_differences(saved, {"grpo": {"lr": 1e-4}, "variants": [dict(a, label="A2", rung=False,
                                                                                  against="cot_sft")]}) == []


def test_a_variant_may_set_one_key_inside_a_dict_setting():
    import pytest

    from rsground_jax.configs import ConfigError, load_config
    from rsground_jax.rl.ablation import check_ablation_config, grpo_config

    cfg = load_config(str(REPO / "configs" / "ablation_demo.py"))
    v = dict(name="greedy", label="G", rung=False, set={"grpo.greedy_rollouts": 1, "grpo.temperature": 0.9})
    g = grpo_config(cfg, 0, v, "/tmp/abl")
    assert g.grpo.greedy_rollouts == 1 and g.grpo.temperature == 0.9
    assert g.grpo.num_generations == cfg.grpo.grpo.num_generations and "greedy_rollouts" not in cfg.grpo.grpo
    with pytest.raises(ConfigError, match="'steps' is not a dict"):
        grpo_config(cfg, 0, dict(v, set={"steps.x": 1}), "/tmp/abl")
    cfg.variants = [dict(v, set={"grpo.greedy_rollouts": 8})]  # not below num_generations = 8
    with pytest.raises(ConfigError, match="greedy_rollouts"):
        check_ablation_config(cfg)
    cfg.variants = [dict(v, against="nobody")]
    with pytest.raises(ConfigError, match="against='nobody' must name another variant"):
        check_ablation_config(cfg)
    cfg.variants = [dict(v, against=["cot_sft", "nobody"])]
    with pytest.raises(ConfigError, match="against='nobody' must name another variant"):
        check_ablation_config(cfg)
    cfg.variants = [dict(v, against=[])]
    with pytest.raises(ConfigError, match="variants.0.against must be the name of the row"):
        check_ablation_config(cfg)
