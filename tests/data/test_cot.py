"""CoT targets and box frames: the answer is the ground truth scaled exactly as the processor resizes."""

from __future__ import annotations

import re

import numpy as np
import pytest

from rsground_jax.data import boxes as B
from rsground_jax.data import cot as cot_module
from rsground_jax.data import expressions as S
from rsground_jax.data.answers import parse_box as parse_answer_box
from rsground_jax.data.cot import keyword_region, make_cot
from rsground_jax.data.records import AnnotatedObject, GroundingRecord
from rsground_jax.models.processor import ImageProcessor

FORMAT = re.compile(r"^<think>[^<>]+</think>\n<answer>\n\[\d+, \d+, \d+, \d+\]\n</answer>$")

PROCESSORS = [
    ImageProcessor(),  # Qwen2.5-VL defaults: 56x56 .. 28x28x1280 pixels
    ImageProcessor(min_pixels=112 * 112, max_pixels=224 * 224),  # the tiny demo
    ImageProcessor(min_pixels=256 * 28 * 28, max_pixels=1280 * 28 * 28),  # RSGround/VLM-R1 style budget
]


def _random_record(rng, width, height, free: bool) -> GroundingRecord:
    def box():
        w = rng.uniform(1.0, width)
        h = rng.uniform(1.0, height)
        x1 = rng.uniform(0, width - w)
        y1 = rng.uniform(0, height - h)
        return (x1, y1, x1 + w, y1 + h)

    others = tuple(AnnotatedObject(box(), "vehicle", None) for _ in range(int(rng.integers(0, 4))))
    expr = rng.choice(["the vehicle in the upper left", "a gray vehicle", "the vehicle right of the road", "the third vehicle"])
    return GroundingRecord("x.jpg", width, height, box(), str(expr), None if free else "vehicle", others)


def test_answer_box_parsed_back_is_within_one_pixel_of_the_ground_truth():
    """Property: random records and image sizes; the bound is half a resized pixel, <= 1 px when the
    processor shrinks each side by at most 2x (always, for the default budget and images up to ~2000 px)."""
    rng = np.random.default_rng(20240601)
    checked = 0
    for _ in range(2000):
        processor = PROCESSORS[int(rng.integers(len(PROCESSORS)))]
        width, height = (int(v) for v in rng.integers(20, 2000, 2))
        if max(width, height) / min(width, height) > 8:
            continue
        record = _random_record(rng, width, height, free=bool(rng.integers(2)))
        cot = make_cot(record, processor, int(rng.integers(1 << 30)))
        assert FORMAT.match(cot.text), cot.text
        parsed = parse_answer_box(cot.text)
        assert parsed == cot.answer_box == B.answer_box(record.box, height, width, processor)
        back = B.resized_to_original(parsed, height, width, processor)
        rh, rw = processor.resized_size(height, width)
        bound = 0.5 * max(width / rw, height / rh) + 1e-9
        err = np.abs(np.subtract(back, record.box))
        assert err.max() <= bound, (width, height, record.box, back)
        if width / rw <= 2 and height / rh <= 2:
            assert err.max() <= 1.0
            checked += 1
    assert checked > 1200


def test_answer_box_is_exact_scaling_of_the_processor_frame():
    p = ImageProcessor()
    # 800x800 -> 812x812 (REFERENCE): factor 812/800 on both axes.
    assert p.resized_size(800, 800) == (812, 812)
    assert B.original_to_resized((100, 200, 300, 400), 800, 800, p) == pytest.approx((101.5, 203.0, 304.5, 406.0))
    assert B.answer_box((100, 200, 300, 400), 800, 800, p) == (102, 203, 305, 406)  # half up
    # 480x640 (h x w) -> 476x644: x and y scale differently.
    assert B.answer_box((0, 0, 640, 480), 480, 640, p) == (0, 0, 644, 476)
    assert B.resized_to_original((0, 0, 644, 476), 480, 640, p) == pytest.approx((0, 0, 640, 480))


