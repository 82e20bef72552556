"""A TFDS builder for DIOR-RSVG: manual folder -> ArrayRecord, read back with `tfds.data_source` into Grain.

No TensorFlow needed, to build or to read (TFDS writes and reads ArrayRecord through `array_record`; the
image feature receives the JPEG bytes as they are, and we read them back undecoded with `SkipDecoding` so
that the pipeline decodes them with the same PIL path as files).

Build:
    builder = DiorRsvg(data_dir=DATA_DIR)          # file_format is array_record
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))
or `build_dior_rsvg(MANUAL_DIR, DATA_DIR)`, or `rsground data tfds --manual-dir ... --data-dir ...`.
`MANUAL_DIR` holds the DIOR-RSVG layout (`Annotations/`, `JPEGImages/`, `train.txt`, `val.txt`,
`test.txt`); the synthetic generator writes the same layout. The examples are read with
`readers.load_split(..., format="dior_rsvg")` (same validation, same `on_error` policy, decoded images),
written in ascending global object index (`disable_shuffling`), so example `i` of a split is record `i`
of `load_split` for that split.

Features: `image` (JPEG), `image_filename`, `width`, `height`, `box` (x1, y1, x2, y2, original pixels),
`expression`, `category`, `object_index` (the global index of the split files), and the other objects of
the image: `other_boxes` [n, 4], `other_categories`, `other_expressions` ('' where none).

Read: `load_tfds_split(DATA_DIR, split)` -> (records, images) where `images` is an
`images.EncodedImages` over the data source: pass both to `sft_pipeline(..., images=images)`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from rsground_jax.data.images import EncodedImages
from rsground_jax.data.readers import load_split
from rsground_jax.data.records import AnnotatedObject, GroundingRecord

SPLITS = ("train", "val", "test")


class _ManualDatasetInfo(tfds.core.DatasetInfo):
    def initialize_from_bucket(self) -> None:
        """Nothing: this dataset is built from a manual folder and is never on the TFDS bucket, whose lookup
        (disabled offline) still left an empty temporary folder behind on every build."""


class DiorRsvg(tfds.core.GeneratorBasedBuilder):
    """DIOR-RSVG visual grounding (Zhan et al., TGRS 2023) from a manual download folder."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version: one example per referring expression, ArrayRecord."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download DIOR-RSVG (https://github.com/ZhanYang-nwpu/RSVG-pytorch) and place Annotations/, "
        "JPEGImages/ and train.txt, val.txt, test.txt in the manual folder."
    )

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10 finds a builder's source through `importlib_resources` (a backport this project does
        # not install) whenever the builder lives in a package; the answer is simply this file.
        return epath.Path(__file__)

    def __init__(self, *, on_error: str = "raise", check_images: str = "decode", **kwargs):
        kwargs.setdefault("file_format", "array_record")
        self._on_error = on_error
        self._check_images = check_images
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "image_filename": tfds.features.Text(),
                "width": np.int32,
                "height": np.int32,
                "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                "expression": tfds.features.Text(),
                "category": tfds.features.Text(),
                "object_index": np.int64,
                "other_boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                "other_categories": tfds.features.Sequence(tfds.features.Text()),
                "other_expressions": tfds.features.Sequence(tfds.features.Text()),
            }
        )
        return _ManualDatasetInfo(
            builder=self,
            description="DIOR-RSVG referring expressions over 800x800 DIOR images; boxes in original pixels.",
            features=features,
            homepage="https://github.com/ZhanYang-nwpu/RSVG-pytorch",
            citation="@article{zhan2023rsvg, title={RSVG: Exploring Data and Models for Visual Grounding on Remote Sensing Data}, author={Zhan, Yang and Xiong, Zhitong and Yuan, Yuan}, journal={IEEE TGRS}, year={2023}}",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        splits = {s: self._generate_examples(root, s) for s in SPLITS if (root / f"{s}.txt").is_file()}
        if not splits:
            raise FileNotFoundError(f"{root}: no train.txt, val.txt or test.txt (DIOR-RSVG layout expected)")
        return splits

    def _generate_examples(self, root: Path, split: str):
        records = load_split(root, split, format="dior_rsvg", on_error=self._on_error, check_images=self._check_images)
        for r in records:
            yield int(r.record_id), {
                "image": Path(r.image_path).read_bytes(),
                "image_filename": Path(r.image_path).name,
                "width": r.width,
                "height": r.height,
                "box": np.asarray(r.box, np.float32),
                "expression": r.expression,
                "category": r.category or "",
                "object_index": int(r.record_id),
                "other_boxes": np.asarray([o.box for o in r.others], np.float32).reshape(-1, 4),
                "other_categories": [o.category or "" for o in r.others],
                "other_expressions": [o.expression or "" for o in r.others],
            }


def build_dior_rsvg(manual_dir, data_dir, *, on_error: str = "raise", check_images: str = "decode") -> DiorRsvg:
    """Build (or reuse) the ArrayRecord dataset under `data_dir` from a DIOR-RSVG folder."""
    builder = DiorRsvg(data_dir=str(data_dir), on_error=on_error, check_images=check_images)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def load_tfds_split(data_dir, split: str) -> tuple[list[GroundingRecord], EncodedImages]:
    """Records of a built split and the undecoded images (for `sft_pipeline(..., images=...)`)."""
    # `DiorRsvg` is registered under "dior_rsvg" by defining it above.
    source = tfds.data_source("dior_rsvg", split=split, data_dir=str(data_dir), decoders={"image": tfds.decode.SkipDecoding()})
    records = []
    for i in range(len(source)):
        ex = source[i]
        others = tuple(
            AnnotatedObject(tuple(float(v) for v in b), _text(c) or None, _text(e) or None)
            for b, c, e in zip(ex["other_boxes"], ex["other_categories"], ex["other_expressions"])
        )
        records.append(
            GroundingRecord(
                image_path=f"tfds://dior_rsvg/{split}/{i}",
                width=int(ex["width"]),
                height=int(ex["height"]),
                box=tuple(float(v) for v in ex["box"]),
                expression=_text(ex["expression"]),
                category=_text(ex["category"]) or None,
                others=others,
                dataset="dior_rsvg",
                split=split,
                record_id=str(int(ex["object_index"])),
                source=f"tfds dior_rsvg/{split}[{i}] ({_text(ex['image_filename'])})",
            )
        )
    return records, EncodedImages(source, tuple(range(len(source))), "image", f"tfds dior_rsvg/{split}")
