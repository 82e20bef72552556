"""`rsground data ...` through the real entry point."""

from __future__ import annotations

import pytest

from rsground_jax.cli.main import main
from rsground_jax.data import load_split


def test_synth_writes_a_readable_dataset(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--num-images", "20", "--seed", "3", "--preset", "tiny",
                 "--distractors", "1", "2", "--splits", "train=0.5,test=0.5"]) == 0
    msg = capsys.readouterr().out
    assert msg.startswith("wrote 20 images") and str(out) in msg
    assert len(load_split(out, "train")) > 0 and len(load_split(out, "test")) > 0
    assert main(["data", "check", str(out), "--split", "test"]) == 0
    assert "0 skipped" in capsys.readouterr().out
    assert main(["data", "show", str(out), "--split", "train", "--count", "1"]) == 0
    assert "<answer>\n[" in capsys.readouterr().out


def test_synth_user_errors(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["data", "synth", "--out", str(tmp_path / "full"), "--num-images", "2"]) == 2
    assert "folder is not empty" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "a"), "--num-images", "2", "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "b"), "--num-images", "2", "--image-size", "200", "100"]) == 2
    assert "increasing" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(tmp_path / "c"), "--num-images", "2", "--splits", "train=-1"]) == 2
    assert "non-negative" in capsys.readouterr().err


def test_check_unknown_format_is_a_user_error(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path), "--split", "train", "--format", "coco"]) == 2
    assert "unknown format 'coco'" in capsys.readouterr().err


def test_check_reports_bad_records_and_exit_status(tmp_path, capsys):
    from .conftest import make_dior

    root = make_dior(tmp_path / "d")
    (root / "JPEGImages" / "00002.jpg").unlink()
    assert main(["data", "check", str(root), "--split", "train"]) == 1
    out = capsys.readouterr().out
    assert "2 records kept, 1 skipped (missing_image: 1)" in out and "00002.jpg: image file not found" in out
    assert main(["data", "check", str(root), "--split", "train", "--on-error", "raise"]) == 2
    assert "00002.jpg: image file not found" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["data"], ["data", "synth"]])
def test_missing_arguments_exit_with_one_line(args, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "required" in err and "--help" in err


def test_tokenizer_and_tfds_actions(tmp_path, capsys):
    from rsground_jax.data.tokenizer import load_small_tokenizer

    from .conftest import make_dior

    assert main(["data", "tokenizer", "--out", str(tmp_path / "tok"), "--num-images", "10", "--vocab-size", "400"]) == 0
    assert "'image_pad': 5" in capsys.readouterr().out
    assert load_small_tokenizer(tmp_path / "tok").encode("<|image_pad|>") == [5]
    root = make_dior(tmp_path / "d")
    assert main(["data", "tfds", "--manual-dir", str(root), "--data-dir", str(tmp_path / "tfds")]) == 0
    out = capsys.readouterr().out
    assert "built dior_rsvg 1.0.0" in out and "train 3" in out and "test 2" in out
