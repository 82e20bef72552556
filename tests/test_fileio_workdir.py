"""Folders written whole or not at all, nothing deleted from a used folder; one run per workdir."""

import json
import os
import subprocess
import sys

import pytest

from rsground_jax.fileio import DestinationNotEmptyError, atomic_path, atomic_write_json, staged_dir
from rsground_jax.workdir import RUN_FILE, WorkdirInUseError, WorkdirLock, claim


def test_a_staged_folder_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with staged_dir(out) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed half-way")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with staged_dir(out) as tmp:
        (tmp / "weights").write_text("whole")
    assert (out / "weights").read_text() == "whole" and [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_used_folder_is_refused_and_left_as_it_was(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "adapter.safetensors").write_text("the user's")
    with pytest.raises(DestinationNotEmptyError, match="out: the model folder is not empty"):
        with staged_dir(tmp_path / "out", "model"):
            pass
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["adapter.safetensors"]
    (tmp_path / "empty").mkdir()
    with staged_dir(tmp_path / "empty") as tmp:  # an empty folder is replaced
        (tmp / "f").write_text("x")
    assert (tmp_path / "empty" / "f").is_file()


def test_a_killed_writers_partial_folder_is_cleared_by_the_next(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.partial-{int(dead.stdout)}"
    stale.mkdir()
    (stale / "half").write_text("x")
    with staged_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_atomic_file_is_never_left_empty(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(OSError) as info:
        with atomic_path(target) as tmp:
            open(tmp, "w").write("{")
            raise OSError(28, "No space left on device", tmp)
    assert info.value.filename == str(target)  # the error names the file asked for, not the temporary one
    assert json.loads(target.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_second_holder_of_a_workdir_is_refused_and_a_released_lock_is_free(tmp_path):
    first = WorkdirLock(tmp_path / "w").acquire()
    with pytest.raises(WorkdirInUseError, match=rf"in use by another run \(pid {os.getpid()}: "):
        WorkdirLock(tmp_path / "w").acquire()
    first.release()
    WorkdirLock(tmp_path / "w").acquire().release()


def test_claim_records_the_settings_and_refuses_what_a_resume_cannot_honour(tmp_path):
    def diff(saved, now):
        return [f"{k}: {saved.get(k)} then, {now[k]} now" for k in now if k != "steps" and saved.get(k) != now[k]]

    w = tmp_path / "w"
    first = claim(w, {"data": 1, "steps": 5}, resume=False, command="sft", differences=diff)
    first.commit()
    first.release()
    assert json.loads((w / RUN_FILE).read_text()) == {"command": "sft", "settings": {"data": 1, "steps": 5}}
    with pytest.raises(WorkdirInUseError, match="holds an earlier sft run; resume it"):
        claim(w, {"data": 1, "steps": 5}, resume=False, command="sft", differences=diff)
    with pytest.raises(WorkdirInUseError, match="data: 1 then, 2 now"):
        claim(w, {"data": 2, "steps": 5}, resume=True, command="sft", differences=diff)
    with pytest.raises(WorkdirInUseError, match="not a `rsground demo` one"):
        claim(w, {"data": 1, "steps": 5}, resume=True, command="demo", differences=diff)
    claim(w, {"data": 1, "steps": 9}, resume=True, command="sft", differences=diff).release()  # steps may change


def test_a_refused_claim_leaves_no_trace(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "mine.txt").write_text("x")
    with pytest.raises(WorkdirInUseError, match="holds files that no rsground sft run recorded \\(mine.txt\\)"):
        claim(tmp_path / "w", {}, resume=True, command="sft", differences=lambda a, b: [])
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["mine.txt"]
    lock = claim(tmp_path / "new", {}, resume=False, command="sft", differences=lambda a, b: [])
    lock.release()  # never committed: the folder it made goes again
    assert not (tmp_path / "new").exists()
