"""Grain pipelines: SFT batches and RL prompt batches with static shapes, resumable exactly.

Two stages.

1. **Plan** (main process, no images): for every record, the text (CoT target for SFT), its tokens with
   one `<|image_pad|>` placeholder (`chat.ChatEncoder`), the image token and patch counts from the
   original size (`ImageProcessor`), the sequence length, and the ground truth in both frames. A sample
   longer than the largest length bucket is an error (`on_overflow="error"`) or a counted skip listed in
   `plan.report` (`"skip"`); nothing is truncated. Tokenizing here, once and batched, means the workers
   never load a tokenizer, and every skip is decided before the first batch.

2. **Grain** (`grain.MapDataset`): `range(n)` -> `shuffle(seed)` (a new permutation every epoch) ->
   `repeat(num_epochs)` (None: forever) -> `batch(batch_size x shard_count)` of sample indices -> with
   several hosts, this host's block of rows of each such global batch (`HostRows`: the hosts' blocks in
   process order are the batch one host would read; disjoint samples) ->
   `map(MakeBatch)`: decode each image, resize and normalize + patchify it straight into its rows of the
   batch (`images.write_patches`, bit-identical to `ImageProcessor.process_one`), expand the image
   tokens, pad, M-RoPE positions -> `to_iter_dataset` (`read_threads` threads) -> `mp_prefetch(num_workers)`
   processes. A batch is a pure function of its index in the `MapDataset`: the same batches come out
   whatever the number of workers or threads, and an iterator state (`get_state()`, saved with
   `save_state`) restores the exact position.

Batch (numpy, static shapes for `jax.jit`; B = batch size, L = length bucket, P = patch bucket):

    input_ids          [B, L] int32     pad id = <|endoftext|>
    attention_mask     [B, L] int32     1 on real tokens
    loss_mask          [B, L] int32     SFT only; aligned to labels: 1 where input_ids[b, t] is a target,
                                        predicted from position t - 1 (see `chat`)
    position_ids       [3, B, L] int32  M-RoPE (t, h, w), `get_rope_index`
    rope_deltas        [B] int32
    mm_token_type_ids  [B, L] int32     1 on <|image_pad|> tokens, 0 elsewhere
    pixel_values       [P, 1176] float32  the images' patches in batch order, zero rows after them
    pixel_mask         [P] int32        1 on real patch rows
    image_grid_thw     [B, 3] int32     one image per sample
    image_num_patches  [B] int32        = prod(image_grid_thw, -1)
    gt_box_original    [B, 4] float32   annotation, original pixels
    gt_box_resized     [B, 4] float32   exact scaling into the resized frame
    answer_box         [B, 4] int32     the integer box the model is taught (resized frame)
    original_hw        [B, 2] int32
    resized_hw         [B, 2] int32
    sample_valid       [B] int32        0 on the copies that fill a last partial batch (and the padding that
                                        gives every host the same number of batches of a finite stream)
    record_index       [B] int32        index into `plan.records`
    prompt_length      [B] int32        tokens before the first target (SFT) / the whole prompt (RL)
    target_ids         [B, T] int32     RL with `rl_targets` only: the SFT target after the prompt (answer and
                                        <|im_end|>), right-padded; T = the plan's longest target rounded up to 16
    target_mask        [B, T] int32     1 on the real target tokens of valid samples

L is the smallest of `length_buckets` holding the longest sample of the batch, P the smallest of
`patch_buckets` holding its patches (default: one bucket, B x the largest image of the plan). SFT pads
on the right; RL prompts pad on the left by default, so every prompt ends at column L - 1 where
generation starts (`padding_side`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import grain
import numpy as np

from rsground_jax.data import boxes as box_frames
from rsground_jax.data import images as images_lib
from rsground_jax.data.chat import ChatEncoder, ChatTemplate, EncodedChat, box_answer, expand_image_tokens
from rsground_jax.data.cot import make_cot
from rsground_jax.data.images import FileImages
from rsground_jax.data.records import DataError, GroundingRecord
from rsground_jax.data.tokenizer import SpecialTokens
from rsground_jax.errors import UserError
from rsground_jax.models.processor import ImageProcessor
from rsground_jax.models.qwen2_5_vl.rope_index import get_rope_index

log = logging.getLogger(__name__)


class PipelineError(UserError, ValueError):
    """Settings or data a pipeline cannot be built from: a sample longer than the buckets, no samples, a
    saved iterator position from another pipeline, a setting out of range."""

# ----------------------------------------------------------------------------------------------- config


ANSWER_STYLES = ("cot", "brief_cot", "box")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    batch_size: int
    length_buckets: tuple[int, ...] | None = None  # None: one bucket, the longest sample rounded up to 64
    patch_buckets: tuple[int, ...] | None = None  # per-batch patch rows; None: batch_size x largest image
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None  # None: repeat forever
    drop_remainder: bool = True  # False: the last batch is filled with copies marked sample_valid = 0
    shard_index: int = 0
    shard_count: int = 1
    num_workers: int = 0  # processes (grain mp_prefetch); 0: in this process
    worker_buffer_size: int = 2
    read_threads: int = 1  # threads of grain's ReadOptions (in each process)
    prefetch_buffer_size: int = 4
    on_overflow: str = "error"  # or "skip": samples longer than the largest length bucket
    padding_side: str | None = None  # None: "right" for SFT, "left" for RL
    cot_seed: int = 0  # picks the CoT phrasings (fixed per record across epochs)
    # SFT target: "cot" (<think>...</think><answer>[box]</answer>), "brief_cot" (the same with a one-sentence
    # trace, `cot.make_cot(brief=True)`) or "box" ([box] only)
    answer_style: str = "cot"
    # "box" answers only: the fraction that start with a lead-in sentence (`chat.box_answer`)
    leadin_fraction: float = 0.0
    # RL only: each prompt's SFT target too (in `answer_style`, phrasings from `cot_seed`), as target_ids /
    # target_mask; what GRPO's SFT anchor (`GRPOConfig.sft_coef`) is trained on
    rl_targets: bool = False

    def __post_init__(self):
        if self.answer_style not in ANSWER_STYLES:
            raise PipelineError(f"answer_style must be one of {ANSWER_STYLES}, got {self.answer_style!r}")
        if not 0.0 <= self.leadin_fraction <= 1.0:
            raise PipelineError(f"leadin_fraction must be in [0, 1], got {self.leadin_fraction}")
        if self.leadin_fraction and self.answer_style != "box":
            raise PipelineError(f"leadin_fraction applies to answer_style='box' only, not {self.answer_style!r}")
        if self.batch_size < 1:
            raise PipelineError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.shard_index < self.shard_count:
            raise PipelineError(f"shard_index must be in [0, shard_count), got {self.shard_index} of {self.shard_count}")
        if self.on_overflow not in ("error", "skip"):
            raise PipelineError(f"on_overflow must be 'error' or 'skip', got {self.on_overflow!r}")
        if self.padding_side not in (None, "left", "right"):
            raise PipelineError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        for name in ("length_buckets", "patch_buckets"):
            b = getattr(self, name)
            if b is not None and (not b or any(v <= 0 for v in b) or list(b) != sorted(set(b))):
                raise PipelineError(f"{name} must be strictly increasing positive sizes, got {b}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise PipelineError(f"num_epochs must be >= 1 or None, got {self.num_epochs}")


def shard_from_jax() -> tuple[int, int]:
    """(process_index, process_count) of the running JAX program, for `shard_index` / `shard_count`."""
    import jax  # only here: this module does not use JAX otherwise

    return jax.process_index(), jax.process_count()


# -------------------------------------------------------------------------------------------------- plan


@dataclasses.dataclass
class PlanReport:
    kept: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)  # one line per skipped sample
    max_length: int = 0
    max_patches: int = 0

    def summary(self) -> str:
        line = f"{self.kept} samples planned, {len(self.skipped)} skipped (longest {self.max_length} tokens, largest image {self.max_patches} patches)"
        return "\n".join([line] + [f"  skipped: {s}" for s in self.skipped[:5]] + ([f"  ... and {len(self.skipped) - 5} more"] if len(self.skipped) > 5 else []))


@dataclasses.dataclass
class Plan:
    """Everything the workers need, per kept sample (index i), computed once in the main process."""

    kind: str  # "sft" | "rl"
    records: list[GroundingRecord]
    images: object  # FileImages | EncodedImages
    processor: ImageProcessor
    specials: SpecialTokens
    ids: np.ndarray  # flat int32 token ids (one image placeholder per sample)
    offsets: np.ndarray  # [n + 1] int64
    image_pos: np.ndarray  # [n] int32
    target_start: np.ndarray  # [n] int32 (placeholder frame)
    num_image_tokens: np.ndarray  # [n] int32
    num_patches: np.ndarray  # [n] int32
    lengths: np.ndarray  # [n] int32 (expanded)
    grid_thw: np.ndarray  # [n, 3] int32
    gt_original: np.ndarray  # [n, 4] float32
    gt_resized: np.ndarray  # [n, 4] float32
    answer_box: np.ndarray  # [n, 4] int32
    original_hw: np.ndarray  # [n, 2] int32
    resized_hw: np.ndarray  # [n, 2] int32
    report: PlanReport
    targets: np.ndarray | None = None  # RL with targets: flat int32 ids of each sample's SFT target
    target_offsets: np.ndarray | None = None  # [n + 1] int64

    @property
    def target_length(self) -> int:
        """The static width of a batch's target_ids: the longest target rounded up to 16."""
        return _round_up(int(np.diff(self.target_offsets).max()), 16)

    def __len__(self) -> int:
        return len(self.records)

    def chat(self, i: int) -> EncodedChat:
        return EncodedChat(self.ids[self.offsets[i] : self.offsets[i + 1]], int(self.image_pos[i]), int(self.target_start[i]))

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.kind.encode())
        for a in (self.ids, self.offsets, self.grid_thw, self.gt_original):
            h.update(np.ascontiguousarray(a).tobytes())
        if self.targets is not None:
            h.update(np.ascontiguousarray(self.targets).tobytes())
        # image paths relative to their common folder: a dataset (or a run directory holding it) that moves
        # keeps its fingerprint, so a checkpoint can resume on another machine or mount point
        paths = [os.path.abspath(r.image_path) for r in self.records]
        root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]) if paths else ""
        h.update("\n".join(os.path.relpath(p, root) for p in paths).encode())
        return h.hexdigest()[:16]


