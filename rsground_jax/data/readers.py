"""Readers for the RSVG benchmarks in their published on-disk formats, all returning `GroundingRecord`s.

`load_split(root, split, format=...)` is the entry point. Formats and layouts:

``dior_rsvg`` (DIOR-RSVG, Zhan et al. 2023) and ``opt_rsvg`` (OPT-RSVG, Li et al. 2024)
    VOC-style XML, one `<object>` per expression (`name`, `bndbox` xmin/ymin/xmax/ymax, `description`),
    `<filename>` and `<size>` per file. DIOR-RSVG: `Annotations/`, `JPEGImages/`, `{split}.txt`; OPT-RSVG
    (float boxes): `Annotations/`, `Image/`, `split/{split}.txt`. Both layouts are accepted for both names.
    **Split files list global object indices**: the XML files are taken in sorted file-name order and
    every `<object>` is numbered 0, 1, 2, ... across all of them (the numbering of the reference loaders,
    RSVG-pytorch / LQVG); an object belongs to the split when its number is listed. Records come in
    ascending index order and `record_id` is that index. The other objects of the same XML file become
    `others`. An XML file that cannot be parsed (empty, cut short, not XML) has an unknown number of
    objects, so the numbers of its objects and of every object in the files after it are unknown too: each
    listed index from the broken file's first one on is an error (`kind="untrusted_index"`), raised under
    `on_error="raise"`, skipped and reported under `"skip"`. Counting `<object>` tags in a broken file's text
    would be a guess, and a wrong guess gives every later record another object's box and expression.

``rsvg_hr`` (RSVG-HR, Lan et al., LQVG repository)
    `Annotations/rsvg_hr_{split}.txt` (or `rsvg_hr_{split}.txt` in `root`), one expression per line:
    `image,x1,y1,x2,y2,expression`, boxes in original pixels (floats), no header; the expression is
    everything after the fifth comma. Images in `images/` (or `JPEGImages/`, `Images/`). The format carries
    no image size and no category: the size is read from the image header, `category` is None. `others`
    are the other distinct boxes annotated on the same image in the same split file.

``vrsbench`` (VRSBench, Li et al. 2024)
    * split ``train`` / ``val``: per-image `Annotations_{split}/*.json` files
      `{"image": ..., "objects": [{"obj_id", "obj_cls", "obj_coord" | "obj_corner", "referring_sentence",
      "is_unique", ...}]}` with boxes normalized to 0-1 (`obj_coord` = x1, y1, x2, y2; `obj_corner` = the
      4 corners of an oriented box, whose axis-aligned hull is taken); images in `Images_{split}/`.
    * split ``eval``: the benchmark file `VRSBench_EVAL_referring.json`, a list of
      `{"image_id", "question", "ground_truth": "{<x1><y1><x2><y2>}", "unique", "obj_cls", "question_id",
      "obj_corner"?}` with `ground_truth` on a 0-100 scale; images in `Images_val/`. The box is
      `ground_truth` (the benchmark's own definition) unless `vrsbench_box="corner"`.
    Normalized coordinates are clipped to [0, 1] before scaling, as VRSBench's own preparation script does;
    each clip is listed in the report. The image size comes from the image header.

Bad input (see `records.DataError`): missing image, corrupt image (`check_images="decode"` decodes every
image once, in threads; `"header"` only opens it), unparsable XML/JSON/CSV line, box outside the image or
with x2 <= x1 / y2 <= y1, empty expression, XML size that disagrees with the image, split index beyond the
last object. `on_error="raise"` stops at the first, `"skip"` drops the record and lists the error in
`records.report` (and logs a summary). Boxes that reach outside the image by at most `clip_tolerance`
pixels are clipped and listed instead (default 0: strict).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

from rsground_jax.data.records import (
    AnnotatedObject,
    DataError,
    ErrorPolicy,
    GroundingRecord,
    ReadReport,
    Records,
    validate_box,
    validate_expression,
)
from rsground_jax.models.processor import pixel_mode_problem

FORMATS = ("dior_rsvg", "opt_rsvg", "rsvg_hr", "vrsbench")
CHECK_IMAGES_CHOICES = ("decode", "header", "none")

_VOC_IMAGE_DIRS = ("JPEGImages", "Image", "Images", "images")
_HR_IMAGE_DIRS = ("images", "JPEGImages", "Images", "Image")


def load_split(
    root,
    split: str,
    format: str = "auto",
    *,
    on_error: str = "raise",
    check_images: str = "decode",
    clip_tolerance: float = 0.0,
    images_dir=None,
    vrsbench_box: str = "ground_truth",
    num_threads: int = 8,
) -> Records:
    """Read one split of an RSVG dataset into `GroundingRecord`s (a list with `.report`).

    Args:
      root: dataset folder (layouts in the module docstring).
      split: split name (`train`, `val`, `test`; VRSBench: `train`, `val`, `eval`).
      format: one of `FORMATS`, or `auto` to tell from the folder.
      on_error: `raise` at the first bad record, or `skip` it and list it in `records.report`.
      check_images: `decode` (open and decode every image once), `header` (open only) or `none` (trust the
        annotation; RSVG-HR and VRSBench still read the header for the size).
      clip_tolerance: boxes outside the image by at most this many pixels are clipped (and listed).
      images_dir: image folder, when it is not one of the usual names under `root`.
      vrsbench_box: for VRSBench `eval`, `ground_truth` (0-100 string) or `corner` (0-1 `obj_corner`).
      num_threads: threads for the image checks.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder not found", kind="missing_root")
    if check_images not in CHECK_IMAGES_CHOICES:
        raise ValueError(f"check_images must be one of {CHECK_IMAGES_CHOICES}, got {check_images!r}")
    if format == "auto":
        format = detect_format(root, split)
    opts = _Options(check_images, clip_tolerance, None if images_dir is None else Path(images_dir), num_threads)
    report = ReadReport(dataset=format, split=split)
    policy = ErrorPolicy(on_error, report)
    if format in ("dior_rsvg", "opt_rsvg"):
        records = _read_voc(root, split, format, opts, policy)
    elif format == "rsvg_hr":
        records = _read_rsvg_hr(root, split, opts, policy)
    elif format == "vrsbench":
        if vrsbench_box not in ("ground_truth", "corner"):
            raise ValueError(f"vrsbench_box must be 'ground_truth' or 'corner', got {vrsbench_box!r}")
        records = _read_vrsbench(root, split, opts, policy, vrsbench_box)
    else:
        raise ValueError(f"unknown dataset format {format!r}; expected one of {FORMATS} or 'auto'")
    return policy.finish(records)


