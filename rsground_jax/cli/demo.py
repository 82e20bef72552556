"""`rsground demo`: the main job, on the CPU, from nothing but the installed package.

1. Generates a synthetic RSVG set (the `demo` preset: aerial objects on plain ground, 2-3 per category,
   positional expressions) in the DIOR-RSVG format.
2. Loads the packaged base model (a tiny Qwen2.5-VL pretrained for plain-box grounding, see
   configs/base_pretrain.py).
3. Scores on the test expressions whose target shares its category with another object in the image:
   the best constant box (the box that maximizes meanIoU on the training split), the base model, and the
   model after CoT-SFT on the training split (reasoning, then the box; the vision tower stays frozen
   unless --train-vision), and the model after a short GRPO run from it (--grpo-steps; the method's rewards:
   format + the positional reward, groups weighted by the spatial consistency of their rollouts).
4. Prints the table (Pr@0.5, meanIoU), then Pr@0.5 by the kind of cue (absolute, ordinal, relative: the
   positional queries; size), and writes results, predictions and pictures to the work directory.
"""

from __future__ import annotations

import argparse
import os
import time

from .main import EXIT_STOPPED, UserError, non_negative_int, positive_float, positive_int

DEMO_GRPO_STEPS = 40

# The arguments a demo workdir's data and checkpoints depend on: a rerun in the same workdir must repeat them.
SETTINGS = ("num_images", "steps", "batch_size", "lr", "seed", "cot", "base", "train_vision", "grpo_steps")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthetic data -> base model -> CoT-SFT -> GRPO -> evaluation, on the CPU",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/demo",
                   help="where data, checkpoints and results go; run again with the same settings to continue a "
                        "stopped demo (other settings need another workdir)")
    p.add_argument("--num-images", type=positive_int, default=2000,
                   help="synthetic images to generate (80 %% train, 10 %% test)")
    p.add_argument("--steps", type=positive_int, default=1600, help="CoT-SFT steps")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--eval-images", type=positive_int, default=800,
                   help="test expressions scored at most (those whose target shares its category)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--cot", choices=("brief", "full"), default="brief",
                   help="reasoning form: 'brief' (the cue restated in a few words, e.g. 'Number 2 from the left.', then "
                        "the box) or 'full' (also the image size, every candidate box and the evidence)")
    p.add_argument("--grpo-steps", type=non_negative_int, default=DEMO_GRPO_STEPS,
                   help="GRPO steps after CoT-SFT (8 prompts x 8 rollouts each; the method's rewards: format + "
                        "positional, with spatial-consistency weighting); 0 skips the stage")
    p.add_argument("--base", default="base", help="base model directory ('base': the packaged one)")
    p.add_argument("--train-vision", action="store_true",
                   help="also train the vision tower during CoT-SFT (by default it stays as the base left it)")
    p.set_defaults(func=run)