def _plan(
    kind: str,
    records: Sequence[GroundingRecord],
    tokenizer,
    processor: ImageProcessor,
    *,
    template: ChatTemplate,
    cot_seed: int,
    max_length: int | None,
    answer_style: str = "cot",
    leadin_fraction: float = 0.0,
    on_overflow: str,
    images=None,
    rl_targets: bool = False,
) -> Plan:
    records = list(records)
    if not records:
        raise PipelineError("no records to build a pipeline from")
    encoder = ChatEncoder(tokenizer, template)
    expressions = [r.expression for r in records]
    # one question phrasing per record, fixed across epochs (training only: prompts use the main question)
    variants = None
    if kind == "sft" and template.question_variants:
        n = len(template.questions)
        variants = [int(np.random.default_rng([cot_seed, i, 1]).integers(n)) for i in range(len(records))]
    targets = None
    if kind == "sft":
        texts, answers = _targets(records, processor, answer_style, cot_seed, leadin_fraction)
        chats = encoder.encode_sft(expressions, texts, variants)
    else:
        chats = encoder.encode_prompts(expressions)
        answers = [box_frames.answer_box(r.box, r.height, r.width, processor) for r in records]
        if rl_targets:
            targets = encoder.encode_targets(_targets(records, processor, answer_style, cot_seed, leadin_fraction)[0])
    if images is None:
        images = FileImages(tuple(r.image_path for r in records))

    report = PlanReport()
    keep = []
    grids, n_img = [], []
    for i, (r, c) in enumerate(zip(records, chats)):
        grid = processor.grid_thw(r.height, r.width)
        tokens = processor.num_image_tokens(r.height, r.width)
        length = c.length(tokens)
        if max_length is not None and length > max_length:
            msg = f"{r.source or r.image_path}: sample of {length} tokens ({tokens} image tokens) is longer than the largest length bucket {max_length}"
            if on_overflow == "error":
                raise PipelineError(msg + " (raise the buckets, lower max_pixels, or use on_overflow='skip')")
            report.skipped.append(msg)
            continue
        keep.append(i)
        grids.append(grid)
        n_img.append(tokens)
    if not keep:
        raise PipelineError(f"every one of the {len(records)} samples was skipped:\n{report.summary()}")

    kept_chats = [chats[i] for i in keep]
    kept = [records[i] for i in keep]
    lengths = np.array([c.length(t) for c, t in zip(kept_chats, n_img)], np.int32)
    grid_thw = np.array(grids, np.int32)
    offsets = np.zeros(len(kept) + 1, np.int64)
    offsets[1:] = np.cumsum([len(c.ids) for c in kept_chats])
    resized = np.array([processor.resized_size(r.height, r.width) for r in kept], np.int32)
    images = images.subset(keep)
    report.kept = len(kept)
    report.max_length = int(lengths.max())
    num_patches = grid_thw.prod(-1).astype(np.int32)
    report.max_patches = int(num_patches.max())
    if report.skipped:
        log.warning("%s", report.summary())
    return Plan(
        kind=kind,
        records=kept,
        images=images,
        processor=processor,
        specials=encoder.specials,
        ids=np.concatenate([c.ids for c in kept_chats]).astype(np.int32),
        offsets=offsets,
        image_pos=np.array([c.image_pos for c in kept_chats], np.int32),
        target_start=np.array([c.target_start for c in kept_chats], np.int32),
        num_image_tokens=np.array(n_img, np.int32),
        num_patches=num_patches,
        lengths=lengths,
        grid_thw=grid_thw,
        gt_original=np.array([r.box for r in kept], np.float32),
        gt_resized=np.array([box_frames.original_to_resized(r.box, r.height, r.width, processor) for r in kept], np.float32),
        answer_box=np.array([answers[i] for i in keep], np.int32),
        original_hw=np.array([(r.height, r.width) for r in kept], np.int32),
        resized_hw=resized,
        report=report,
        **({} if targets is None else _flat([targets[i] for i in keep], "targets")),
    )


