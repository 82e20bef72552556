"""Grain pipelines: static-shape SFT and RL batches, epochs, sharding, workers, exact resume."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from rsground_jax.data import DataError, load_split
from rsground_jax.data.answers import parse_box as parse_answer_box
from rsground_jax.data.cot import make_cot
from rsground_jax.data.pipeline import PipelineConfig, rl_pipeline, sft_pipeline
from rsground_jax.models.processor import ImageProcessor
from rsground_jax.models.qwen2_5_vl.rope_index import get_rope_index

from .conftest import jpeg_bytes, make_dior

PROC = ImageProcessor()
BUCKETS = (256, 320, 384)


@pytest.fixture(scope="module")
def train_records(synth_root):
    return load_split(synth_root, "train")


def _take(iterator, n):
    out = [next(iterator) for _ in range(n)]
    return out


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), f"batch {i}, {k}"


def test_sft_batch_is_static_and_correct(train_records, small_tokenizer):
    pl = sft_pipeline(train_records, small_tokenizer, PROC, PipelineConfig(batch_size=4, length_buckets=BUCKETS, shuffle=False))
    batch = next(iter(pl))
    B = 4
    L = batch["input_ids"].shape[1]
    P = batch["pixel_values"].shape[0]
    assert L in BUCKETS and P == pl.patch_buckets[0] == B * int(pl.plan.num_patches.max())
    expect = {
        "input_ids": ((B, L), np.int32), "attention_mask": ((B, L), np.int32), "loss_mask": ((B, L), np.int32),
        "position_ids": ((3, B, L), np.int32), "rope_deltas": ((B,), np.int32), "mm_token_type_ids": ((B, L), np.int32),
        "pixel_values": ((P, 1176), np.float32), "pixel_mask": ((P,), np.int32), "image_grid_thw": ((B, 3), np.int32),
        "image_num_patches": ((B,), np.int32), "gt_box_original": ((B, 4), np.float32), "gt_box_resized": ((B, 4), np.float32),
        "answer_box": ((B, 4), np.int32), "original_hw": ((B, 2), np.int32), "resized_hw": ((B, 2), np.int32),
        "sample_valid": ((B,), np.int32), "record_index": ((B,), np.int32), "prompt_length": ((B,), np.int32),
    }
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expect
    assert batch["record_index"].tolist() == [0, 1, 2, 3]  # shuffle=False
    image_pad = pl.plan.specials.image_pad
    row = 0
    for b in range(B):
        r = pl.plan.records[b]
        n = int(batch["attention_mask"][b].sum())
        assert batch["attention_mask"][b, :n].all() and not batch["attention_mask"][b, n:].any()  # right padding
        ids = batch["input_ids"][b, :n]
        # Targets: exactly the CoT text and <|im_end|>, starting at prompt_length.
        cot = make_cot(r, PROC, [0, b])
        target = batch["loss_mask"][b]
        assert small_tokenizer.decode(batch["input_ids"][b][target == 1]) == cot.text + "<|im_end|>"
        assert int(np.argmax(target)) == batch["prompt_length"][b]
        assert tuple(batch["answer_box"][b]) == cot.answer_box == parse_answer_box(cot.text)
        # Image: tokens, grid and patches equal the processor's output for the file.
        pv, grid = PROC.process_one(Image.open(r.image_path))
        assert batch["image_grid_thw"][b].tolist() == grid.tolist()
        assert int(batch["mm_token_type_ids"][b].sum()) == (ids == image_pad).sum() == PROC.num_image_tokens(r.height, r.width)
        k = int(batch["image_num_patches"][b])
        np.testing.assert_array_equal(batch["pixel_values"][row : row + k], pv)
        row += k
        # M-RoPE of the padded batch equals that of the sample alone.
        pos, delta = get_rope_index(ids[None], grid[None], image_token_id=image_pad)
        np.testing.assert_array_equal(batch["position_ids"][:, b, :n], pos[:, 0])
        assert batch["rope_deltas"][b] == delta[0]
        np.testing.assert_allclose(batch["gt_box_original"][b], r.box)
        assert batch["original_hw"][b].tolist() == [r.height, r.width]
        assert batch["resized_hw"][b].tolist() == list(PROC.resized_size(r.height, r.width))
    assert batch["pixel_mask"].sum() == row and not batch["pixel_values"][row:].any()
    assert batch["sample_valid"].all()
    assert pl.report.kept == len(train_records) and not pl.report.skipped


def test_rl_batch_is_a_left_padded_prompt_with_ground_truth(train_records, small_tokenizer):
    pl = rl_pipeline(train_records, small_tokenizer, PROC, PipelineConfig(batch_size=3, shuffle=False))
    batch = next(iter(pl))
    assert "loss_mask" not in batch
    L = batch["input_ids"].shape[1]
    for b in range(3):
        n = int(batch["attention_mask"][b].sum())
        assert batch["attention_mask"][b, L - n :].all() and not batch["attention_mask"][b, : L - n].any()
        text = small_tokenizer.decode(batch["input_ids"][b, L - n :])
        assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert f'"{pl.plan.records[b].expression}"' in text
        assert batch["prompt_length"][b] == n
        # Positions of left-padded rows start at 0 on the first real token.
        assert batch["position_ids"][:, b, L - n].tolist() == [0, 0, 0]
    np.testing.assert_allclose(batch["gt_box_original"][0], pl.plan.records[0].box)
    r = pl.plan.records[0]
    np.testing.assert_allclose(batch["gt_box_resized"][0], [v * s for v, s in zip(r.box, [PROC.resized_size(r.height, r.width)[1] / r.width, PROC.resized_size(r.height, r.width)[0] / r.height] * 2)], rtol=1e-6)


def test_batches_use_the_smallest_fitting_length_bucket(train_records, small_tokenizer):
    pl = sft_pipeline(train_records, small_tokenizer, PROC, PipelineConfig(batch_size=2, length_buckets=BUCKETS, num_epochs=1))
    seen = set()
    for batch in pl:
        longest = int(batch["attention_mask"].sum(1).max())
        L = batch["input_ids"].shape[1]
        assert L == min(b for b in BUCKETS if b >= longest)
        seen.add(L)
    assert len(seen) >= 2


def test_overflow_is_an_error_or_a_counted_skip(train_records, small_tokenizer):
    lengths = sorted(sft_pipeline(train_records, small_tokenizer, PROC, PipelineConfig(batch_size=1)).plan.lengths)
    cut = int(lengths[len(lengths) // 2])
    with pytest.raises(ValueError, match=r"Annotations/\d+\.xml:object \d+ \(global index \d+\): sample of \d+ tokens .* longer than the largest length bucket"):
        sft_pipeline(train_records, small_tokenizer, PROC, PipelineConfig(batch_size=1, length_buckets=(cut,)))
    pl = sft_pipeline(train_records, small_tokenizer, PROC, PipelineConfig(batch_size=1, length_buckets=(cut,), on_overflow="skip"))
    n_over = sum(v > cut for v in lengths)
    assert len(pl.report.skipped) == n_over > 0 and pl.report.kept == len(train_records) - n_over
    assert int(pl.plan.lengths.max()) <= cut
    with pytest.raises(ValueError, match="every one of the"):
        sft_pipeline(train_records, small_tokenizer, PROC, PipelineConfig(batch_size=1, length_buckets=(10,), on_overflow="skip"))


def test_patch_buckets_must_hold_a_full_batch(train_records, small_tokenizer):
    with pytest.raises(ValueError, match="largest patch bucket"):
        sft_pipeline(train_records, small_tokenizer, PROC, PipelineConfig(batch_size=4, patch_buckets=(200,)))


def test_each_epoch_is_a_new_permutation(train_records, small_tokenizer):
    n = len(train_records)
    pl = sft_pipeline(train_records, small_tokenizer, PROC, PipelineConfig(batch_size=1, num_epochs=2, seed=3))
    order = [int(b["record_index"][0]) for b in pl]
    first, second = order[:n], order[n:]
    assert sorted(first) == sorted(second) == list(range(n))
    assert first != second and first != list(range(n))


def test_hosts_get_disjoint_shards_of_each_epoch(train_records, small_tokenizer):
    n = len(train_records)
    seen = []
    for shard in range(2):
        cfg = PipelineConfig(batch_size=1, num_epochs=1, seed=5, shard_index=shard, shard_count=2, drop_remainder=False)
        seen.append([int(b["record_index"][0]) for b in sft_pipeline(train_records, small_tokenizer, PROC, cfg) if b["sample_valid"][0]])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(n))


def test_hosts_blocks_stack_into_the_one_host_batch(train_records, small_tokenizer):
    """A multi-host run sees one host's batches: host h's rows are the h-th block of the global batch."""
    hosts, b = 2, 3
    one = sft_pipeline(train_records, small_tokenizer, PROC, PipelineConfig(batch_size=hosts * b, num_epochs=2, seed=7))
    shards = [sft_pipeline(train_records, small_tokenizer, PROC,
                           PipelineConfig(batch_size=b, num_epochs=2, seed=7, shard_index=h, shard_count=hosts))
              for h in range(hosts)]
    batches = list(one)
    assert len(batches) > 2
    for whole, *parts in zip(batches, *shards, strict=True):
        assert np.concatenate([p["record_index"] for p in parts]).tolist() == whole["record_index"].tolist()
        assert np.concatenate([p["sample_valid"] for p in parts]).tolist() == whole["sample_valid"].tolist()


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_finite_sharded_streams_give_every_host_the_same_number_of_batches(train_records, small_tokenizer, drop_remainder):
    n = len(train_records)
    hosts = 3 if n % 3 else 4  # the samples do not split evenly
    assert n % hosts
    per_host = []
    for shard in range(hosts):
        cfg = PipelineConfig(batch_size=4, num_epochs=1, shard_index=shard, shard_count=hosts, drop_remainder=drop_remainder)
        per_host.append(list(sft_pipeline(train_records, small_tokenizer, PROC, cfg)))
    assert len({len(b) for b in per_host}) == 1
    seen = [int(i) for batches in per_host for b in batches for i, v in zip(b["record_index"], b["sample_valid"]) if v]
    assert len(seen) == len(set(seen))
    if not drop_remainder:
        assert sorted(seen) == list(range(n))


def test_last_partial_batch_is_filled_with_invalid_copies(train_records, small_tokenizer):
    n = len(train_records)
    B = 7 if n % 7 else 8
    batches = list(sft_pipeline(train_records, small_tokenizer, PROC, PipelineConfig(batch_size=B, num_epochs=1, drop_remainder=False)))
    last = batches[-1]
    k = n % B
    assert last["sample_valid"].tolist() == [1] * k + [0] * (B - k)
    assert not last["loss_mask"][k:].any()
    assert sum(int(b["sample_valid"].sum()) for b in batches) == n


def test_threads_and_worker_processes_give_the_same_batches(train_records, small_tokenizer):
    base = PipelineConfig(batch_size=3, length_buckets=BUCKETS, seed=1)
    ref = _take(iter(sft_pipeline(train_records, small_tokenizer, PROC, base)), 8)
    threaded = _take(iter(sft_pipeline(train_records, small_tokenizer, PROC, dataclasses.replace(base, read_threads=3))), 8)
    _assert_same_batches(ref, threaded)
    it = iter(sft_pipeline(train_records, small_tokenizer, PROC, dataclasses.replace(base, num_workers=2)))
    try:
        _assert_same_batches(ref, _take(it, 8))
    finally:
        it.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_saved_state_gives_the_same_next_100_batches(train_records, small_tokenizer, tmp_path, workers):
    cfg = PipelineConfig(batch_size=2, length_buckets=BUCKETS, seed=9, num_workers=workers)
    # Uninterrupted run (single process: batches do not depend on the worker count).
    ref = _take(iter(sft_pipeline(train_records, small_tokenizer, PROC, dataclasses.replace(cfg, num_workers=0))), 107)
    # Interrupted run: 7 batches, save, a new pipeline object and iterator, restore, 100 more.
    pl = sft_pipeline(train_records, small_tokenizer, PROC, cfg)
    it = iter(pl)
    try:
        _assert_same_batches(ref[:7], _take(it, 7))
        pl.save_state(it, tmp_path / "iter.json")
    finally:
        if workers:
            it.close()
    resumed_pl = sft_pipeline(train_records, small_tokenizer, PROC, cfg)
    it2 = iter(resumed_pl)
    try:
        resumed_pl.restore_state(it2, tmp_path / "iter.json")
        _assert_same_batches(ref[7:], _take(it2, 100))
    finally:
        if workers:
            it2.close()
    assert 107 * 2 > len(train_records)  # the 100 batches cross an epoch boundary (a reshuffle)


def test_restore_refuses_a_state_from_another_pipeline(train_records, small_tokenizer, tmp_path):
    pl = sft_pipeline(train_records, small_tokenizer, PROC, PipelineConfig(batch_size=2, seed=1))
    it = iter(pl)
    next(it)
    pl.save_state(it, tmp_path / "s.json")
    other = sft_pipeline(train_records, small_tokenizer, PROC, PipelineConfig(batch_size=2, seed=2))
    with pytest.raises(ValueError, match="saved by a different pipeline"):
        other.restore_state(iter(other), tmp_path / "s.json")


def test_a_moved_dataset_resumes_and_a_changed_one_does_not(synth_root, small_tokenizer, tmp_path):
    import shutil

    moved = tmp_path / "elsewhere" / "data"
    shutil.copytree(synth_root, moved)
    cfg = PipelineConfig(batch_size=2, seed=3)
    here = sft_pipeline(load_split(synth_root, "train"), small_tokenizer, PROC, cfg)
    there = sft_pipeline(load_split(moved, "train"), small_tokenizer, PROC, cfg)
    assert here.fingerprint() == there.fingerprint()
    it = iter(here)
    _take(it, 3)
    here.save_state(it, tmp_path / "s.json")
    it2 = iter(there)
    there.restore_state(it2, tmp_path / "s.json")
    _assert_same_batches(_take(it, 4), _take(it2, 4))
    # one image file renamed: another dataset
    records = load_split(moved, "train")
    first = records[0].image_path
    os.rename(first, first.replace(".jpg", "_x.jpg"))
    renamed = [dataclasses.replace(records[0], image_path=first.replace(".jpg", "_x.jpg")), *records[1:]]
    assert sft_pipeline(renamed, small_tokenizer, PROC, cfg).fingerprint() != there.fingerprint()


def test_corrupt_image_found_while_iterating_names_the_file(tmp_path, small_tokenizer):
    root = make_dior(tmp_path / "d")
    records = load_split(root, "train", check_images="none")
    (root / "JPEGImages" / "00001.jpg").write_bytes(jpeg_bytes(200, 160)[:500])
    pl = sft_pipeline(records, small_tokenizer, PROC, PipelineConfig(batch_size=1, shuffle=False))
    with pytest.raises(DataError, match=r"00001\.jpg: corrupt or unreadable image"):
        next(iter(pl))


def test_config_validation():
    with pytest.raises(ValueError, match="strictly increasing"):
        PipelineConfig(batch_size=1, length_buckets=(512, 256))
    with pytest.raises(ValueError, match="shard_index"):
        PipelineConfig(batch_size=1, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="on_overflow"):
        PipelineConfig(batch_size=1, on_overflow="truncate")


def test_data_modules_import_without_jax():
    """The readers, generator, CoT, chat and tokenizer modules themselves never import JAX. (Grain, which
    the pipeline module needs, imports it on its own.)"""
    import subprocess
    import sys

    code = (
        "import sys; import rsground_jax.data, rsground_jax.data.synthetic, rsground_jax.data.cot, "
        "rsground_jax.data.chat, rsground_jax.data.tokenizer, rsground_jax.data.boxes; "
        "bad = [m for m in ('jax', 'flax', 'grain') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_box_answer_style_teaches_only_the_box(train_records, small_tokenizer):
    """The base model's targets: the integer resized-frame box, no reasoning."""
    from rsground_jax.data.boxes import answer_box, format_box

    pl = sft_pipeline(train_records[:8], small_tokenizer, PROC,
                      PipelineConfig(batch_size=4, shuffle=False, answer_style="box"))
    batch = next(iter(pl))
    for b in range(4):
        r = pl.plan.records[b]
        target = small_tokenizer.decode(batch["input_ids"][b][batch["loss_mask"][b] == 1])
        assert target == format_box(answer_box(r.box, r.height, r.width, PROC)) + "<|im_end|>"
        assert tuple(batch["answer_box"][b]) == answer_box(r.box, r.height, r.width, PROC)
    with pytest.raises(ValueError, match="answer_style"):
        PipelineConfig(batch_size=1, answer_style="json")