def test_synthetic_cot_states_the_cue_and_candidates(synth_root):
    from rsground_jax.data import load_split

    p = ImageProcessor()
    kinds = {}
    for i, r in enumerate(load_split(synth_root, "train")):
        cot = make_cot(r, p, [0, i])
        kinds.setdefault(cot.cue_kind, cot.text)
        assert FORMAT.match(cot.text)
        rh, rw = cot.resized_hw
        assert f"{rw}x{rh}" in cot.text or f"{rw} by {rh}" in cot.text
        # Every box mentioned is a known object's box in the resized frame.
        known = {B.format_box(B.answer_box(o.box, r.height, r.width, p)) for o in r.all_objects()}
        for mentioned in re.findall(r"\[\d+, \d+, \d+, \d+\]", cot.text):
            assert mentioned in known, (mentioned, cot.text)
    assert {"absolute", "ordinal", "relative", "size", "unique"} <= set(kinds)
    assert "From the" in kinds["ordinal"] or "Ordering the" in kinds["ordinal"]
    assert "area" in kinds["size"]


def test_absolute_cue_region_is_in_resized_pixels():
    p = ImageProcessor()
    r = GroundingRecord("x.jpg", 800, 800, (20, 30, 60, 70), "the airplane in the upper left", "airplane",
                        (AnnotatedObject((700, 700, 760, 760), "airplane", None),))
    text = make_cot(r, p, 0).text
    assert "x 0-271, y 0-271" in text  # upper third of 812 px
    assert "[20, 30, 61, 71]" in text and "[711, 711, 771, 771]" in text


def test_free_form_trace_never_names_a_region_the_target_is_not_in():
    p = ImageProcessor()
    rng = np.random.default_rng(1)
    for _ in range(300):
        x1, y1 = rng.uniform(0, 700, 2)
        r = GroundingRecord("x.jpg", 800, 800, (x1, y1, x1 + 50, y1 + 50), "the bridge in the upper left of the river", "bridge")
        text = make_cot(r, p, int(rng.integers(1000))).text
        cx, cy = (x1 + 25) * 812 / 800, (y1 + 25) * 812 / 800
        m = re.search(r"x (\d+)-(\d+), y (\d+)-(\d+)", text)
        assert m, text
        a, b, c, d = map(int, m.groups())
        assert a - 1 <= cx <= b + 1 and c - 1 <= cy <= d + 1, text


def test_several_phrasings_chosen_by_seed():
    r = GroundingRecord("x.jpg", 224, 224, (10, 10, 40, 40), "the second ship from the top", "ship",
                        (AnnotatedObject((100, 0, 120, 5), "ship", None), AnnotatedObject((100, 100, 120, 130), "ship", None)))
    p = ImageProcessor()
    texts = {make_cot(r, p, s).text for s in range(40)}
    assert len(texts) >= 4
    assert make_cot(r, p, 7).text == make_cot(r, p, 7).text


def test_keyword_region():
    assert keyword_region("a swimming pool on the far bottom and it is on the right of a basketball court") == "bottom"
    assert keyword_region("the tank at the top-left") == "upper left"
    assert keyword_region("the tank left of the ship") is None
    assert keyword_region("the largest roundabout") is None


def test_cot_uses_the_cue_only_for_its_own_category():
    # Synthetic grammar, but the record's category differs: handled as free-form, still correct.
    r = GroundingRecord("x.jpg", 200, 200, (10, 10, 30, 30), "the ship at the top", "airplane")
    assert make_cot(r, ImageProcessor(), 0).cue_kind == "free"


def test_region_bounds_match_the_resolver_cells():
    for region in S.REGIONS:
        x1, y1, x2, y2 = S.region_bounds(region, 300, 300)
        assert S.in_region(((x1 + x2) / 2, (y1 + y2) / 2), region, 300, 300)


def test_candidates_are_listed_top_to_bottom(synth_root):
    """The candidate list (absolute and relative cues list every object of the category) runs top to bottom
    by box centre, whatever order the annotation gives them in."""
    from rsground_jax.data import load_split

    p = ImageProcessor()
    checked = 0
    for i, r in enumerate(load_split(synth_root, "train")):
        cot = make_cot(r, p, [0, i])
        m = re.search(r"(?:Candidates: |There are \d+ [a-z ]+: )((?:\[\d+, \d+, \d+, \d+\](?:, )?)+)", cot.text)
        if m is None or cot.cue_kind not in ("absolute", "relative"):
            continue
        boxes = [tuple(map(int, b)) for b in re.findall(r"\[(\d+), (\d+), (\d+), (\d+)\]", m.group(1))]
        same = [o for o in r.all_objects() if o.category == r.category]
        assert len(boxes) == min(len(same), 8)
        keys = [(b[1] + b[3], b[0] + b[2]) for b in boxes]
        assert keys == sorted(keys), cot.text
        checked += 1
    assert checked >= 5