def detect_format(root, split: str) -> str:
    """Tell the format from the folder layout (see the module docstring)."""
    root = Path(root)
    if (root / "Annotations").is_dir() and any((root / "Annotations").glob("*.xml")):
        return "opt_rsvg" if (root / "split").is_dir() or (root / "Image").is_dir() else "dior_rsvg"
    if _first_existing([root / "Annotations" / f"rsvg_hr_{split}.txt", root / f"rsvg_hr_{split}.txt"]):
        return "rsvg_hr"
    if (root / f"Annotations_{split}").is_dir() or (root / "VRSBench_EVAL_referring.json").is_file():
        return "vrsbench"
    raise DataError(
        root,
        f"cannot tell the dataset format for split {split!r} (no Annotations/*.xml, rsvg_hr_{split}.txt, "
        f"Annotations_{split}/ or VRSBench_EVAL_referring.json); pass format= one of {FORMATS}",
        kind="unknown_format",
    )


# --------------------------------------------------------------------------------------------- images


@dataclasses.dataclass(frozen=True)
class _Options:
    check_images: str
    clip_tolerance: float
    images_dir: Path | None
    num_threads: int


def probe_image(path, mode: str = "decode") -> tuple[int, int]:
    """(width, height) of an image file; `DataError` when it is missing or cannot be read/decoded.

    `mode="decode"` decodes the whole file (JPEGs at 1/8 scale through libjpeg's DCT scaling, which still
    reads every entropy-coded byte, so truncation and corruption are found) ; `"header"` only parses the header.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise DataError(path, "image file not found", kind="missing_image")
    try:
        with Image.open(path) as im:
            width, height = im.size
            if mode == "decode":
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
                im.load()
                problem = pixel_mode_problem(im)
                if problem:
                    raise DataError(path, problem, kind="unsupported_image")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(path, f"corrupt or unreadable image ({type(e).__name__}: {e})", kind="corrupt_image") from None
    if width <= 0 or height <= 0:
        raise DataError(path, f"image has an empty size {width}x{height}", kind="corrupt_image")
    return width, height


def _probe_all(paths, mode: str, num_threads: int) -> dict[str, tuple[int, int] | DataError]:
    """Probe each distinct path once, in threads (PIL releases the GIL while decoding)."""
    unique = sorted(set(paths))

    def one(p):
        try:
            return probe_image(p, mode)
        except DataError as e:
            return e

    if num_threads <= 1 or len(unique) < 8:
        return {p: one(p) for p in unique}
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        return dict(zip(unique, pool.map(one, unique)))


def _image_dir(root: Path, opts: _Options, candidates) -> Path:
    if opts.images_dir is not None:
        if not opts.images_dir.is_dir():
            raise DataError(opts.images_dir, "image folder not found", kind="missing_root")
        return opts.images_dir
    found = _first_existing([root / c for c in candidates])
    if found is None:
        raise DataError(root, f"no image folder (looked for {', '.join(candidates)}); pass images_dir=", kind="missing_root")
    return found


def _first_existing(paths) -> Path | None:
    return next((p for p in paths if p.exists()), None)


# --------------------------------------------------------------------------------- DIOR-RSVG / OPT-RSVG


@dataclasses.dataclass
class _VocObject:
    index: int  # global object index
    xml: Path
    ordinal: int  # position inside its file
    category: str | None
    box: tuple[float, ...] | DataError
    expression: str | None


@dataclasses.dataclass
class _VocFile:
    path: Path
    filename: str
    size: tuple[int, int] | None  # (width, height) from <size>
    objects: list[_VocObject]
    error: DataError | None = None


def read_text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (universal newlines); `DataError` naming the file when it is not UTF-8 or
    cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().split("\n")
    except UnicodeDecodeError as e:
        raise DataError(path, f"not a UTF-8 text file (byte {e.start}: {e.reason})", kind="unreadable_file") from None
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror or e})", kind="unreadable_file") from None


def read_split_indices(path: Path, policy: ErrorPolicy) -> list[int]:
    """Integers of a split file, one per line (blank lines ignored), ascending and deduplicated."""
    indices = set()
    for n, line in enumerate(read_text_lines(path), 1):
        text = line.strip()
        if not text:
            continue
        try:
            value = int(text)
        except ValueError:
            policy(DataError(path, f"not an object index: {text!r}", f"line {n}", kind="bad_split_line"))
            continue
        if value < 0:
            policy(DataError(path, f"negative object index {value}", f"line {n}", kind="bad_split_line"))
            continue
        if value in indices:
            policy.report.notes.append(f"{path}: index {value} listed more than once (line {n})")
        indices.add(value)
    return sorted(indices)


def parse_voc_xml(path: Path, first_index: int) -> _VocFile:
    """One annotation file; objects numbered from `first_index`. Never raises for bad content."""
    try:
        tree = ET.fromstring(path.read_bytes())
    except (ET.ParseError, OSError) as e:
        reason = f"unparsable XML ({e})" if isinstance(e, ET.ParseError) else f"unreadable ({e.strerror or e})"
        return _VocFile(path, "", None, [], DataError(path, reason, kind="unparsable_xml"))
    filename = (tree.findtext("filename") or "").strip() or path.stem + ".jpg"
    size = None
    try:
        w, h = int(float(tree.findtext("size/width"))), int(float(tree.findtext("size/height")))
        if w > 0 and h > 0:
            size = (w, h)
    except (TypeError, ValueError):
        pass
    objects = []
    for i, obj in enumerate(tree.findall("object")):
        where = f"object {i}"
        box: tuple[float, ...] | DataError
        try:
            box = tuple(float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            texts = [obj.findtext(f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")]
            box = DataError(path, f"unparsable <bndbox> {texts}", where, kind="bad_box")
        name = (obj.findtext("name") or "").strip() or None
        objects.append(_VocObject(first_index + i, path, i, name, box, obj.findtext("description")))
    return _VocFile(path, filename, size, objects)


def _read_voc(root: Path, split: str, dataset: str, opts: _Options, policy: ErrorPolicy) -> list[GroundingRecord]:
    ann_dir = root / "Annotations"
    if not ann_dir.is_dir():
        raise DataError(root, "no Annotations/ folder", kind="missing_root")
    split_candidates = [root / f"{split}.txt", root / "split" / f"{split}.txt", root / "splits" / f"{split}.txt"]
    split_file = _first_existing(split_candidates)
    if split_file is None:
        raise DataError(root, f"no split file for {split!r} (looked for {', '.join(str(p.relative_to(root)) for p in split_candidates)})", kind="missing_root")
    image_dir = _image_dir(root, opts, _VOC_IMAGE_DIRS)
    wanted = read_split_indices(split_file, policy)

    files: list[_VocFile] = []
    total = 0
    broken: _VocFile | None = None  # the first unparsable file: numbering is unknown from `total` at it on
    for xml_path in sorted(ann_dir.glob("*.xml"), key=lambda p: p.name):
        f = parse_voc_xml(xml_path, total)
        files.append(f)
        if f.error is not None:
            if broken is None:
                broken, trusted = f, total
            policy.report.notes.append(f"{xml_path.name}: {f.error.problem}; the object numbers from {total} on "
                                       "are unknown")
        total += len(f.objects)

    by_index: dict[int, tuple[_VocFile, _VocObject]] = {}
    for f in files:
        for o in f.objects:
            by_index[o.index] = (f, o)
    selected = []
    for idx in wanted:
        if broken is not None and idx >= trusted:
            policy(DataError(split_file, f"object index {idx} cannot be trusted: {broken.path} is "
                             f"{broken.error.problem.split(' (')[0]}, so how many objects it holds, and the numbers of "
                             f"every object from {trusted} on, are unknown", kind="untrusted_index"))
            continue
        if idx not in by_index:
            policy(DataError(split_file, f"object index {idx} is beyond the last object ({total - 1}) of the {len(files)} files in {ann_dir}", kind="bad_index"))
            continue
        selected.append(by_index[idx])

    sizes = {}
    if opts.check_images != "none":
        paths = {str(image_dir / f.filename) for f, _ in selected if f.error is None}
        sizes = _probe_all(paths, opts.check_images, opts.num_threads)

    records = []
    for f, o in selected:
        try:
            records.append(_voc_record(f, o, image_dir, sizes, dataset, split, opts, policy.report))
        except DataError as e:
            policy(e)
    return records


def _voc_record(f: _VocFile, o: _VocObject, image_dir: Path, sizes, dataset, split, opts: _Options, report: ReadReport) -> GroundingRecord:
    where = f"object {o.ordinal} (global index {o.index})"
    if f.error is not None:
        raise DataError(f.path, f.error.problem, where, kind=f.error.kind)
    image_path = str(image_dir / f.filename)
    if opts.check_images != "none":
        probed = sizes[image_path]
        if isinstance(probed, DataError):
            raise DataError(probed.path, f"{probed.problem} (image of {f.path.name} {where})", kind=probed.kind)
        if f.size is not None and f.size != probed:
            raise DataError(f.path, f"<size> {f.size[0]}x{f.size[1]} does not match the image {image_path} ({probed[0]}x{probed[1]})", kind="size_mismatch")
        width, height = probed
    elif f.size is None:
        raise DataError(f.path, "no valid <size> and check_images='none', so the image size is unknown", kind="bad_size")
    else:
        width, height = f.size
    if isinstance(o.box, DataError):
        raise DataError(o.box.path, o.box.problem, where, kind=o.box.kind)
    box = validate_box(o.box, width, height, f.path, where, opts.clip_tolerance, report.clipped)
    expression = validate_expression(o.expression, f.path, where)
    others = []
    for p in f.objects:
        if p is o:
            continue
        if isinstance(p.box, DataError):
            report.notes.append(f"{f.path.name} object {p.ordinal}: {p.box.problem}; left out of the other objects of {where}")
            continue
        desc = " ".join((p.expression or "").split()) or None
        others.append(AnnotatedObject(tuple(p.box), p.category, desc))
    return GroundingRecord(
        image_path=image_path,
        width=width,
        height=height,
        box=box,
        expression=expression,
        category=o.category,
        others=tuple(others),
        dataset=dataset,
        split=split,
        record_id=str(o.index),
        source=f"{f.path}:{where}",
    )


# ------------------------------------------------------------------------------------------- RSVG-HR


def _read_rsvg_hr(root: Path, split: str, opts: _Options, policy: ErrorPolicy) -> list[GroundingRecord]:
    candidates = [root / "Annotations" / f"rsvg_hr_{split}.txt", root / f"rsvg_hr_{split}.txt"]
    ann = _first_existing(candidates)
    if ann is None:
        raise DataError(root, f"no RSVG-HR annotation file for {split!r} (looked for {', '.join(map(str, candidates))})", kind="missing_root")
    image_dir = _image_dir(root, opts, _HR_IMAGE_DIRS)
    rows = []
    for n, text in enumerate(read_text_lines(ann), 1):
        if not text.strip():
            continue
        where = f"line {n}"
        parts = text.split(",", 5)
        if len(parts) < 6:
            policy(DataError(ann, f"expected 'image,x1,y1,x2,y2,expression', got {len(parts)} fields: {text!r}", where, kind="bad_line"))
            continue
        try:
            box = tuple(float(v) for v in parts[1:5])
        except ValueError:
            policy(DataError(ann, f"unparsable box values {parts[1:5]}", where, kind="bad_box"))
            continue
        rows.append((n, parts[0].strip(), box, parts[5]))

    mode = "header" if opts.check_images == "none" else opts.check_images
    sizes = _probe_all([str(image_dir / r[1]) for r in rows], mode, opts.num_threads)
    # Other objects of an image: the distinct valid boxes annotated on it in this file.
    per_image: dict[str, list[tuple[float, ...]]] = {}
    for _, name, box, _ in rows:
        per_image.setdefault(name, [])
        if box not in per_image[name]:
            per_image[name].append(box)

    records = []
    for n, name, box, expr in rows:
        where = f"line {n}"
        try:
            image_path = str(image_dir / name)
            probed = sizes[image_path]
            if isinstance(probed, DataError):
                raise DataError(probed.path, f"{probed.problem} (image of {ann.name} {where})", kind=probed.kind)
            width, height = probed
            valid = validate_box(box, width, height, ann, where, opts.clip_tolerance, policy.report.clipped)
            expression = validate_expression(expr, ann, where)
            others = tuple(
                AnnotatedObject(tuple(b))
                for b in per_image[name]
                if b != box and b[2] > b[0] and b[3] > b[1]
            )
            records.append(GroundingRecord(image_path, width, height, valid, expression, None, others, "rsvg_hr", split, f"{split}:{n}", f"{ann}:{where}"))
        except DataError as e:
            policy(e)
    return records


# ------------------------------------------------------------------------------------------ VRSBench

_GT_NUMBERS = re.compile(r"<\s*(-?\d+(?:\.\d*)?)\s*>")


def _vrs_box_from_normalized(values, width, height, path, where, report: ReadReport):
    vals = [float(v) for v in values]
    if len(vals) == 8:
        xs, ys = vals[0::2], vals[1::2]
        vals = [min(xs), min(ys), max(xs), max(ys)]
    if len(vals) != 4:
        raise DataError(path, f"expected 4 (obj_coord) or 8 (obj_corner) normalized values, got {len(vals)}", where, kind="bad_box")
    clipped = [min(max(v, 0.0), 1.0) for v in vals]
    if clipped != vals:
        report.clipped.append(f"{path}:{where}: normalized box {vals} clipped to [0, 1]")
    x1, y1, x2, y2 = clipped
    return x1 * width, y1 * height, x2 * width, y2 * height


def _read_vrsbench(root: Path, split: str, opts: _Options, policy: ErrorPolicy, box_source: str) -> list[GroundingRecord]:
    if split == "eval":
        return _read_vrsbench_eval(root, opts, policy, box_source)
    ann_dir = root / f"Annotations_{split}"
    if not ann_dir.is_dir():
        raise DataError(root, f"no Annotations_{split}/ folder (VRSBench splits: train, val, eval)", kind="missing_root")
    image_dir = opts.images_dir or root / f"Images_{split}"
    entries = []
    for path in sorted(ann_dir.glob("*.json"), key=lambda p: p.name):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            image = str(data["image"]).strip()
            objects = data["objects"]
            if not image or not isinstance(objects, list):
                raise KeyError("image/objects")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            policy(DataError(path, f"unparsable JSON ({e})", kind="unparsable_json"))
            continue
        except (KeyError, TypeError) as e:
            policy(DataError(path, f"expected {{'image': str, 'objects': [...]}} ({type(e).__name__}: {e})", kind="unparsable_json"))
            continue
        entries.append((path, image, objects))

    mode = "header" if opts.check_images == "none" else opts.check_images
    sizes = _probe_all([str(image_dir / e[1]) for e in entries], mode, opts.num_threads)
    records = []
    for path, image, objects in entries:
        image_path = str(image_dir / image)
        probed = sizes[image_path]
        parsed = []  # (ordinal, obj, box | DataError)
        for i, obj in enumerate(objects):
            where = f"object {i}"
            try:
                if isinstance(probed, DataError):
                    raise DataError(probed.path, f"{probed.problem} (image of {path.name} {where})", kind=probed.kind)
                values = obj.get("obj_coord") if isinstance(obj.get("obj_coord"), list) else obj.get("obj_corner")
                if values is None:
                    raise DataError(path, "object has neither obj_coord nor obj_corner", where, kind="bad_box")
                box = _vrs_box_from_normalized(values, probed[0], probed[1], path, where, policy.report)
                parsed.append((i, obj, validate_box(box, probed[0], probed[1], path, where, opts.clip_tolerance, policy.report.clipped)))
            except (DataError, TypeError, ValueError, AttributeError) as e:
                err = e if isinstance(e, DataError) else DataError(path, f"bad object ({type(e).__name__}: {e})", where, kind="bad_box")
                parsed.append((i, obj, err))
        for i, obj, box in parsed:
            where = f"object {i}"
            try:
                if isinstance(box, DataError):
                    raise box
                expression = validate_expression(obj.get("referring_sentence"), path, where)
                others = tuple(
                    AnnotatedObject(b, _cls(o), (o.get("referring_sentence") or None))
                    for j, o, b in parsed
                    if j != i and not isinstance(b, DataError)
                )
                uid = obj.get("obj_id", i)
                records.append(GroundingRecord(image_path, probed[0], probed[1], box, expression, _cls(obj), others, "vrsbench", split, f"{Path(image).stem}/{uid}", f"{path}:{where}", _as_bool(obj.get("is_unique"))))
            except DataError as e:
                policy(e)
    return records


def _read_vrsbench_eval(root: Path, opts: _Options, policy: ErrorPolicy, box_source: str) -> list[GroundingRecord]:
    path = root / "VRSBench_EVAL_referring.json"
    if not path.is_file():
        raise DataError(root, "no VRSBench_EVAL_referring.json", kind="missing_root")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"unparsable JSON ({e})", kind="unparsable_json") from None
    if not isinstance(items, list):
        raise DataError(path, f"expected a list of referring items, got {type(items).__name__}", kind="unparsable_json")
    image_dir = opts.images_dir or root / "Images_val"
    mode = "header" if opts.check_images == "none" else opts.check_images
    sizes = _probe_all([str(image_dir / str(it.get("image_id", ""))) for it in items if isinstance(it, dict)], mode, opts.num_threads)

    parsed = []
    for i, it in enumerate(items):
        where = f"item {i}"
        try:
            if not isinstance(it, dict) or "image_id" not in it:
                raise DataError(path, "item is not an object with an image_id", where, kind="unparsable_json")
            where = f"item {i} (question_id {it.get('question_id', '?')})"
            image_path = str(image_dir / str(it["image_id"]))
            probed = sizes[image_path]
            if isinstance(probed, DataError):
                raise DataError(probed.path, f"{probed.problem} (image of {path.name} {where})", kind=probed.kind)
            width, height = probed
            if box_source == "corner":
                if not isinstance(it.get("obj_corner"), list):
                    raise DataError(path, "vrsbench_box='corner' but the item has no obj_corner", where, kind="bad_box")
                box = _vrs_box_from_normalized(it["obj_corner"], width, height, path, where, policy.report)
            else:
                nums = _GT_NUMBERS.findall(str(it.get("ground_truth", "")))
                if len(nums) != 4:
                    raise DataError(path, f"ground_truth {it.get('ground_truth')!r} is not '{{<x1><y1><x2><y2>}}'", where, kind="bad_box")
                box = _vrs_box_from_normalized([float(v) / 100.0 for v in nums], width, height, path, where, policy.report)
            box = validate_box(box, width, height, path, where, opts.clip_tolerance, policy.report.clipped)
            parsed.append((i, it, image_path, (width, height), box, where))
        except DataError as e:
            policy(e)

    by_image: dict[str, list[tuple]] = {}
    for p in parsed:
        by_image.setdefault(p[2], []).append(p)
    records = []
    for i, it, image_path, (width, height), box, where in parsed:
        try:
            expression = validate_expression(it.get("question"), path, where)
            seen = {box}
            others = []
            for _, o, _, _, b, _ in by_image[image_path]:
                if b not in seen:
                    seen.add(b)
                    others.append(AnnotatedObject(b, _cls(o), o.get("question") or None))
            records.append(GroundingRecord(image_path, width, height, box, expression, _cls(it), tuple(others), "vrsbench", "eval", str(it.get("question_id", i)), f"{path}:{where}", _as_bool(it.get("unique"))))
        except DataError as e:
            policy(e)
    return records


def _cls(obj) -> str | None:
    value = obj.get("obj_cls") if isinstance(obj, dict) else None
    if value is None:
        return None
    return str(value).strip().lower() or None


def _as_bool(value) -> bool | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)