def _targets(records, processor, answer_style: str, cot_seed: int, leadin_fraction: float):
    """(target texts, the integer boxes they state) of `records` in `answer_style` (see `PipelineConfig`)."""
    if answer_style == "box":
        # the base model's plain grounding answer: the box in the resized frame, no reasoning
        answers = [box_frames.answer_box(r.box, r.height, r.width, processor) for r in records]
        texts = [box_answer(box_frames.format_box(a), r.expression, i, leadin_fraction)
                 for i, (a, r) in enumerate(zip(answers, records))]
        return texts, answers
    cots = [make_cot(r, processor, [cot_seed, i], brief=answer_style == "brief_cot") for i, r in enumerate(records)]
    return [c.text for c in cots], [c.answer_box for c in cots]


def _flat(arrays: list[np.ndarray], name: str) -> dict[str, np.ndarray]:
    """Ragged int32 arrays as {name: flat ids, name[:-1] + '_offsets': [n + 1] offsets}."""
    offsets = np.zeros(len(arrays) + 1, np.int64)
    offsets[1:] = np.cumsum([len(a) for a in arrays])
    return {name: np.concatenate(arrays).astype(np.int32), f"{name[:-1]}_offsets": offsets}


def plan_sft(records, tokenizer, processor, *, template=ChatTemplate(), cot_seed=0, max_length=None, on_overflow="error", images=None, answer_style="cot", leadin_fraction=0.0) -> Plan:
    """Plan CoT-SFT samples (see the module docstring)."""
    return _plan("sft", records, tokenizer, processor, template=template, cot_seed=cot_seed, max_length=max_length, on_overflow=on_overflow, images=images, answer_style=answer_style, leadin_fraction=leadin_fraction)