def test_leadin_fraction_puts_a_sentence_before_some_boxes(train_records, small_tokenizer):
    """`leadin_fraction`: that share of the plain-box targets starts with one or two lead-in sentences and a
    newline, the rest is the bare box; the box itself, its tokens and `answer_box` are unchanged, the draw is
    fixed per record, and the option is refused outside answer_style="box"."""
    from rsground_jax.data.boxes import answer_box, format_box
    from rsground_jax.data.chat import box_answer

    recs = train_records[:32]
    cfg = PipelineConfig(batch_size=4, shuffle=False, answer_style="box", leadin_fraction=0.5)
    plan = sft_pipeline(recs, small_tokenizer, PROC, cfg).plan
    again = sft_pipeline(recs, small_tokenizer, PROC, cfg).plan
    assert np.array_equal(plan.ids, again.ids)
    bare = sft_pipeline(recs, small_tokenizer, PROC, dataclasses.replace(cfg, leadin_fraction=0.0)).plan
    led = 0
    for i, r in enumerate(plan.records):
        box = format_box(answer_box(r.box, r.height, r.width, PROC))
        c, b = plan.chat(i), bare.chat(i)
        target = small_tokenizer.decode(c.ids[c.target_start:])
        assert target.endswith("\n" + box + "<|im_end|>") or target == box + "<|im_end|>", target
        assert small_tokenizer.decode(b.ids[b.target_start:]) == box + "<|im_end|>"
        # the box keeps the bare answer's tokens (it follows a newline in both)
        assert list(c.ids[-len(b.ids) + b.target_start:]) == list(b.ids[b.target_start:])
        if target != box + "<|im_end|>":
            led += 1
            leadin = target[: -len(box + "<|im_end|>") - 1]
            assert leadin and "\n" not in leadin and not any(ch.isdigit() for ch in leadin.replace(r.expression, "")), leadin
        assert tuple(plan.answer_box[i]) == answer_box(r.box, r.height, r.width, PROC)
    assert 6 <= led <= 26  # about half of 32
    assert all(box_answer("[1, 2, 3, 4]", "the ship", i, 0.0) == "[1, 2, 3, 4]" for i in range(50))
    assert all(box_answer("[1, 2, 3, 4]", "the ship", i, 1.0).endswith("\n[1, 2, 3, 4]") for i in range(50))
    with pytest.raises(ValueError, match="leadin_fraction"):
        PipelineConfig(batch_size=1, answer_style="cot", leadin_fraction=0.5)
    with pytest.raises(ValueError, match="leadin_fraction"):
        PipelineConfig(batch_size=1, answer_style="box", leadin_fraction=1.5)


