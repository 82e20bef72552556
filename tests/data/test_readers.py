"""Readers on fixture folders in each published format, and every kind of bad input."""

from __future__ import annotations

import json
import logging
import re

import pytest

from rsground_jax.data import DataError, GroundingRecord, load_split
from rsground_jax.data.readers import detect_format, probe_image

from .conftest import DIOR_FILES, jpeg_bytes, make_dior, voc_object, voc_xml, write_jpeg

# ------------------------------------------------------------------------------------ DIOR-RSVG / OPT


def _index_of(record: GroundingRecord) -> int:
    return int(record.expression.rsplit(" ", 1)[1])


def test_dior_split_files_hold_global_object_indices(dior_root):
    # Files hold 2, 3, 1 objects: indices 0-1 / 2-4 / 5. train lists 0, 3, 5 -> one object from each file.
    train = load_split(dior_root, "train", format="dior_rsvg")
    assert [_index_of(r) for r in train] == [0, 3, 5]
    assert [r.record_id for r in train] == ["0", "3", "5"]
    assert [r.image_path.rsplit("/", 1)[1] for r in train] == ["00001.jpg", "00002.jpg", "00003.jpg"]
    assert [r.category for r in train] == ["airplane", "storagetank", "windmill"]
    assert train[1].box == (60.0, 60.0, 90.0, 90.0)
    assert (train[0].width, train[0].height) == (200, 160)
    # The other objects of the same file, in file order, with their own expressions.
    assert [(o.category, o.expression) for o in train[1].others] == [
        ("storagetank", "the storagetank number 2"),
        ("vehicle", "the vehicle number 4"),
    ]
    assert train[2].others == ()
    test = load_split(dior_root, "test", format="dior_rsvg")
    assert [_index_of(r) for r in test] == [1, 4]
    assert test.report.kept == 2 and test.report.skipped == []


def test_dior_numbering_follows_sorted_file_names(tmp_path):
    # A listed index in the middle file: counting in any other file order would pick another object.
    root = make_dior(tmp_path / "d", splits={"train": [2]})
    (rec,) = load_split(root, "train")
    assert _index_of(rec) == 2 and rec.image_path.endswith("00002.jpg")


def test_split_indices_in_unsorted_file_are_returned_ascending(tmp_path):
    root = make_dior(tmp_path / "d", splits={"train": [5, 0, 3, 3]})
    records = load_split(root, "train")
    assert [_index_of(r) for r in records] == [0, 3, 5]
    assert any("more than once" in n for n in records.report.notes)


def test_opt_rsvg_layout_and_float_boxes(tmp_path):
    root = make_dior(tmp_path / "OPT-RSVG", images_dir="Image", split_dir="split", floats=True)
    assert detect_format(root, "train") == "opt_rsvg"
    records = load_split(root, "train")
    assert records.report.dataset == "opt_rsvg"
    assert records[0].box == (10.25, 20.25, 50.25, 60.25)
    assert [_index_of(r) for r in records] == [0, 3, 5]


def test_detect_format_of_dior(dior_root):
    assert detect_format(dior_root, "train") == "dior_rsvg"


# -------------------------------------------------------------------------------------------- RSVG-HR

RSVG_HR_TRAIN_BAD = {18: "y2 <= y1", 450: "x2 <= x1", 315: "outside", 572: "outside", 1305: "outside", 1988: "outside"}


def test_rsvg_hr_real_annotations(rsvg_hr_root):
    test = load_split(rsvg_hr_root, "test", format="rsvg_hr", on_error="skip", check_images="header")
    # 499 lines; line 172 has x2 = 1032.12 on a 1024 px image.
    assert len(test) == 498 and test.report.num_skipped == 1
    (err,) = test.report.skipped
    assert err.kind == "box_outside_image" and "rsvg_hr_test.txt:line 172" in str(err)
    r = test[0]
    assert r.image_path.endswith("279083_4582370_512_32617_sport_swimming.jpg")
    assert r.box == (409.0, 450.0, 447.0, 467.0) and (r.width, r.height) == (1024, 1024)
    assert r.expression == "find a swimming pool in the middle part and it is located at the top of a parking lot"
    assert r.category is None and r.record_id == "test:1"
    # Other boxes annotated on the same image (lines 2 and 3 share a box: it appears once).
    assert [o.box for o in r.others] == [(497.25, 870.0, 543.88, 921.0)]