def plan_rl(records, tokenizer, processor, *, template=ChatTemplate(), max_length=None, on_overflow="error", images=None,
            targets: bool = False, answer_style: str = "cot", cot_seed: int = 0) -> Plan:
    """Plan RL prompts: the prompt, the ground truth kept for the reward, and with `targets` each prompt's SFT
    target in `answer_style` (GRPO's SFT anchor)."""
    return _plan("rl", records, tokenizer, processor, template=template, cot_seed=cot_seed, max_length=max_length,
                 on_overflow=on_overflow, images=images, answer_style=answer_style, rl_targets=targets)


# ------------------------------------------------------------------------------------- samples, batches


def _smallest_fitting(buckets: Sequence[int], size: int, what: str) -> int:
    for b in buckets:
        if b >= size:
            return b
    raise PipelineError(f"a batch needs {size} {what}, more than the largest bucket {buckets[-1]}")


@dataclasses.dataclass(frozen=True)
class HostRows:
    """One host's block `[start, start + size)` of a global batch's sample indices (picklable for workers)."""

    start: int
    size: int

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        return indices[self.start : self.start + self.size]


def index_array(indices: Sequence[int]) -> np.ndarray:
    """Grain `batch_fn` for the index stage: the sample indices of one batch."""
    return np.asarray(indices, np.int64)


