"""Faults through the installed command: a full disk, read-only folders, an interrupted synthesis and export,
a demo workdir reused with other arguments, a broken annotation file, 16-bit images, and what the command's
help and the shipped configs tell a user."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsground_jax.models.model_dir import missing_parts

from .conftest import (CASES, REPO, TINY_SFT, assert_clean_failure, assert_refused, kill9, make_voc, read_only_dir,
                       rsground, small_disk, snapshot, start, wait_for)


def test_a_full_disk_stops_sft_before_its_checkpoint_with_one_line(case):
    # 2 MiB: the synthetic scenes fit, the first checkpoint (about 13 MiB of arrays) does not.
    with small_disk(case / "disk", 2048) as (disk, popen):
        r = rsground("sft", "--config", TINY_SFT, f"workdir={disk / 'w'}", cwd=case, **popen)
        line = assert_clean_failure(r)
        assert re.search(r"(checkpoints: [\d.]+ MiB free, the checkpoint of step 1 needs|No space left|too large)", line)


def test_a_full_disk_during_eval_leaves_no_empty_results(case, world):
    with small_disk(case / "disk", 16) as (disk, popen):  # room for the small files, not for the picture
        r = rsground("eval", "--data", world / "synth", "--model", world / "model", "--out", disk / "out",
                     "--limit", "4", "--batch-size", "4", cwd=case, **popen)
        assert_clean_failure(r, "predictions.png")
        assert not (disk / "out" / "metrics.json").exists()  # not an empty one
        assert not [p for p in (disk / "out").iterdir() if ".tmp-" in p.name]  # no temporary files left


@pytest.mark.parametrize("command", [
    lambda ro, w: ["sft", "--config", TINY_SFT, f"workdir={ro / 'w'}"],
    lambda ro, w: ["data", "synth", "--out", ro / "s", "--num-images", "4"],
    lambda ro, w: ["data", "tokenizer", "--out", ro / "t"],
    lambda ro, w: ["convert", w / "model", ro / "m", "--to", "orbax"],
    lambda ro, w: ["eval", "--data", w / "dior", "--model", w / "model", "--out", ro / "o"],
    lambda ro, w: ["demo", "--workdir", ro / "d"],
], ids=["sft", "data synth", "data tokenizer", "convert", "eval", "demo"])
def test_a_read_only_folder_is_one_line(case, world, command):
    with read_only_dir(case / "ro") as ro:
        r = rsground(*command(ro, world), cwd=case)
        line = assert_refused(r, str(ro))
        assert re.search(r"Read-only file system|not writable|Permission denied", line), line


def test_sigterm_in_synthesis_saves_what_it_wrote_exits_3_and_the_same_command_finishes_it(case):
    args = ["data", "synth", "--out", case / "s", "--num-images", "600", "--seed", "5", "--image-size", "56", "56"]
    p = start(*args, cwd=case, log=case / "log")
    partial = case / ".s.partial" / "Annotations"
    wait_for(lambda: partial.is_dir() and len(list(partial.glob("*.xml"))) >= 50, 120, "50 scenes", p)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 3
    log = (case / "log").read_text()
    assert "Traceback" not in log and "rsground data: stopped: stopped after" in log and "same call continues" in log
    written = len(list(partial.glob("*.xml")))
    assert 50 <= written < 600 and not (case / "s").exists()
    r = rsground(*args, cwd=case)  # the same command: continues, and nothing blocks it
    assert r.returncode == 0, r.stderr
    assert not (case / ".s.partial").exists() and len(list((case / "s" / "Annotations").glob("*.xml"))) == 600
    # the files are those of a synthesis never stopped
    whole = rsground(*args[:3], case / "whole", *args[4:], cwd=case)
    assert whole.returncode == 0, whole.stderr
    for sub in ("Annotations", "JPEGImages"):
        for f in (case / "whole" / sub).iterdir():
            assert f.read_bytes() == (case / "s" / sub / f.name).read_bytes(), f.name
    assert (case / "whole" / "train.txt").read_text() == (case / "s" / "train.txt").read_text()
    CASES["faults"] += 1


def test_synth_overwrite_replaces_the_set_and_keeps_the_users_files(case):
    out = case / "s"
    assert rsground("data", "synth", "--out", out, "--num-images", "6", cwd=case).returncode == 0
    (out / "NOTES.md").write_text("mine\n")
    r = rsground("data", "synth", "--out", out, "--num-images", "3", "--seed", "9", "--overwrite", cwd=case)
    assert r.returncode == 0, r.stderr
    assert (out / "NOTES.md").read_text() == "mine\n"
    assert len(list((out / "Annotations").iterdir())) == 3 and json.loads((out / "rsground_synthetic.json").read_text())["seed"] == 9


def test_kill_9_during_convert_leaves_no_folder_and_the_next_convert_is_complete(case, world):
    dst = case / "out"
    for attempt in range(5):  # the export lasts a fraction of a second: catch it half-way
        p = start("convert", world / "model", dst, "--to", "orbax", cwd=case, log=case / "log")
        try:
            wait_for(lambda: any(case.glob(".out.partial-*")), 60, "the partial folder", p, poll=0.001)
        except AssertionError:
            assert p.wait() == 0
            shutil.rmtree(dst)
            continue
        kill9(p)
        break
    else:
        pytest.fail("the conversion was never caught half-way")
    assert not dst.exists()  # nothing under the final name
    r = rsground("convert", world / "model", dst, "--to", "orbax", cwd=case)
    assert r.returncode == 0, r.stderr
    assert not list(case.glob(".out.partial-*"))  # the killed run's partial folder is cleared
    assert missing_parts(dst) == []  # weights, tokenizer and the prompt file: a complete model folder
    assert (dst / "RECIPE.json").read_bytes() == (world / "model" / "RECIPE.json").read_bytes()
    back = rsground("convert", dst, case / "hf", "--to", "hf", cwd=case)
    assert back.returncode == 0, back.stderr
    assert (case / "hf" / "model.safetensors").read_bytes() == (world / "model" / "model.safetensors").read_bytes()
    CASES["faults"] += 1


def test_a_demo_workdir_is_one_run_at_a_time_and_refuses_other_arguments(case):
    w = case / "w"
    p = start("demo", "--workdir", w, "--num-images", "3000", cwd=case, log=case / "log")
    wait_for(lambda: (case / "w" / ".data.partial").is_dir(), 60, "the demo's synthesis", p)
    assert_refused(rsground("demo", "--workdir", w, "--num-images", "3000", cwd=case), str(w), "in use by another run",
                   f"pid {p.pid}: rsground demo")
    kill9(p)
    before = snapshot(w)
    for flag, value in (("--num-images", "500"), ("--steps", "5"), ("--lr", "0.01")):
        args = ["demo", "--workdir", w, "--num-images", "3000", flag, value]
        line = assert_refused(rsground(*args, cwd=case), str(w))
        assert re.search(rf"{flag} .* then, .* now", line), line
    assert snapshot(w) == before


@pytest.mark.parametrize("layout", ["dior_rsvg", "opt_rsvg"])
def test_data_check_counts_every_record_a_broken_xml_makes_untrusted(case, layout):
    root = make_voc(case / "d", layout)
    (root / "Annotations" / "00002.xml").write_bytes(b"")  # a zero-byte annotation file
    r = rsground("data", "check", root, "--split", "test", cwd=case)  # the default policy of `check`: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "1 records kept, 2 skipped (untrusted_index: 2)" in r.stdout  # index 1 is before the broken file
    assert "object index 4 cannot be trusted" in r.stdout and "object index 5 cannot be trusted" in r.stdout
    assert_refused(rsground("data", "check", root, "--split", "test", "--on-error", "raise", cwd=case),
                   "object index 4 cannot be trusted")


def test_a_16_bit_image_is_read_as_its_values_not_as_white(case, world):
    # A gray ramp over the 16-bit range, the same ramp at 8 bits (v / 257), and a white image (what 16 bits were
    # read as): evaluated as an RSVG-HR split, the model must answer the first two alike and the third otherwise.
    rng = np.random.default_rng(0)
    ramp = np.sort(rng.integers(0, 65536, 112 * 112)).reshape(112, 112).astype(np.uint16)
    (case / "d" / "images").mkdir(parents=True)
    Image.fromarray(ramp).save(case / "d" / "images" / "gray16.png")
    Image.fromarray(((ramp.astype(np.uint32) + 128) // 257).astype(np.uint8)).save(case / "d" / "images" / "gray8.png")
    Image.fromarray(np.full((112, 112), 255, np.uint8)).save(case / "d" / "images" / "white.png")
    assert Image.open(case / "d" / "images" / "gray16.png").mode == "I;16"
    (case / "d" / "rsvg_hr_test.txt").write_text("".join(f"{n}.png,10,10,50,50,the ship\n" for n in ("gray16", "gray8", "white")))
    assert rsground("data", "check", case / "d", "--split", "test", cwd=case).returncode == 0
    r = rsground("eval", "--data", case / "d", "--model", world / "model", "--out", case / "o", "--batch-size", "3",
                 cwd=case)
    assert r.returncode == 0, r.stderr[-3000:]
    texts = {Path(row["image"]).stem: row["text"] for row in map(json.loads, (case / "o" / "predictions.jsonl").open())}
    assert texts["gray16"] == texts["gray8"] != texts["white"], texts
    CASES["faults"] += 1


def test_data_tfds_leaves_no_temporary_folder(case, world):
    tmp = case / "tmp"
    tmp.mkdir()
    r = rsground("data", "tfds", "--manual-dir", world / "dior", "--data-dir", case / "tfds", cwd=case,
                 env={**os.environ, "TMPDIR": str(tmp)})
    assert r.returncode == 0, r.stderr
    assert list(tmp.iterdir()) == []


def test_help_and_configs_name_only_what_exists(case):
    r = rsground("sft", "--help", cwd=REPO)
    assert r.returncode == 0
    cited = set(re.findall(r"configs/[\w.]+\.py", r.stdout))
    assert cited and all((REPO / c).is_file() for c in cited), cited
    readme = (REPO / "configs" / "README.md").read_text()
    for key in re.findall(r"--config\.([\w.]+)=", readme):  # every override the README shows applies
        r = rsground("sft", "--config", REPO / "configs" / "demo_cot_sft.py", f"--config.{key}=oops", cwd=case)
        assert "unknown config key" not in r.stderr, (key, r.stderr)
    from rsground_jax.configs import load_config

    for cfg in (REPO / "configs").glob("*.py"):  # no config writes into the package
        c = load_config(str(cfg))
        out = c.output if "output" in c else c.workdir  # an ablation writes only under its workdir
        assert not os.path.abspath(os.path.join(REPO, out)).startswith(str(REPO / "rsground_jax")), (cfg, out)
