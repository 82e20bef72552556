"""Evaluation over a split: batched greedy generation, answer parsing, rescaling to original pixels, metrics.

Predictions are parsed from the generated text: the box of the last answer block (`data.answers.parse_box`,
the parser the GRPO rewards reproduce on device), or, for a text without `<answer>` (the base model answers
with a bare box), the first `[x1, y1, x2, y2]`. The box is in the
resized frame the model sees and is mapped back to original pixels (`data.boxes.resized_to_original`)
before the RSVG metrics; a text with no box counts as IoU 0 and as unparsable.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np

from ..data import boxes as box_frames
from ..data.chat import ChatTemplate
from ..data.answers import parse_box
from ..data.pipeline import PipelineConfig, rl_pipeline
from ..data.tokenizer import special_token_ids
from ..generate import Sampler, SamplingConfig
from ..models.qwen2_5_vl.inputs import add_vision_inputs, static_vision_sizes
from .metrics import box_iou, clip_boxes, grounding_metrics

_BARE_BOX = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]")


def parse_prediction(text: str) -> tuple[float, float, float, float] | None:
    """Box from a model answer: `parse_box` when the text has an `<answer>` (a malformed block is no box, as for
    the rewards: a candidate box in the reasoning is not taken for the answer), else the first bare
    `[x1, y1, x2, y2]` (a base model's plain answer)."""
    if "<answer>" in text:
        return parse_box(text)
    m = _BARE_BOX.search(text)
    return tuple(float(v) for v in m.groups()) if m else None


@dataclasses.dataclass
class EvalResult:
    metrics: dict
    predictions: list[dict]  # one row per record: text, parsed boxes (resized, original), gt, iou


def evaluate(model, records, tokenizer, processor, *, template: ChatTemplate = ChatTemplate(), batch_size: int = 32,
             max_new_tokens: int = 64, length_buckets: tuple[int, ...] | None = None,
             sampler: Sampler | None = None) -> EvalResult:
    """Greedy-decode every record's answer and score it (RSVG convention, original pixels)."""
    specials = special_token_ids(tokenizer)
    pl = rl_pipeline(records, tokenizer, processor, PipelineConfig(
        batch_size=batch_size, shuffle=False, num_epochs=1, drop_remainder=False, length_buckets=length_buckets),
        template=template)
    sampler = sampler or Sampler(model)
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, eos_ids=(specials.im_end,), pad_id=specials.pad)
    vcfg = model.config.vision
    rows = []
    for batch in pl:
        nw, fs = static_vision_sizes(pl.plan.grid_thw, vcfg, batch_size, batch["pixel_values"].shape[0])
        batch = add_vision_inputs(batch, vcfg, num_windows=nw, frame_slots=fs)
        tokens, lengths = sampler(batch, cfg)
        for b in np.flatnonzero(batch["sample_valid"]):
            r = pl.plan.records[int(batch["record_index"][b])]
            text = tokenizer.decode(tokens[b, : lengths[b]], skip_special_tokens=True)
            resized = parse_prediction(text)
            original = None if resized is None else box_frames.resized_to_original(resized, r.height, r.width, processor)
            rows.append({"image": str(r.image_path), "expression": r.expression, "category": r.category,
                         "text": text, "pred_box_resized": resized, "pred_box": original, "gt_box": list(r.box),
                         "image_hw": [r.height, r.width]})
    return score_predictions(rows)


def score_predictions(rows: list[dict]) -> EvalResult:
    """The metrics of prediction rows (`pred_box` None for an unparsable answer, `gt_box`, `image_hw`), each row
    given its IoU."""
    hws = np.asarray([r["image_hw"] for r in rows])
    gts = np.asarray([r["gt_box"] for r in rows], np.float64)
    preds = [r["pred_box"] for r in rows]
    metrics = grounding_metrics(preds, gts, hws)
    pred_arr = np.array([[np.nan] * 4 if p is None else p for p in preds], np.float64)
    iou, _, _ = box_iou(clip_boxes(pred_arr, hws), gts)
    for row, v in zip(rows, iou):
        row["iou"] = float(v)
    return EvalResult(metrics=metrics, predictions=rows)


def write_predictions(path, rows: list[dict]) -> None:
    """Prediction rows as JSON lines, the file written whole or not at all."""
    from ..fileio import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def evaluate_over_hosts(model, records, tokenizer, processor, **options) -> EvalResult:
    """`evaluate` in a job of several processes (a pod's hosts), called by every process with the same records:
    host i decodes the i-th of equal consecutive blocks of the records with a whole copy of the model on its
    first device (the parameters gathered from wherever the mesh keeps them, unless every host holds them whole
    already, as after `train.experiment.gather_whole`), and every host returns the metrics of all the records,
    with the predictions of host 0's block first. One process: `evaluate` itself.

    The copy must fit one device (a 7B model in bfloat16 does on an H100 or a TPU v5p); where it does not, run
    `rsground eval` on the exported model instead."""
    import jax

    if jax.process_count() == 1:
        return evaluate(model, records, tokenizer, processor, **options)
    from flax import nnx

    from ..distributed import allgather_json, gather_to_host

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    local = all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(params))  # numpy: True
    whole = jax.device_put(params if local else gather_to_host(params), jax.local_devices()[0])
    n, i = jax.process_count(), jax.process_index()
    block = records[len(records) * i // n: len(records) * (i + 1) // n]
    rows = evaluate(nnx.merge(graphdef, whole, rest), block, tokenizer, processor, **options).predictions if block else []
    return score_predictions([row for part in allgather_json(rows) for row in part])
