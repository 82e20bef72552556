"""Fixtures for the data tests: hand-written dataset folders in the published formats, tiny JPEGs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

RSVG_HR_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "rsvg_hr"


def jpeg_bytes(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_jpeg(path: Path, width: int, height: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(width, height, seed))
    return path


def voc_object(name: str, box, description: str | None) -> str:
    desc = "" if description is None else f"<description>{description}</description>"
    x1, y1, x2, y2 = box
    return (
        f"<object><name>{name}</name><pose>Unspecified</pose>"
        f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>{desc}</object>"
    )


def voc_xml(filename: str, width: int, height: int, objects: list[str]) -> str:
    return (
        f"<annotation><filename>{filename}</filename><source><database>DIOR</database></source>"
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size><segmented>0</segmented>"
        + "".join(objects)
        + "</annotation>"
    )


# A DIOR-RSVG folder: three XML files with 2, 3 and 1 objects = global indices 0-1, 2-4, 5.
# Every expression names its own global index, so a test can see which object a record came from.
DIOR_FILES = {
    "00001": [("airplane", (10, 20, 50, 60)), ("ship", (100, 110, 140, 130))],
    "00002": [("storagetank", (5, 5, 25, 25)), ("storagetank", (60, 60, 90, 90)), ("vehicle", (150, 10, 170, 30))],
    "00003": [("windmill", (30, 40, 70, 90))],
}
DIOR_SPLITS = {"train": [0, 3, 5], "val": [2], "test": [1, 4]}


def make_dior(root: Path, *, size=(200, 160), splits=DIOR_SPLITS, images_dir="JPEGImages", split_dir=None, floats=False) -> Path:
    g = 0
    # Written in reverse order so that the file system's listing order is not the sorted order.
    entries = []
    for stem, objs in DIOR_FILES.items():
        objects = []
        for name, box in objs:
            b = tuple(v + 0.25 for v in box) if floats else box
            objects.append(voc_object(name, b, f"the {name} number {g}"))
            g += 1
        entries.append((stem, objects))
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for i, (stem, objects) in reversed(list(enumerate(entries))):
        (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", size[0], size[1], objects))
        write_jpeg(root / images_dir / f"{stem}.jpg", size[0], size[1], seed=i)
    split_root = root / split_dir if split_dir else root
    split_root.mkdir(parents=True, exist_ok=True)
    for name, idx in splits.items():
        (split_root / f"{name}.txt").write_text("".join(f"{i}\n" for i in idx))
    return root


@pytest.fixture
def dior_root(tmp_path) -> Path:
    return make_dior(tmp_path / "DIOR_RSVG")


@pytest.fixture(scope="session")
def rsvg_hr_root(tmp_path_factory) -> Path:
    """The real RSVG-HR annotation files with stand-in 1024x1024 images (hard links of one JPEG)."""
    root = tmp_path_factory.mktemp("rsvg_hr")
    (root / "Annotations").mkdir()
    names = set()
    for split in ("train", "test"):
        text = (RSVG_HR_FIXTURES / f"rsvg_hr_{split}.txt").read_text()
        (root / "Annotations" / f"rsvg_hr_{split}.txt").write_text(text)
        names |= {line.split(",", 1)[0] for line in text.splitlines() if line.strip()}
    src = write_jpeg(root / "_src.jpg", 1024, 1024)
    (root / "images").mkdir()
    for name in names:
        (root / "images" / name).hardlink_to(src)
    return root


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic dataset (tiny preset) shared by the pipeline tests."""
    from rsground_jax.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, 60, seed=7, config="tiny")
    return root


@pytest.fixture(scope="session")
def small_tokenizer():
    from rsground_jax.data.tokenizer import load_small_tokenizer

    return load_small_tokenizer()


@pytest.fixture(scope="session")
def qwen_tokenizer():
    from rsground_jax.data.tokenizer import load_qwen_tokenizer

    return load_qwen_tokenizer()
