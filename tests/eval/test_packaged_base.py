"""The packaged base model: a complete HF directory that transformers loads with our logits, and a grounder
that beats the best constant box on fresh scenes of the demo's kind."""

import numpy as np
import pytest
import torch
from PIL import Image

from rsground_jax.cli.demo import best_constant_box
from rsground_jax.data import load_split
from rsground_jax.data.chat import DEFAULT_QUESTION, box_question_variants, prompt_from_spec
from rsground_jax.data.synthetic import PRESETS, generate_dataset
from rsground_jax.data.tokenizer import load_tokenizer
from rsground_jax.eval.evaluate import evaluate
from rsground_jax.eval.metrics import grounding_metrics
from rsground_jax.models import load_pretrained
from rsground_jax.models.model_dir import BASE_MODEL_DIR, read_prompt_spec

BASE = str(BASE_MODEL_DIR)


@pytest.fixture(scope="module")
def base():
    return load_pretrained(BASE), load_tokenizer(BASE), *prompt_from_spec(read_prompt_spec(BASE))


def test_packaged_base_is_a_complete_model_directory_transformers_agrees_with(base, rng):
    from transformers import Qwen2_5_VLForConditionalGeneration

    model, tok, template, proc, style = base
    assert style == "box" and proc.max_pixels == 112 * 112
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(BASE, torch_dtype=torch.float32).eval()
    image = Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    pix = proc([image])
    n = int(pix["image_grid_thw"][0].prod()) // 4
    text = tok("the ship on the left")["input_ids"]
    sp = model.config
    ids = np.array([[sp.vision_start_token_id] + [sp.image_token_id] * n + [sp.vision_end_token_id] + text])
    ours = np.asarray(model(ids, np.ones_like(ids), pix["pixel_values"], pix["image_grid_thw"]))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                 pixel_values=torch.tensor(pix["pixel_values"]), image_grid_thw=torch.tensor(pix["image_grid_thw"]),
                 mm_token_type_ids=torch.tensor((ids == sp.image_token_id).astype(np.int64))).logits.numpy()
    assert np.abs(ours - ref).max() <= 1e-4


def test_packaged_base_beats_the_best_constant_box_on_fresh_scenes(base, tmp_path):
    model, tok, template, proc, _ = base
    root = tmp_path / "scenes"
    generate_dataset(root, 60, seed=20261127, config=PRESETS["demo"])  # seeds neither training nor the demo use
    records = [r for split in ("train", "val", "test") for r in load_split(root, split)][:96]
    ev = evaluate(model, records, tok, proc, template=template, batch_size=32, max_new_tokens=24)
    # the constant box fitted on these very records: an upper bound for any constant answer
    const = best_constant_box(records)
    preds = [const * np.array([r.width, r.height, r.width, r.height]) for r in records]
    constant = grounding_metrics(preds, [r.box for r in records])
    assert ev.metrics["num_unparsable"] <= 2
    # measured for the shipped weights: meanIoU 0.179 against 0.076, Pr@0.5 14.6 % against 2.1 % (still a weak
    # grounder on these scenes, see docs/base_model.md); generation is deterministic, so these margins guard
    # against a broken export
    assert ev.metrics["meanIoU"] > constant["meanIoU"] + 0.05, (ev.metrics, constant)
    assert ev.metrics["Pr@0.5"] > constant["Pr@0.5"] + 0.04, (ev.metrics, constant)


def test_packaged_base_finds_a_single_object_on_fresh_plain_scenes(base, tmp_path):
    """The first curriculum stage's skill: one object on plain ground, from the image alone (the expression
    names only the category and maybe a region)."""
    import dataclasses

    model, tok, template, proc, _ = base
    one = dataclasses.replace(PRESETS["tiny"], image_size=(112, 112), num_categories=(1, 1),
                              instances_per_category=(1, 1), num_distractors=(0, 0), object_size=(0.25, 0.45),
                              clutter=0.0, palettes=("urban",))
    root = tmp_path / "single"
    generate_dataset(root, 64, seed=20261201, config=one)
    records = [r for split in ("train", "val", "test") for r in load_split(root, split)][:64]
    ev = evaluate(model, records, tok, proc, template=template, batch_size=32, max_new_tokens=24)
    const = best_constant_box(records)
    constant = grounding_metrics([const * np.array([r.width, r.height, r.width, r.height]) for r in records],
                                 [r.box for r in records])
    # measured: Pr@0.5 84.4 % against 1.6 %, meanIoU 0.686 against 0.122 (the later stage rehearses these
    # scenes; docs/base_model.md)
    assert ev.metrics["Pr@0.5"] > constant["Pr@0.5"] + 0.7, (ev.metrics, constant)
    assert ev.metrics["meanIoU"] > constant["meanIoU"] + 0.45, (ev.metrics, constant)
    # and asked in words it was never trained on (the `positional` stage's phrasings include neither): measured
    # 67.2 % / 0.545 and 75.0 % / 0.600 (the session-5 base, trained on one phrasing: 0.0 % / 0.018 and 0.0 % / 0.001)
    for question in (template.question + " Be precise.", DEFAULT_QUESTION):
        assert question not in box_question_variants()
        other = dataclasses.replace(template, question=question)
        ev = evaluate(model, records, tok, proc, template=other, batch_size=32, max_new_tokens=24)
        assert ev.metrics["Pr@0.5"] > constant["Pr@0.5"] + 0.6, (question, ev.metrics, constant)
        assert ev.metrics["meanIoU"] > constant["meanIoU"] + 0.4, (question, ev.metrics, constant)