class MakeBatch:
    """Sample indices -> one static-shape batch (see the module docstring). Picklable: runs in workers.

    Each image is decoded, resized and written straight into its rows of the batch's `pixel_values`
    (`images.write_patches`, bit-identical to `ImageProcessor.process_one`); tokens come from the plan.
    """

    def __init__(self, plan: Plan, batch_size: int, length_buckets: tuple[int, ...], patch_buckets: tuple[int, ...], padding_side: str):
        self.plan = plan
        self.batch_size = batch_size
        self.length_buckets = length_buckets
        self.patch_buckets = patch_buckets
        self.padding_side = padding_side

    def load_pixels(self, index: int, out: np.ndarray) -> None:
        """Decode and process image `index` into `out` [num_patches, patch_dim]."""
        plan = self.plan
        image = plan.images.load(index)
        resized = images_lib.resize(plan.processor, image)
        rh, rw = (int(v) for v in plan.resized_hw[index])
        if resized.shape[:2] != (rh, rw):
            r = plan.records[index]
            raise DataError(r.image_path, f"image is {image.size[0]}x{image.size[1]} but the annotation says {r.width}x{r.height}", kind="size_mismatch")
        images_lib.write_patches(plan.processor, resized, out)

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        plan, B = self.plan, self.batch_size
        indices = np.asarray(indices, np.int64)
        valid = np.zeros(B, np.int32)
        valid[: len(indices)] = indices >= 0  # -1: padding of a finite sharded stream
        fill = int(indices[indices >= 0][0]) if valid.any() else 0
        # A last partial batch and padding entries are filled with copies of a real sample (sample_valid 0).
        idx = np.where(valid == 1, np.concatenate([indices, np.full(B - len(indices), fill)]), fill).astype(np.int64)
        lengths = plan.lengths[idx]
        L = _smallest_fitting(self.length_buckets, int(lengths.max()), "tokens")
        n_patches = plan.num_patches[idx]
        total = int(n_patches.sum())
        P = _smallest_fitting(self.patch_buckets, total, "patch rows")

        pixel_values = np.empty((P, plan.processor.patch_dim), np.float32)
        pixel_values[total:] = 0.0
        row = 0
        for i in idx:
            k = int(plan.num_patches[i])
            self.load_pixels(int(i), pixel_values[row : row + k])
            row += k
        pixel_mask = np.zeros(P, np.int32)
        pixel_mask[:total] = 1

        input_ids = np.full((B, L), plan.specials.pad, np.int32)
        attention = np.zeros((B, L), np.int32)
        loss_mask = np.zeros((B, L), np.int32)
        for b, i in enumerate(idx):
            ids, mask = expand_image_tokens(plan.chat(int(i)), int(plan.num_image_tokens[i]), plan.specials.image_pad)
            n = len(ids)
            sl = slice(0, n) if self.padding_side == "right" else slice(L - n, L)
            input_ids[b, sl] = ids
            attention[b, sl] = 1
            if plan.kind == "sft" and valid[b]:
                loss_mask[b, sl] = mask
        grid = plan.grid_thw[idx]
        position_ids, rope_deltas = get_rope_index(
            input_ids, grid, attention, image_token_id=plan.specials.image_pad, spatial_merge_size=plan.processor.merge_size
        )
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "position_ids": position_ids,
            "rope_deltas": rope_deltas,
            "mm_token_type_ids": ((input_ids == plan.specials.image_pad) & (attention == 1)).astype(np.int32),
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "image_grid_thw": grid.astype(np.int32),
            "image_num_patches": n_patches.astype(np.int32),
            "gt_box_original": plan.gt_original[idx],
            "gt_box_resized": plan.gt_resized[idx],
            "answer_box": plan.answer_box[idx],
            "original_hw": plan.original_hw[idx],
            "resized_hw": plan.resized_hw[idx],
            "sample_valid": valid,
            "record_index": idx.astype(np.int32),
            "prompt_length": (plan.target_start[idx] - 1 + plan.num_image_tokens[idx]).astype(np.int32),
        }
        if plan.kind == "sft":
            batch["loss_mask"] = loss_mask
        if plan.targets is not None:
            T = plan.target_length
            target_ids = np.full((B, T), plan.specials.pad, np.int32)
            target_mask = np.zeros((B, T), np.int32)
            for b, i in enumerate(idx):
                t = plan.targets[plan.target_offsets[i] : plan.target_offsets[i + 1]]
                target_ids[b, : len(t)] = t
                target_mask[b, : len(t)] = valid[b]
            batch.update(target_ids=target_ids, target_mask=target_mask)
        return batch