def test_rsvg_hr_real_train_defects_are_reported_by_line(rsvg_hr_root):
    train = load_split(rsvg_hr_root, "train", format="rsvg_hr", on_error="skip", check_images="none")
    assert len(train) == 2151 - len(RSVG_HR_TRAIN_BAD)
    found = {int(str(e).split(":line ")[1].split(":")[0]): str(e) for e in train.report.skipped}
    assert set(found) == set(RSVG_HR_TRAIN_BAD)
    for line, problem in RSVG_HR_TRAIN_BAD.items():
        assert problem in found[line], found[line]
    with pytest.raises(DataError, match=r"rsvg_hr_train\.txt:line 18: box \(170, 774, 216, 0\) has y2 <= y1"):
        load_split(rsvg_hr_root, "train", format="rsvg_hr", check_images="none")


def test_rsvg_hr_clip_tolerance_clips_and_lists(rsvg_hr_root):
    test = load_split(rsvg_hr_root, "test", format="rsvg_hr", clip_tolerance=10, check_images="none")
    assert len(test) == 499 and len(test.report.clipped) == 1
    clipped = next(r for r in test if r.record_id == "test:172")
    assert clipped.box == (927.39, 28.0, 1024.0, 132.73)


def test_rsvg_hr_expression_keeps_commas(tmp_path):
    root = tmp_path / "hr"
    write_jpeg(root / "images" / "a.jpg", 100, 80)
    (root / "rsvg_hr_val.txt").write_text("a.jpg,1,2,30,40,the pool, left of the road\n")
    (r,) = load_split(root, "val")
    assert r.expression == "the pool, left of the road"


# ------------------------------------------------------------------------------------------- VRSBench


def _vrsbench(root):
    write_jpeg(root / "Images_val" / "P0001_0001.png", 512, 512)
    write_jpeg(root / "Images_val" / "P0002_0003.png", 512, 512, seed=1)
    ann = root / "Annotations_val"
    ann.mkdir(parents=True)
    (ann / "P0001_0001.json").write_text(
        json.dumps(
            {
                "image": "P0001_0001.png",
                "caption": "an airport",
                "objects": [
                    {"obj_id": 3, "obj_cls": "Airplane", "obj_coord": [0.1, 0.2, 0.3, 0.4], "referring_sentence": "the airplane on the left", "is_unique": False},
                    # Oriented box whose corners leave the image: clipped to [0, 1] as VRSBench does.
                    {"obj_id": 7, "obj_cls": "vehicle", "obj_corner": [0.9, 0.5, 1.02, 0.5, 1.02, 0.6, 0.9, 0.6], "referring_sentence": "a car", "is_unique": True},
                ],
            }
        )
    )
    (root / "VRSBench_EVAL_referring.json").write_text(
        json.dumps(
            [
                {"image_id": "P0002_0003.png", "question": "the large ship", "ground_truth": "{<25><40><33><60>}", "dataset": "VRSBench", "question_id": 0, "type": "ref", "unique": True, "obj_cls": "ship", "obj_ids": [0]},
                {"image_id": "P0002_0003.png", "question": "the small ship", "ground_truth": "{<50><50><60><70>}", "question_id": 1, "unique": False, "obj_cls": "ship", "obj_corner": [0.5, 0.5, 0.6, 0.5, 0.6, 0.7, 0.5, 0.7]},
            ]
        )
    )
    return root


def test_vrsbench_per_image_json(tmp_path):
    root = _vrsbench(tmp_path / "VRSBench")
    assert detect_format(root, "val") == "vrsbench"
    records = load_split(root, "val")
    a, v = records
    assert a.box == pytest.approx((51.2, 102.4, 153.6, 204.8)) and a.category == "airplane" and a.unique is False
    assert v.box == pytest.approx((460.8, 256.0, 512.0, 307.2)) and v.unique is True
    assert len(records.report.clipped) == 1 and "clipped to [0, 1]" in records.report.clipped[0]
    assert [o.expression for o in a.others] == ["a car"]
    assert a.record_id == "P0001_0001/3"


