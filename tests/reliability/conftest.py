"""The installed `rsground` command as users run it: a subprocess, in the default environment.

Nothing here sets RSGROUND_NO_HUGEPAGES or calls `main(argv)` in-process: where transparent huge pages are in
`madvise` mode (the common default) the command re-executes itself first, and every refusal has to come out
of that second process as one line. `world` holds the inputs the cases share; each case runs in its own
folder, and `snapshot` shows that a refusal changed nothing in either.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


REPO = Path(__file__).resolve().parents[2]
RSGROUND = Path(sys.executable).parent / "rsground"
TINY_SFT = REPO / "tests" / "reliability" / "tiny_sft.py"
CASES = {"refusals": 0, "faults": 0}


def rsground(*args, cwd, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """Run the installed command to the end; stdout and stderr as text."""
    assert RSGROUND.is_file(), f"{RSGROUND}: the rsground command is not installed beside this Python"
    return subprocess.run([str(RSGROUND), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **popen)


def start(*args, cwd, log: Path, **popen) -> subprocess.Popen:
    """Start the installed command in the background, its output to `log`."""
    f = open(log, "w")
    return subprocess.Popen([str(RSGROUND), *map(str, args)], cwd=cwd, stdout=f, stderr=subprocess.STDOUT, **popen)


def assert_refused(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, one line on stderr that holds every needle, no traceback; returns the line."""
    err = result.stderr.strip()
    assert result.returncode == 2, f"exit {result.returncode}\nstdout: {result.stdout[-2000:]}\nstderr: {err[-4000:]}"
    assert "Traceback" not in err and len(err.splitlines()) == 1, f"not one line:\n{err[-4000:]}"
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"
    CASES["refusals"] += 1
    return err


def assert_clean_failure(result: subprocess.CompletedProcess, *needles: str) -> str:
    """A fault (full disk, read-only folder) after work began: exit 2, no traceback, and a last stderr line
    that names the problem (progress bars may come before it)."""
    err = result.stderr.strip()
    assert result.returncode == 2, f"exit {result.returncode}\nstderr: {err[-4000:]}"
    assert "Traceback" not in err, err[-4000:]
    *before, last = err.splitlines()
    assert last.startswith("rsground "), last
    noise = [line for line in before if line.strip() and not line.startswith("sft:")]  # tqdm's progress lines
    assert not noise, "more than the progress bar before the error:\n" + "\n".join(noise[:20])
    for needle in needles:
        assert needle in last, f"{needle!r} not in: {last}"
    CASES["faults"] += 1
    return last


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file and folder under `roots`: kind, size, modification time and content hash."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                out[os.path.join(dirpath, d)] = ("dir",)
            for f in filenames:
                p = os.path.join(dirpath, f)
                st = os.lstat(p)
                with open(p, "rb") as fh:
                    digest = hashlib.sha1(fh.read()).hexdigest()
                out[p] = ("file", st.st_size, st.st_mtime_ns, digest)
    return out


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended (exit {proc.returncode}) before {what}")
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def metrics_steps(path: Path) -> list[int]:
    import json

    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def metrics_losses(path: Path) -> dict[int, float]:
    import json

    return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


@contextlib.contextmanager
def small_disk(path: Path, size_kb: int):
    """A folder on a file system of `size_kb` KiB: a tmpfs where this process may mount one (root), else a
    plain folder and a per-file size limit for the command (RLIMIT_FSIZE: writes fail with EFBIG instead of
    ENOSPC). Yields (folder, extra Popen arguments)."""
    import resource

    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True).returncode == 0
    if mounted:
        try:
            yield path, {}
        finally:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        return

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_kb * 1024, size_kb * 1024))

    yield path, {"preexec_fn": limit}


@contextlib.contextmanager
def read_only_dir(path: Path):
    """A folder nothing can be written in: a read-only tmpfs for root (who ignores permissions), else mode
    0555."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                            capture_output=True).returncode == 0
        if not ok:
            pytest.skip("root without mount: no way to make a folder read-only here")
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        return
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)


# ------------------------------------------------------------------------------------------- shared inputs


def _voc(filename, objects, size=(200, 160)):
    obj = "".join(f"<object><name>{n}</name><pose>Unspecified</pose><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                  f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox><description>{d}</description></object>"
                  for n, b, d in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"<depth>3</depth></size>{obj}</annotation>")


def make_voc(root: Path, layout: str = "dior_rsvg") -> Path:
    """A VOC-style RSVG set: 00001.xml objects 0-1, 00002.xml 2-4, 00003.xml 5; each expression names its index."""
    files = {"00001": [("airplane", (10, 20, 50, 60)), ("ship", (100, 110, 140, 130))],
             "00002": [("storagetank", (5, 5, 25, 25)), ("storagetank", (60, 60, 90, 90)), ("vehicle", (150, 10, 170, 30))],
             "00003": [("windmill", (30, 40, 70, 90))]}
    images = root / ("JPEGImages" if layout == "dior_rsvg" else "Image")
    split_dir = root if layout == "dior_rsvg" else root / "split"
    (root / "Annotations").mkdir(parents=True)
    images.mkdir()
    split_dir.mkdir(exist_ok=True)
    g = 0
    rng = np.random.default_rng(0)
    for stem, objs in files.items():
        objects = []
        for name, box in objs:
            objects.append((name, box, f"the {name} number {g}"))
            g += 1
        (root / "Annotations" / f"{stem}.xml").write_text(_voc(f"{stem}.jpg", objects))
        Image.fromarray(rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)).save(images / f"{stem}.jpg")
    for split, idx in {"train": [0, 3, 5], "val": [2], "test": [1, 4, 5]}.items():
        (split_dir / f"{split}.txt").write_text("".join(f"{i}\n" for i in idx))
    return root


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """Inputs the cases share (read only by them): VOC-style sets, a synthetic set, the packaged model, images."""
    from rsground_jax.models.model_dir import BASE_MODEL_DIR

    root = tmp_path_factory.mktemp("world")
    make_voc(root / "dior")
    r = rsground("data", "synth", "--out", root / "synth", "--num-images", "8", "--seed", "3", "--preset", "demo",
                 cwd=root)
    assert r.returncode == 0, r.stderr
    shutil.copytree(BASE_MODEL_DIR, root / "model")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "image.png")
    (root / "notes.txt").write_text("not an image\n")
    return root


@pytest.fixture
def case(tmp_path, world):
    """A fresh working folder for one case; after the case, the shared inputs are checked unchanged."""
    before = snapshot(world)
    yield tmp_path
    assert snapshot(world) == before, "a case changed the shared inputs"


def pytest_sessionfinish(session):
    """Under pytest-xdist each worker counts its own cases and hands them to the controller (tests/conftest.py
    adds them up and prints the summary)."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["rsground_cases"] = dict(CASES)