# ---------------------------------------------------------------------------------------------- pipeline


class Pipeline:
    """A planned dataset and its Grain pipeline. Iterate it, or build iterators and save/restore them."""

    def __init__(self, plan: Plan, config: PipelineConfig):
        self.plan = plan
        self.config = config
        max_len = int(plan.lengths.max())
        self.length_buckets = tuple(config.length_buckets) if config.length_buckets else (_round_up(max_len, 64),)
        need = config.batch_size * int(plan.num_patches.max())
        self.patch_buckets = tuple(config.patch_buckets) if config.patch_buckets else (need,)
        if self.patch_buckets[-1] < need:
            raise PipelineError(
                f"the largest patch bucket ({self.patch_buckets[-1]} rows) cannot hold a batch of {config.batch_size} "
                f"images of up to {int(plan.num_patches.max())} patches ({need} rows)"
            )
        side = config.padding_side or ("right" if plan.kind == "sft" else "left")
        ds = grain.MapDataset.range(len(plan))
        if config.shuffle:
            ds = ds.shuffle(seed=config.seed)
        if config.num_epochs != 1:
            ds = ds.repeat(config.num_epochs)
        self.make_batch = MakeBatch(plan, config.batch_size, self.length_buckets, self.patch_buckets, side)
        b, hosts = config.batch_size, config.shard_count
        ds = ds.batch(b * hosts, drop_remainder=config.drop_remainder, batch_fn=index_array)
        if hosts > 1:
            # Each global batch (batch_size x shard_count samples) is cut into consecutive blocks, one per host:
            # the hosts' rows, stacked in process order, are the batch a single host would have read, so a
            # multi-host run sees the same batches, in the same row order, as one process. A last partial
            # batch leaves a host a short or empty block, filled with sample_valid = 0 copies: every host reads
            # as many batches as the others and none waits.
            ds = ds.map(HostRows(config.shard_index * b, b))
        self.dataset = ds.map(self.make_batch)

    @property
    def report(self) -> PlanReport:
        return self.plan.report

    def iter_dataset(self) -> grain.IterDataset:
        c = self.config
        ds = self.dataset.to_iter_dataset(grain.ReadOptions(num_threads=c.read_threads, prefetch_buffer_size=c.prefetch_buffer_size))
        if c.num_workers > 0:
            _absl_flags_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=c.num_workers, per_worker_buffer_size=c.worker_buffer_size))
        return ds

    def __iter__(self):
        return iter(self.iter_dataset())

    def fingerprint(self) -> str:
        """What an iterator state is only valid for: the plan and everything that orders the batches."""
        c = self.config
        key = [self.plan.fingerprint(), c.batch_size, self.length_buckets, self.patch_buckets, c.seed, c.shuffle, c.num_epochs, c.drop_remainder, c.shard_index, c.shard_count, c.num_workers > 0, c.cot_seed, c.answer_style]
        return hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:16]

    def state_dict(self, iterator) -> dict:
        """The iterator's position as a JSON-able dict, tagged with this pipeline's fingerprint."""
        return {"fingerprint": self.fingerprint(), "grain_state": _jsonable(iterator.get_state())}

    def load_state_dict(self, iterator, payload: dict, source: str = "state") -> None:
        """Move a fresh iterator of this pipeline to a saved position; error if it was another pipeline."""
        if payload.get("fingerprint") != self.fingerprint():
            raise PipelineError(
                f"{source}: iterator state was saved by a different pipeline (fingerprint {payload.get('fingerprint')} "
                f"!= {self.fingerprint()}): data, batch size, buckets, seed, sharding or worker mode changed"
            )
        iterator.set_state(_from_jsonable(payload["grain_state"]))

    def save_state(self, iterator, path) -> None:
        """Write the iterator's position (JSON) atomically, with this pipeline's fingerprint."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.state_dict(iterator)))
        os.replace(tmp, path)

    def restore_state(self, iterator, path) -> None:
        """Move a fresh iterator of this pipeline to a saved position; error if it was another pipeline."""
        self.load_state_dict(iterator, json.loads(Path(path).read_text()), source=str(path))


def sft_pipeline(records, tokenizer, processor: ImageProcessor, config: PipelineConfig, *, template=ChatTemplate(), images=None) -> Pipeline:
    """Plan CoT-SFT samples and build their pipeline."""
    max_len = config.length_buckets[-1] if config.length_buckets else None
    plan = plan_sft(records, tokenizer, processor, template=template, cot_seed=config.cot_seed, max_length=max_len, on_overflow=config.on_overflow, images=images, answer_style=config.answer_style, leadin_fraction=config.leadin_fraction)
    return Pipeline(plan, config)


def rl_pipeline(records, tokenizer, processor: ImageProcessor, config: PipelineConfig, *, template=ChatTemplate(), images=None) -> Pipeline:
    """Plan RL prompts and build their pipeline."""
    max_len = config.length_buckets[-1] if config.length_buckets else None
    plan = plan_rl(records, tokenizer, processor, template=template, max_length=max_len, on_overflow=config.on_overflow,
                   images=images, targets=config.rl_targets, answer_style=config.answer_style, cot_seed=config.cot_seed)
    return Pipeline(plan, config)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; mark them parsed when the program did not parse them."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _jsonable(state):
    if isinstance(state, bytes):
        return {"__bytes__": state.hex()}
    if isinstance(state, dict):
        if all(isinstance(k, str) for k in state):
            return {k: _jsonable(v) for k, v in state.items()}
        return {"__items__": [[_jsonable(k), _jsonable(v)] for k, v in state.items()]}
    if isinstance(state, (list, tuple)):
        return [_jsonable(v) for v in state]
    if isinstance(state, np.generic):
        return state.item()
    return state


def _from_jsonable(state):
    if isinstance(state, dict):
        if set(state) == {"__bytes__"}:
            return bytes.fromhex(state["__bytes__"])
        if set(state) == {"__items__"}:
            return {_hashable(_from_jsonable(k)): _from_jsonable(v) for k, v in state["__items__"]}
        return {k: _from_jsonable(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_from_jsonable(v) for v in state]
    return state


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key