def test_vrsbench_eval_file_uses_0_100_ground_truth(tmp_path):
    root = _vrsbench(tmp_path / "VRSBench")
    big, small = load_split(root, "eval", format="vrsbench")
    assert big.box == pytest.approx((128.0, 204.8, 168.96, 307.2)) and big.unique is True
    assert small.box == pytest.approx((256.0, 256.0, 307.2, 358.4))
    assert [o.box for o in big.others] == [small.box]
    # obj_corner instead of the 0-100 string: the first item has none.
    with pytest.raises(DataError, match=r"item 0 \(question_id 0\): vrsbench_box='corner' but the item has no obj_corner"):
        load_split(root, "eval", format="vrsbench", vrsbench_box="corner")


# ----------------------------------------------------------------------------------------- bad input


def _write_file(root, stem, objects, size=(200, 160)):
    (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", size[0], size[1], objects))


# kind -> (break the fixture, message pattern, global indices of train still read in skip mode).
# train lists [0, 3, 5]; the broken record is index 3 (file 00002) except for the split-file cases, which
# add a bad line and keep all three.
BAD_CASES = {
    "missing_image": (lambda root: (root / "JPEGImages" / "00002.jpg").unlink(), r"00002\.jpg: image file not found", [0, 5]),
    "corrupt_image": (
        lambda root: (root / "JPEGImages" / "00002.jpg").write_bytes(jpeg_bytes(200, 160)[:700]),
        r"00002\.jpg: corrupt or unreadable image \(OSError: image file is truncated",
        [0, 5],
    ),
    "box_outside_image": (
        lambda root: _write_file(root, "00002", [voc_object("storagetank", (5, 5, 25, 25), "a"), voc_object("storagetank", (60, 60, 230, 90), "the storagetank number 3"), voc_object("vehicle", (150, 10, 170, 30), "c")]),
        r"00002\.xml:object 1 \(global index 3\): box \(60, 60, 230, 90\) lies outside the 200x160 image",
        [0, 5],
    ),
    "bad_box": (
        lambda root: _write_file(root, "00002", [voc_object("storagetank", (5, 5, 25, 25), "a"), voc_object("storagetank", (60, 60, 60, 90), "x"), voc_object("vehicle", (150, 10, 170, 30), "c")]),
        r"00002\.xml:object 1 \(global index 3\): box \(60, 60, 60, 90\) has x2 <= x1",
        [0, 5],
    ),
    "empty_expression": (
        lambda root: _write_file(root, "00002", [voc_object("storagetank", (5, 5, 25, 25), "a"), voc_object("storagetank", (60, 60, 90, 90), "   "), voc_object("vehicle", (150, 10, 170, 30), "c")]),
        r"00002\.xml:object 1 \(global index 3\): empty expression",
        [0, 5],
    ),
    "size_mismatch": (
        lambda root: write_jpeg(root / "JPEGImages" / "00002.jpg", 100, 100),
        r"00002\.xml: <size> 200x160 does not match the image .*00002\.jpg \(100x100\)",
        [0, 5],
    ),
    "bad_index": (
        lambda root: (root / "train.txt").write_text("0\n3\n5\n6\n"),
        r"train\.txt: object index 6 is beyond the last object \(5\) of the 3 files",
        [0, 3, 5],
    ),
    "bad_split_line": (
        lambda root: (root / "train.txt").write_text("0\n3\nfive\n5\n"),
        r"train\.txt:line 3: not an object index: 'five'",
        [0, 3, 5],
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_input_raises_with_file_and_problem(tmp_path, kind):
    corrupt, pattern, _ = BAD_CASES[kind]
    root = make_dior(tmp_path / "d")
    corrupt(root)
    with pytest.raises(DataError, match=pattern) as info:
        load_split(root, "train")
    assert info.value.kind == kind


@pytest.mark.parametrize("kind", sorted(BAD_CASES))
def test_bad_input_skipped_is_counted_and_reported(tmp_path, kind, caplog):
    corrupt, pattern, kept = BAD_CASES[kind]
    root = make_dior(tmp_path / "d")
    corrupt(root)
    with caplog.at_level(logging.WARNING):
        records = load_split(root, "train", on_error="skip")
    assert [_index_of(r) for r in records] == kept
    assert records.report.kept == len(kept)
    assert records.report.num_skipped == 1 and records.report.skipped_by_kind() == {kind: 1}
    assert "1 skipped" in caplog.text and kind in caplog.text
    assert re.search(pattern, caplog.text)


LAYOUTS = {"dior_rsvg": {}, "opt_rsvg": {"images_dir": "Image", "split_dir": "split", "floats": True}}
BREAKS = {"zero_bytes": lambda text: "", "truncated": lambda text: text[: len(text) // 2]}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("damage", sorted(BREAKS))
def test_a_broken_xml_never_relabels_the_records_after_it(tmp_path, layout, damage):
    # Indices 0-1 in 00001.xml, 2-4 in 00002.xml, 5 in 00003.xml. With 00002.xml unreadable, how many objects
    # it held is unknown, and so is the number of every object from 2 on: 5 could be any object of 00003.xml.
    root = make_dior(tmp_path / "d", splits={"train": [0, 1, 3, 5]}, **LAYOUTS[layout])
    xml = root / "Annotations" / "00002.xml"
    xml.write_text(BREAKS[damage](xml.read_text()))
    records = load_split(root, "train", on_error="skip")
    assert [_index_of(r) for r in records] == [0, 1]  # read from before the broken file, each its own object
    assert records.report.kept == 2 and records.report.skipped_by_kind() == {"untrusted_index": 2}
    assert [e.problem.split(":")[0] for e in records.report.skipped] == ["object index 3 cannot be trusted",
                                                                         "object index 5 cannot be trusted"]
    assert all("00002.xml is unparsable XML" in str(e) for e in records.report.skipped)
    with pytest.raises(DataError, match=r"train\.txt: object index 3 cannot be trusted: .*00002\.xml is unparsable XML"):
        load_split(root, "train")  # the default policy refuses


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_broken_xml_after_the_split_leaves_it_whole(tmp_path, layout):
    root = make_dior(tmp_path / "d", splits={"train": [0, 1, 2, 4]}, **LAYOUTS[layout])
    (root / "Annotations" / "00003.xml").write_text("<annotation><object>")
    for policy in ("raise", "skip"):
        records = load_split(root, "train", on_error=policy)
        assert [_index_of(r) for r in records] == [0, 1, 2, 4] and records.report.num_skipped == 0
        assert any("00003.xml" in n and "unknown" in n for n in records.report.notes)


def test_a_non_utf8_split_file_is_named(tmp_path):
    root = make_dior(tmp_path / "d")
    (root / "train.txt").write_bytes(b"0\n\xff\xfe3\n")
    for policy in ("raise", "skip"):
        with pytest.raises(DataError, match=r"train\.txt: not a UTF-8 text file"):
            load_split(root, "train", on_error=policy)


def test_check_images_header_does_not_decode(tmp_path):
    root = make_dior(tmp_path / "d")
    (root / "JPEGImages" / "00002.jpg").write_bytes(jpeg_bytes(200, 160)[:700])
    assert len(load_split(root, "train", check_images="header")) == 3
    with pytest.raises(DataError, match="truncated"):
        probe_image(root / "JPEGImages" / "00002.jpg", "decode")


def test_missing_folders_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        load_split(tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        load_split(tmp_path / "empty", "train")
    root = make_dior(tmp_path / "d")
    with pytest.raises(DataError, match="no split file for 'trainn'"):
        load_split(root, "trainn")
    with pytest.raises(ValueError, match="on_error must be one of"):
        load_split(root, "train", on_error="ignore")


def test_fixture_has_the_documented_objects():
    assert sum(len(v) for v in DIOR_FILES.values()) == 6