def test_brief_cot_restates_the_cue_in_words_without_numbers_or_the_noun(synth_root):
    """The brief form (answer_style="brief_cot") restates what the expression fixes, in words: no number (the
    demo model copies them into its box), no category noun, no candidate list, no image size."""
    from rsground_jax.data import load_split

    p = ImageProcessor(max_pixels=112 * 112)
    kinds = set()
    for i, r in enumerate(load_split(synth_root, "train")):
        full, brief = make_cot(r, p, [0, i]), make_cot(r, p, [0, i], brief=True)
        assert FORMAT.match(brief.text), brief.text
        assert brief.answer_box == full.answer_box and brief.cue_kind == full.cue_kind
        assert parse_answer_box(brief.text) == tuple(float(v) for v in full.answer_box)
        assert len(brief.text) < len(full.text)
        think = brief.text.split("</think>")[0].removeprefix("<think>")
        cue = S.parse_expression(r.expression)
        kinds.add(cue.kind)
        assert not re.search(r"\d", think.replace(f"Number {cue.rank} ", "") if cue.kind == "ordinal" else think), think
        anchor = cot_module.display_name(cue.anchor) if cue.kind == "relative" else ""
        assert cot_module.display_name(r.category) not in think.replace(anchor, ""), think
        want = {"absolute": lambda: f"In the {cue.region}.",
                "ordinal": lambda: f"Number {cue.rank} from the {cue.direction}.",
                "size": lambda: f"The {cue.extreme} one.",
                "unique": lambda: "The only one.",
                "relative": lambda: f"The one {cot_module._RELATION_WORDS[cue.relation]} the "
                                    f"{cot_module.display_name(cue.anchor)}."}[cue.kind]()
        assert think == want, (r.expression, think)
    assert {"absolute", "ordinal", "relative", "size"} <= kinds


def test_brief_cot_for_free_form_text_names_the_region_the_target_is_in():
    p = ImageProcessor()
    r = GroundingRecord("x.jpg", 800, 800, (700, 20, 760, 60), "the bridge in the upper left of the river", "bridge")
    # the target is not in the named region: the trace names the cell it is in instead
    assert make_cot(r, p, 0, brief=True).text.startswith("<think>In the upper right.</think>")


def _contains_run(ids, run) -> bool:
    return any(list(ids[i : i + len(run)]) == list(run) for i in range(len(ids) - len(run) + 1))


@pytest.mark.parametrize("brief", [False, True])
def test_cot_answer_box_has_the_plain_answers_tokens(synth_root, small_tokenizer, qwen_tokenizer, brief):
    """A plain-box answer starts right after the assistant turn's newline; inside `<answer>` the box must be
    the same token run (so CoT-SFT can reuse the box reading), not `>[`-merged. The small tokenizer also keeps
    the newline before it as its own token, exactly as after `assistant`, and the closing `]`; Qwen's merges
    `]\n` into one token, so there the run is the box up to its last digit."""
    from rsground_jax.data import load_split

    p = ImageProcessor(min_pixels=112 * 112, max_pixels=224 * 224)
    newline = small_tokenizer.encode("\n", add_special_tokens=False)
    for i, r in enumerate(load_split(synth_root, "train")[:40]):
        cot = make_cot(r, p, [0, i], brief=brief)
        box = B.format_box(cot.answer_box)
        for tok, cut in ((small_tokenizer, None), (qwen_tokenizer, -1)):
            plain = tok.encode(box, add_special_tokens=False)[:cut]
            assert _contains_run(tok.encode(cot.text, add_special_tokens=False), plain), (tok, cot.text)
        small = small_tokenizer.encode(cot.text, add_special_tokens=False)
        assert _contains_run(small, newline + small_tokenizer.encode(box, add_special_tokens=False)), cot.text
    # Written flush, the box would not be that run: this is what the layout avoids.
    flush = cot.text.replace("\n", "")
    assert not _contains_run(small_tokenizer.encode(flush, add_special_tokens=False),
                             small_tokenizer.encode(box, add_special_tokens=False))
