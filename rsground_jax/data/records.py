"""The one record type every RSVG reader returns, and how reading problems are reported.

A `GroundingRecord` is one referring expression grounded in one image:

  * `image_path`, `width`, `height`: the image and its *original* size in pixels;
  * `box`: the target `(x1, y1, x2, y2)` in original pixels, continuous coordinates (a box covering the
    whole image is `(0, 0, width, height)`; the RSVG metric uses no +1), with `0 <= x1 < x2 <= width` and
    `0 <= y1 < y2 <= height`;
  * `expression`, `category` (None where the format has no category, as in RSVG-HR);
  * `others`: the other annotated objects of the same image, where the format has them (DIOR-RSVG,
    OPT-RSVG, VRSBench per-image files, the synthetic set), each an `AnnotatedObject` with its box in
    original pixels and its own expression if it has one;
  * `dataset`, `split`, `record_id` (stable: the global object index for the VOC-style sets, the line for
    RSVG-HR, the question id for VRSBench), `source` (file and place, for messages) and `unique` (VRSBench's
    unique/non-unique flag; None elsewhere).

Every box in a record is in the original frame; the resized (model) frame appears only in
`rsground_jax.data.boxes` and in the batches, under names that say so.

Bad input raises `DataError`, whose message starts with the file (and line or object) and says what is
wrong. Readers take `on_error="raise"` (stop at the first problem) or `"skip"` (drop the record, keep a
`DataError` for it in the `ReadReport` and log a summary). Nothing is dropped without an entry there.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import re
from typing import Iterable

from rsground_jax.errors import UserError

Box = tuple[float, float, float, float]
# Qwen's special tokens are spelt <|name|>; text that holds one would be tokenized as that token.
CHAT_MARKUP = re.compile(r"<\|[A-Za-z0-9_]+\|>")

log = logging.getLogger(__name__)

ON_ERROR_CHOICES = ("raise", "skip")


class DataError(UserError, ValueError):
    """A problem in an input file: `path` (and `where` inside it) plus a one-line `problem`."""

    def __init__(self, path, problem: str, where: str | None = None, kind: str = "invalid"):
        self.path = str(path)
        self.where = where
        self.problem = problem
        self.kind = kind
        loc = f"{self.path}:{where}" if where else self.path
        super().__init__(f"{loc}: {problem}")


@dataclasses.dataclass(frozen=True)
class AnnotatedObject:
    """An annotated object of an image, box in original pixels."""

    box: Box
    category: str | None = None
    expression: str | None = None


@dataclasses.dataclass(frozen=True)
class GroundingRecord:
    """One referring expression and its box (original pixels) in one image. See the module docstring."""

    image_path: str
    width: int
    height: int
    box: Box
    expression: str
    category: str | None = None
    others: tuple[AnnotatedObject, ...] = ()
    dataset: str = ""
    split: str = ""
    record_id: str = ""
    source: str = ""
    unique: bool | None = None

    @property
    def size_hw(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def target(self) -> AnnotatedObject:
        return AnnotatedObject(self.box, self.category, self.expression)

    def all_objects(self) -> tuple[AnnotatedObject, ...]:
        """The target followed by the other annotated objects of the image."""
        return (self.target, *self.others)


@dataclasses.dataclass
class ReadReport:
    """What a reader did: records kept, and every record it skipped with the reason."""

    dataset: str = ""
    split: str = ""
    kept: int = 0
    skipped: list[DataError] = dataclasses.field(default_factory=list)
    clipped: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def skipped_by_kind(self) -> dict[str, int]:
        return dict(collections.Counter(e.kind for e in self.skipped))

    def summary(self, max_examples: int = 5) -> str:
        head = f"{self.dataset or 'dataset'} split {self.split!r}: {self.kept} records kept, {self.num_skipped} skipped"
        if self.skipped:
            kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.skipped_by_kind().items()))
            head += f" ({kinds})"
        if self.clipped:
            head += f", {len(self.clipped)} boxes clipped to the image"
        lines = [head]
        lines += [f"  skipped: {e}" for e in self.skipped[:max_examples]]
        if len(self.skipped) > max_examples:
            lines.append(f"  ... and {len(self.skipped) - max_examples} more")
        lines += [f"  clipped: {c}" for c in self.clipped[:max_examples]]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


class Records(list):
    """A list of `GroundingRecord`s that also carries the `ReadReport` of the read that made it."""

    def __init__(self, records: Iterable[GroundingRecord] = (), report: ReadReport | None = None):
        super().__init__(records)
        self.report = report if report is not None else ReadReport()


class ErrorPolicy:
    """Applies `on_error` for one read: raise at once, or record the error in the report and go on."""

    def __init__(self, on_error: str, report: ReadReport):
        if on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
        self.on_error = on_error
        self.report = report

    def __call__(self, error: DataError) -> None:
        if self.on_error == "raise":
            raise error
        self.report.skipped.append(error)

    def finish(self, records: list[GroundingRecord]) -> Records:
        self.report.kept = len(records)
        if self.report.skipped or self.report.clipped:
            log.warning("%s", self.report.summary())
        return Records(records, self.report)


def validate_box(
    box: Iterable[float],
    width: int,
    height: int,
    path,
    where: str | None = None,
    clip_tolerance: float = 0.0,
    clipped: list[str] | None = None,
) -> Box:
    """Check a box in original pixels against its image; return it (clipped if within tolerance).

    Raises `DataError` for non-finite values, `x2 <= x1` or `y2 <= y1`, and boxes reaching outside the
    image by more than `clip_tolerance` pixels. A box outside by at most the tolerance is clipped to the
    image and the clip is noted in `clipped`.
    """
    b = tuple(float(v) for v in box)
    if len(b) != 4:
        raise DataError(path, f"box must have 4 values, got {len(b)}", where, kind="bad_box")
    x1, y1, x2, y2 = b
    if not all(math.isfinite(v) for v in b):
        raise DataError(path, f"box {_fmt(b)} has a non-finite value", where, kind="bad_box")
    if x2 <= x1:
        raise DataError(path, f"box {_fmt(b)} has x2 <= x1", where, kind="bad_box")
    if y2 <= y1:
        raise DataError(path, f"box {_fmt(b)} has y2 <= y1", where, kind="bad_box")
    over = max(-x1, -y1, x2 - width, y2 - height)
    if over > 0:
        if over > clip_tolerance:
            raise DataError(
                path,
                f"box {_fmt(b)} lies outside the {width}x{height} image (by {over:g} px)",
                where,
                kind="box_outside_image",
            )
        c = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
        if clipped is not None:
            clipped.append(f"{path}{':' + where if where else ''}: box {_fmt(b)} clipped to {_fmt(c)}")
        b = c
    return b


def validate_expression(text: str | None, path, where: str | None = None) -> str:
    """Whitespace-normalized expression; `DataError` when it is missing or empty, or holds chat markup such as
    `<|image_pad|>` (the tokenizer would read it as that special token, not as text)."""
    expr = " ".join((text or "").split())
    if not expr:
        raise DataError(path, "empty expression", where, kind="empty_expression")
    markup = CHAT_MARKUP.search(expr)
    if markup:
        raise DataError(path, f"expression {expr!r} holds the chat markup {markup.group()}", where, kind="bad_expression")
    return expr


def _fmt(box) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"