def best_constant_box(records, max_pairs: int = 2_000_000):
    """The normalized box (among the training targets) with the highest mean IoU over `records`; `max_pairs`
    bounds the candidate x record IoUs computed at once."""
    import numpy as np

    from ..eval.metrics import box_iou

    sizes = np.array([[r.width, r.height, r.width, r.height] for r in records], np.float64)
    gts = np.array([r.box for r in records], np.float64)
    cands = np.unique(np.round(gts / sizes, 3), axis=0)
    # Every candidate against every record is quadratic (6,488 records: 42M IoUs); chunks of candidates keep it
    # vectorized in bounded memory. argmax keeps the first of equal scores, as a strict `>` scan would.
    scores = []
    for chunk in np.array_split(cands, max(1, -(-len(cands) * len(records) // max_pairs))):
        scaled = (chunk[:, None, :] * sizes[None]).reshape(-1, 4)
        iou = box_iou(scaled, np.tile(gts, (len(chunk), 1)))[0]
        scores.append(iou.reshape(len(chunk), len(records)).mean(axis=1))
    return cands[int(np.argmax(np.concatenate(scores)))]


def run(args) -> int:
    from ..workdir import claim

    # One demo per workdir at a time, and a rerun only with the settings its data and checkpoint were made with.
    settings = {k: getattr(args, k) for k in SETTINGS}
    if settings["base"] != "base":
        settings["base"] = os.path.abspath(args.base)
    lock = claim(args.workdir, settings, resume=True, command="demo", differences=_differences)
    try:
        return _run(args, lock)
    finally:
        lock.release()


def _differences(saved: dict, now: dict) -> list[str]:
    return [f"--{k.replace('_', '-')} {saved.get(k)!r} then, {now[k]!r} now" for k in SETTINGS if saved.get(k) != now[k]]


def _run(args, lock) -> int:
    import numpy as np

    from ..data import load_split
    from ..data.chat import BOX_QUESTION, DEFAULT_QUESTION, ChatTemplate, prompt_from_spec
    from ..data.pipeline import PipelineConfig, sft_pipeline
    from ..data.synthetic import PRESETS, generate_dataset
    from ..data.tokenizer import load_tokenizer
    from ..eval.cues import CUE_COLUMNS, POSITIONAL_CUES, metrics_by_cue, shares_category
    from ..eval.draw import grid
    from ..eval.evaluate import evaluate, write_predictions
    from ..eval.metrics import grounding_metrics
    from ..fileio import atomic_write_json
    from ..models import ImageProcessor
    from ..models.model_dir import load_model, missing_parts, read_prompt_spec, resolve
    from ..stopping import stop_requests
    from ..train import LoopConfig, OptimConfig, make_optimizer, run_sft

    t0 = time.time()
    base_dir = resolve(args.base)
    packaged = os.path.isfile(os.path.join(base_dir, "config.json"))
    if not packaged and args.base != "base":
        raise UserError(f"{base_dir}: no model there (config.json missing)")
    if packaged:
        missing = missing_parts(base_dir)
        if missing:
            raise UserError(f"--base {base_dir}: not a complete model folder; it lacks {', '.join(missing)}")
        base_template, proc, _ = prompt_from_spec(read_prompt_spec(base_dir))
    lock.commit()
    if not packaged:
        print("NOTE: this package ships no pretrained base model yet (configs/base_pretrain.py trains it); the demo "
              "starts from random weights of the tiny preset, so its numbers show the pipeline, not the method.")
    data = os.path.join(args.workdir, "data")
    if not os.path.isdir(os.path.join(data, "Annotations")):
        with stop_requests() as stop:  # SIGTERM or Ctrl-C keeps the images so far for the next run
            summary = generate_dataset(data, args.num_images, seed=args.seed, config=PRESETS["demo"], stop=stop)
        print(f"[{time.time() - t0:5.0f}s] generated {summary.num_images} synthetic scenes "
              f"({summary.num_expressions} expressions) in {data}")
    train, test = load_split(data, "train"), load_split(data, "test")
    test = [r for r in test if shares_category(r)][: args.eval_images]
    print(f"[{time.time() - t0:5.0f}s] {len(train)} training expressions; {len(test)} test expressions whose target "
          f"shares its category with another object")

    if packaged:
        tok = load_tokenizer(base_dir)
    else:
        from ..data.tokenizer import load_small_tokenizer

        tok = load_small_tokenizer()
        base_template = ChatTemplate(system=None, question=BOX_QUESTION)
        proc = ImageProcessor(max_pixels=112 * 112)
    # The reasoning question, after the image, with the base's own system turn (none for the packaged one):
    # everything before and around the image tokens stays as the base saw it in pretraining.
    cot_template = ChatTemplate(system=base_template.system, question=DEFAULT_QUESTION)
    results = {}

    const = best_constant_box(train)
    preds = [const * np.array([r.width, r.height, r.width, r.height]) for r in test]
    results["best constant box"] = grounding_metrics(preds, [r.box for r in test])

    if packaged:
        model = load_model(base_dir)
    else:
        from flax import nnx

        from ..models import Qwen25VL
        from ..train.experiment import tiny_for

        model = Qwen25VL(tiny_for(tok), rngs=nnx.Rngs(args.seed))
    ev = evaluate(model, test, tok, proc, template=base_template, batch_size=32, max_new_tokens=24)
    base_name = "base model" if packaged else "random init (no base)"
    results[base_name] = ev.metrics
    by_cue = {base_name: metrics_by_cue(test, ev.predictions)}
    print(f"[{time.time() - t0:5.0f}s] {'base model' if packaged else 'random init'}: Pr@0.5 {100 * ev.metrics['Pr@0.5']:.1f}, "
          f"meanIoU {100 * ev.metrics['meanIoU']:.1f}")

    style, buckets, max_new = ("brief_cot", (128, 192), 96) if args.cot == "brief" else ("cot", (256, 320, 384), 320)
    pl = sft_pipeline(train, tok, proc, PipelineConfig(batch_size=args.batch_size, length_buckets=buckets,
                                                       seed=args.seed, on_overflow="skip", answer_style=style),
                      template=cot_template)
    freeze = not args.train_vision
    tx = make_optimizer(OptimConfig(lr=args.lr, warmup_steps=min(20, args.steps // 10), total_steps=args.steps,
                                    freeze_vision=freeze))
    res = run_sft(model, pl, tx, LoopConfig(total_steps=args.steps, log_every=25, checkpoint_every=max(args.steps, 1)),
                  os.path.join(args.workdir, "cot_sft"), resume=True, freeze_vision=freeze)
    if res.preempted:
        print(f"[{time.time() - t0:5.0f}s] CoT-SFT stopped at step {int(res.state.step)} of {args.steps} and saved; run "
              "the same command again to continue", flush=True)
        return EXIT_STOPPED
    last = f", final loss {res.history[-1]['loss']:.3f}" if res.history else " (already done: resumed at the end)"
    print(f"[{time.time() - t0:5.0f}s] CoT-SFT: {args.steps} steps{last}")
    ev_cot = evaluate(model, test, tok, proc, template=cot_template, batch_size=32, max_new_tokens=max_new,
                      length_buckets=buckets)
    results["after CoT-SFT"] = ev_cot.metrics
    by_cue["after CoT-SFT"] = metrics_by_cue(test, ev_cot.predictions)

    final, final_name = ev_cot, "cot"
    grpo_info = None
    if args.grpo_steps:
        ev_grpo, grpo_info = _grpo_stage(args, model, train, tok, proc, cot_template, buckets, max_new, test, t0)
        if ev_grpo is None:
            return EXIT_STOPPED
        results["after GRPO"] = ev_grpo.metrics
        by_cue["after GRPO"] = metrics_by_cue(test, ev_grpo.predictions)
        final, final_name = ev_grpo, "grpo"

    atomic_write_json(os.path.join(args.workdir, "demo_results.json"),
                      {"results": results, "by_cue": by_cue, "constant_box_normalized": const.tolist(),
                       "grpo": grpo_info, "seconds": time.time() - t0}, indent=2)
    for name, ev in (("cot", ev_cot), *((("grpo", final),) if final_name == "grpo" else ())):
        write_predictions(os.path.join(args.workdir, f"{name}_predictions.jsonl"), ev.predictions)
        grid(ev.predictions[:16], os.path.join(args.workdir, f"{name}_predictions.png"))
    print(f"\nTest expressions whose target shares its category with another object (n={len(test)}):")
    print(f"{'':22s} {'Pr@0.5':>8s} {'meanIoU':>8s}")
    for name, m in results.items():
        print(f"{name:22s} {100 * m['Pr@0.5']:8.1f} {100 * m['meanIoU']:8.1f}")
    counts = next(iter(by_cue.values()))
    print(f"\nPr@0.5 by the kind of cue (positional: {', '.join(POSITIONAL_CUES)}):")
    print(f"{'':22s}" + "".join(f"{k:>12s}" for k in CUE_COLUMNS))
    print(f"{'(expressions)':22s}"
          + "".join(f"{counts[k]['num_samples'] if k in counts else 0:12d}" for k in CUE_COLUMNS))
    for name, cues in by_cue.items():
        print(f"{name:22s}" + "".join(f"{100 * cues[k]['Pr@0.5']:12.1f}" if k in cues else f"{'-':>12s}"
                                      for k in CUE_COLUMNS))
    if grpo_info:
        d5 = 100 * (results["after GRPO"]["Pr@0.5"] - results["after CoT-SFT"]["Pr@0.5"])
        di = 100 * (results["after GRPO"]["meanIoU"] - results["after CoT-SFT"]["meanIoU"])
        print(f"\nGRPO here is a short run ({grpo_info['steps']} steps of {grpo_info['prompts_per_step']} prompts x "
              f"{grpo_info['generations']} rollouts, {grpo_info['seconds']:.0f} s): {d5:+.1f} Pr@0.5, {di:+.1f} meanIoU "
              "against CoT-SFT, one seed, no spread. What the positional reward and the consistency weighting "
              "change, measured over seeds with their spread, is in docs/method.md (`rsground ablate`).")
    example = next((r for r in final.predictions if r["pred_box"] is not None), final.predictions[0])
    print(f"\nexample ({'after GRPO' if final_name == 'grpo' else 'after CoT-SFT'}): \"{example['expression']}\"\n"
          f"{example['text']}")
    written = ", ".join(f"{n}_predictions.jsonl, {n}_predictions.png" for n in ("cot", "grpo")
                        if n == "cot" or final_name == "grpo")
    print(f"\n[{time.time() - t0:5.0f}s] wrote {args.workdir}/demo_results.json, {written}")
    return 0


def _grpo_stage(args, model, train, tok, proc, template, buckets, max_new, test, t0):
    """GRPO from the CoT-SFT model (also its KL reference) with the method's defaults; returns (evaluation, info),
    or (None, None) when the stage was stopped and saved."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ..eval.evaluate import evaluate
    from ..rl.config import GRPOConfig
    from ..rl.experiment import GRPOStage, train_grpo

    stage = GRPOStage(
        name="grpo", steps=args.grpo_steps, batch_size=64, lr=1e-4, max_prompt_length=96,
        grpo=GRPOConfig(num_generations=8, beta=0.04, temperature=1.0, max_new_tokens=48),
        rewards=(("format", 0.25), ("positional", 1.0)), coherence=True, coherence_kind="target_pairwise_iou",
        coherence_min_weight=0.5, freeze_vision=not args.train_vision, seed=args.seed, log_every=10,
        checkpoint_every=args.grpo_steps)
    ref = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    ts = time.time()
    res = train_grpo(model, ref, train, tok, proc, template, stage, os.path.join(args.workdir, "grpo"), resume=True,
                        progress=True, run_info={"reference": "the demo's CoT-SFT model"})
    if res.preempted:
        print(f"[{time.time() - t0:5.0f}s] GRPO stopped at step {int(res.state.step)} of {args.grpo_steps} and saved; "
              "run the same command again to continue", flush=True)
        return None, None
    seconds = time.time() - ts
    last = res.history[-1] if res.history else {}
    print(f"[{time.time() - t0:5.0f}s] GRPO: {args.grpo_steps} steps"
          + (f", rollout IoU {last['rollout_iou']:.3f}, reward {last['reward']:.3f}" if last else
             " (already done: resumed at the end)"))
    ev = evaluate(model, test, tok, proc, template=template, batch_size=32, max_new_tokens=max_new,
                  length_buckets=buckets)
    return ev, {"steps": args.grpo_steps, "prompts_per_step": 8, "generations": 8, "seconds": seconds,
                "rewards": dict(stage.rewards), "coherence": stage.coherence_kind}
