"""Dense pretraining of the vision tower on its own, before a decoder reads it.

Qwen2.5-VL's vision encoder was trained before it was joined to the language model; the tiny base model's
tower starts from random weights, and trained end to end with the decoder it never learns to see: it either
drifts into an image-blind plateau or, frozen at random and later trained at a fraction of the rate, keeps
features a linear probe reads the object's category from on 57 % of object tokens (docs/base_model.md,
session 12). This stage gives the tower a direct, dense signal instead.

Targets, per merged token (the 2x2 block of patches that becomes one image token of the decoder), from an
image's annotated objects in the processor's resized frame (`token_targets`):
  * the class: the category of the object whose box centre lies in the token (the largest, when several
    do), or background (index `len(categories)`);
  * the box of that object, divided by the resized width and height (values in [0, 1]).
A linear head maps the tower's merged embedding [T, out_hidden] to class logits [T, K + 1] and, through a
sigmoid, to the box [T, 4]. Loss: the mean cross-entropy over all tokens plus `box_weight` times the mean
L1 box error over object tokens. The head is thrown away afterwards; only the tower is kept. Training runs on
the shared step builder and loop: a step whose loss or gradient is not finite keeps the old parameters and is
counted, and a run of such steps stops with `NonFiniteLossError`, as in SFT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from PIL import Image

from ..data import boxes as box_frames
from ..data.records import GroundingRecord
from ..errors import UserError
from ..models.processor import ImageProcessor
from ..models.qwen2_5_vl.inputs import vision_inputs
from .optim import OptimConfig, make_optimizer, schedule
from .step import TrainState, make_train_step


class VisionDataError(UserError, ValueError):
    """Scenes the vision stage cannot train on (too few, of several grids, of an unknown category)."""


@dataclasses.dataclass(frozen=True)
class VisionPretrainConfig:
    steps: int = 3000
    batch_size: int = 64  # images
    lr: float = 1e-3
    warmup_steps: int = 100
    end_lr_fraction: float = 0.1  # cosine decay to lr * end_lr_fraction
    box_weight: float = 5.0
    clip_norm: float = 1.0
    seed: int = 0
    val_fraction: float = 0.1  # images held out for the accuracy report
    log_every: int = 500


@dataclasses.dataclass(frozen=True)
class Scene:
    """One image and every annotated object in it (original pixels)."""

    image_path: str
    height: int
    width: int
    objects: tuple  # AnnotatedObject


def scenes_from_records(records: Sequence[GroundingRecord]) -> list[Scene]:
    """One `Scene` per distinct image of `records`, in first-seen order (records of one image share their
    objects: the target and its `others`)."""
    seen: dict[str, Scene] = {}
    for r in records:
        if str(r.image_path) not in seen:
            seen[str(r.image_path)] = Scene(str(r.image_path), r.height, r.width, r.all_objects())
    return list(seen.values())


def token_targets(scene: Scene, processor: ImageProcessor, categories: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(classes [T] int32, boxes [T, 4] float32) for the scene's T merged tokens, row-major over the merged
    grid (the order the tower emits them in). See the module docstring."""
    rh, rw = processor.resized_size(scene.height, scene.width)
    unit = processor.patch_size * processor.merge_size
    gh, gw = rh // unit, rw // unit
    background = len(categories)
    classes = np.full(gh * gw, background, np.int32)
    boxes = np.zeros((gh * gw, 4), np.float32)
    area = np.zeros(gh * gw)
    for o in scene.objects:
        if o.category not in categories:
            raise VisionDataError(f"{scene.image_path}: object category {o.category!r} is not among {list(categories)}")
        x1, y1, x2, y2 = box_frames.original_to_resized(o.box, scene.height, scene.width, processor)
        col = min(max(int((x1 + x2) / 2 // unit), 0), gw - 1)
        row = min(max(int((y1 + y2) / 2 // unit), 0), gh - 1)
        t = row * gw + col
        a = (x2 - x1) * (y2 - y1)
        if a > area[t]:
            area[t] = a
            classes[t] = list(categories).index(o.category)
            boxes[t] = np.clip(np.array([x1 / rw, y1 / rh, x2 / rw, y2 / rh], np.float32), 0.0, 1.0)
    return classes, boxes


def _load(scenes: Sequence[Scene], processor: ImageProcessor, categories) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pixel_values [N, P, patch_dim], classes [N, T], boxes [N, T, 4]; every scene must share one grid."""
    grids = {tuple(processor.grid_thw(s.height, s.width)) for s in scenes}
    if len(grids) != 1:
        raise VisionDataError(f"vision pretraining needs images that resize to one grid; these give {sorted(grids)} "
                         f"(set the synthetic image_size to one size, or max_pixels so that all resize alike)")
    pix, cls, box = [], [], []
    for s in scenes:
        with Image.open(s.image_path) as im:
            pix.append(processor([np.asarray(im.convert("RGB"))])["pixel_values"])
        c, b = token_targets(s, processor, categories)
        cls.append(c)
        box.append(b)
    return np.stack(pix).astype(np.float32), np.stack(cls), np.stack(box)


def dense_loss(logits, pred_boxes, classes, boxes, box_weight: float):
    """logits [B, T, K+1], pred_boxes [B, T, 4] in [0, 1], classes [B, T], boxes [B, T, 4] ->
    (loss, (cross-entropy, box L1)); the L1 counts tokens whose class is not background (index K)."""
    background = logits.shape[-1] - 1
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, classes).mean()
    obj = (classes != background).astype(logits.dtype)[..., None]
    l1 = (jnp.abs(pred_boxes - boxes) * obj).sum() / jnp.maximum(obj.sum() * 4, 1.0)
    return ce + box_weight * l1, (ce, l1)


class _TowerWithHead(nnx.Module):
    """The vision tower and the linear head of the dense targets, as one module for the shared train step (the
    tower is the model's own, so training this module trains the model's tower in place)."""

    def __init__(self, tower, num_classes: int, seed: int):
        d = tower.cfg.out_hidden_size
        k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
        self.tower = tower
        self.cls_dk = nnx.Param(jax.random.normal(k1, (d, num_classes)) * d**-0.5)
        self.cls_bias_k = nnx.Param(jnp.zeros(num_classes))
        self.box_d4 = nnx.Param(jax.random.normal(k2, (d, 4)) * d**-0.5 * 0.1)
        self.box_bias_4 = nnx.Param(jnp.zeros(4))

    def __call__(self, pixel_values, vision):
        """pixel_values [B, P, patch_dim] -> class logits [B, T, K + 1], boxes [B, T, 4] in [0, 1]."""
        b = pixel_values.shape[0]
        f = self.tower(pixel_values.reshape(-1, pixel_values.shape[-1]), vision).reshape(b, -1, self.cls_dk.shape[0])
        return f @ self.cls_dk[...] + self.cls_bias_k[...], jax.nn.sigmoid(f @ self.box_d4[...] + self.box_bias_4[...])


class SceneBatches:
    """Random batches of training images (indices drawn without replacement within a batch), as a loop's data:
    its position is the generator's state, saved with each checkpoint."""

    def __init__(self, arrays: dict, train_idx: np.ndarray, batch_size: int, seed: int, vision: dict):
        self.arrays, self.train_idx, self.batch_size, self.vision = arrays, train_idx, batch_size, vision
        self.rng = np.random.default_rng([seed, 2])

    def __next__(self) -> dict:
        idx = self.rng.choice(self.train_idx, self.batch_size, replace=False)
        return {**{k: v[idx][None] for k, v in self.arrays.items()}, "vision": self.vision}

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, payload: dict, source: str) -> None:
        self.rng.bit_generator.state = payload["bit_generator"]


def pretrain_vision(model, scenes: Sequence[Scene], processor: ImageProcessor, categories: Sequence[str],
                    config: VisionPretrainConfig = VisionPretrainConfig(), *, log=print, workdir: str | None = None,
                    resume: bool = False, progress: bool = False) -> dict:
    """Train `model.vision` in place on the dense targets of `scenes` with the shared step builder and loop
    (`make_train_step`, `run_loop`: checkpoints under `workdir`, exact resume, SIGTERM, the non-finite skip
    policy; without a `workdir` a temporary one). Returns a report with the training history, the held-out
    accuracy (category of object tokens, background tokens, box L1 in resized pixels) and `preempted`.
    """
    from .loop import LoopConfig, run_loop  # the loop imports this package's step module

    categories = tuple(categories)
    if len(scenes) < 2:
        raise VisionDataError(f"vision pretraining needs at least 2 images, got {len(scenes)}")
    pix, cls, box = _load(scenes, processor, categories)
    n_val = max(1, int(round(len(scenes) * config.val_fraction))) if config.val_fraction > 0 else 0
    order = np.random.default_rng([config.seed, 1]).permutation(len(scenes))
    val_idx, train_idx = order[:n_val], order[n_val:]
    B = config.batch_size
    if len(train_idx) < B:
        raise VisionDataError(f"vision pretraining: {len(train_idx)} training images, fewer than batch_size {B}")
    P = pix.shape[1]
    grid = np.tile(np.asarray(processor.grid_thw(scenes[0].height, scenes[0].width))[None], (B, 1))
    vis = vision_inputs(grid, model.config.vision, num_patches=B * P).arrays()
    net = _TowerWithHead(model.vision, len(categories) + 1, config.seed)
    graphdef, params = nnx.split(net, nnx.Param)
    opt = OptimConfig(lr=config.lr, warmup_steps=config.warmup_steps, total_steps=max(config.steps, 1),
                      end_lr_fraction=config.end_lr_fraction, clip_norm=config.clip_norm)
    tx = make_optimizer(opt)

    def loss_fn(m, mb):
        logits, pred = m(mb["pixel_values"], mb["vision"])
        loss, (ce, l1) = dense_loss(logits, pred, mb["classes"], mb["boxes"], config.box_weight)
        one = jnp.ones(())
        return loss, one, {"ce": (ce, one), "box_l1": (l1, one)}

    history, preempted = [], False
    if config.steps > 0:
        data = SceneBatches({"pixel_values": pix, "classes": cls, "boxes": box}, train_idx, B, config.seed,
                            {k: v[None] for k, v in vis.items()})
        loop = LoopConfig(total_steps=config.steps, log_every=config.log_every, progress=progress,
                          checkpoint_every=max(config.steps // 4, 1), keep_checkpoints=1)
        t0 = time.time()

        def on_log(row):
            log(f"vision pretraining {dict(row, seconds=round(time.time() - t0, 1))}")

        with contextlib.ExitStack() as stack:
            folder = workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="rsground_vision_"))
            res = run_loop(TrainState.create(params, tx), make_train_step(graphdef, tx, loss_fn),
                           lambda: (next(data), B), data, loop, folder, resume=resume, name="vision",
                           schedule=schedule(opt), on_log=on_log, on_exit=lambda st: nnx.update(net, st.params))
        history, preempted = res.history, res.preempted

    predict = nnx.jit(lambda m, pv: m(pv, vis))

    def held_out() -> dict:
        if not n_val:
            return {}
        hit_obj = n_obj = hit_bg = n_bg = 0
        l1 = 0.0
        rh, rw = processor.resized_size(scenes[0].height, scenes[0].width)
        scale = np.array([rw, rh, rw, rh], np.float32)
        for i in range(0, n_val, B):
            idx = val_idx[i:i + B]
            pad = np.concatenate([idx, np.repeat(idx[:1], B - len(idx))])  # the jitted batch is B images
            logits, pb = predict(net, jnp.asarray(pix[pad]))
            pred = np.asarray(logits)[: len(idx)].argmax(-1)
            c = cls[idx]
            obj = c != len(categories)
            hit_obj += int((pred[obj] == c[obj]).sum())
            n_obj += int(obj.sum())
            hit_bg += int((pred[~obj] == c[~obj]).sum())
            n_bg += int((~obj).sum())
            l1 += float((np.abs(np.asarray(pb)[: len(idx)][obj] - box[idx][obj]) * scale).sum()) / 4
        return {"object_token_category_accuracy": hit_obj / max(n_obj, 1),
                "background_token_accuracy": hit_bg / max(n_bg, 1),
                "box_l1_resized_px": l1 / max(n_obj, 1), "val_images": int(n_val)}

    return {"history": history, "val": held_out(), "train_images": int(len(train_idx)),
            "categories": list(categories), "preempted": preempted}