def test_question_variants_give_each_record_one_fixed_phrasing(train_records, small_tokenizer):
    """Training-only phrasings: every record's prompt is one of `questions`, the same in every epoch and for
    the same seed, several are used, and generation prompts (the RL plan) keep the main question."""
    from rsground_jax.data.chat import BOX_QUESTION, ChatTemplate, box_question_variants

    variants = box_question_variants()
    assert BOX_QUESTION not in variants and len(set(variants)) == len(variants) >= 100
    assert all("{expression}" in q for q in variants)
    template = ChatTemplate(system=None, question=BOX_QUESTION, question_variants=variants)
    recs = train_records[:24]
    cfg = PipelineConfig(batch_size=4, shuffle=False, answer_style="box")
    plan = sft_pipeline(recs, small_tokenizer, PROC, cfg, template=template).plan
    again = sft_pipeline(recs, small_tokenizer, PROC, cfg, template=template).plan
    assert np.array_equal(plan.ids, again.ids)
    other = sft_pipeline(recs, small_tokenizer, PROC, dataclasses.replace(cfg, cot_seed=1), template=template).plan
    assert not np.array_equal(plan.ids, other.ids)
    used = set()
    for i, r in enumerate(plan.records):
        c = plan.chat(i)
        prompt = small_tokenizer.decode(c.ids[: c.target_start])
        matches = [k for k, q in enumerate(template.questions) if template.prompt_text(r.expression, k) == prompt]
        assert len(matches) == 1, prompt
        used.add(matches[0])
        # the target is still the plain box after whichever phrasing
        assert small_tokenizer.decode(c.ids[c.target_start:]).startswith("[")
    assert len(used) >= 12  # 24 records over 256 phrasings
    rl = rl_pipeline(recs, small_tokenizer, PROC, PipelineConfig(batch_size=4), template=template).plan
    for i, r in enumerate(rl.records):
        assert small_tokenizer.decode(rl.chat(i).ids) == template.prompt_text(r.expression)
    # without variants the plan is what it always was
    plain = sft_pipeline(recs, small_tokenizer, PROC, cfg, template=ChatTemplate(system=None, question=BOX_QUESTION)).plan
    assert all(small_tokenizer.decode(plain.chat(i).ids[: plain.chat(i).target_start])
               == ChatTemplate(system=None, question=BOX_QUESTION).prompt_text(r.expression)
               for i, r in enumerate(plain.records))
    with pytest.raises(ValueError, match="must contain"):
        ChatTemplate(question_variants=("no placeholder",))

