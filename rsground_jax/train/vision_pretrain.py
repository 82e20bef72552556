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
L1 box error over object tokens. The head is thrown away afterwards; only the tower is kept. A step whose
loss or gradient is not finite keeps the old parameters and is counted; more than a tenth of the steps so
far, checked when logging, stops the run with a clear error.
"""

from __future__ import annotations

import dataclasses
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
from .optim import OptimConfig, make_optimizer
from .step import keep_if_finite


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


def pretrain_vision(model, scenes: Sequence[Scene], processor: ImageProcessor, categories: Sequence[str],
                    config: VisionPretrainConfig = VisionPretrainConfig(), *, log=print) -> dict:
    """Train `model.vision` in place on the dense targets of `scenes`; returns a report with the training
    history and the held-out accuracy (category of object tokens, background tokens, box L1 in resized pixels).
    """
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
    P, T = pix.shape[1], cls.shape[1]
    vcfg = model.config.vision
    grid = np.tile(np.asarray(processor.grid_thw(scenes[0].height, scenes[0].width))[None], (B, 1))
    vis = jax.tree.map(jnp.asarray, vision_inputs(grid, vcfg, num_patches=B * P).arrays())
    graphdef, tower = nnx.split(model.vision, nnx.Param)
    d = vcfg.out_hidden_size
    k1, k2 = jax.random.split(jax.random.PRNGKey(config.seed))
    head = {"cls_dk": jax.random.normal(k1, (d, len(categories) + 1)) * d**-0.5,
            "cls_bias_k": jnp.zeros(len(categories) + 1),
            "box_d4": jax.random.normal(k2, (d, 4)) * d**-0.5 * 0.1,
            "box_bias_4": jnp.zeros(4)}
    tx = make_optimizer(OptimConfig(lr=config.lr, warmup_steps=config.warmup_steps, total_steps=config.steps,
                                    end_lr_fraction=config.end_lr_fraction, clip_norm=config.clip_norm))

    def forward(params, pv):
        tw, hd = params
        f = nnx.merge(graphdef, tw)(pv.reshape(B * P, -1), vis).reshape(B, T, d)
        return f @ hd["cls_dk"] + hd["cls_bias_k"], jax.nn.sigmoid(f @ hd["box_d4"] + hd["box_bias_4"])

    def step(params, opt_state, skipped, pv, c, b):
        def loss_fn(p):
            logits, pb = forward(p, pv)
            return dense_loss(logits, pb, c, b, config.box_weight)
        (loss, (ce, l1)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, new_opt = tx.update(grads, opt_state, params)
        # a non-finite loss or gradient keeps the old parameters and moments (counted, checked when logging)
        (params, opt_state), ok = keep_if_finite(loss, optax.tree.norm(grads),
                                                 (optax.apply_updates(params, updates), new_opt), (params, opt_state))
        return params, opt_state, skipped + (~ok).astype(jnp.int32), {"loss": loss, "ce": ce, "box_l1": l1}

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    predict = jax.jit(forward)
    params = (tower, head)
    opt_state = tx.init(params)

    def held_out(params) -> dict:
        if not n_val:
            return {}
        hit_obj = n_obj = hit_bg = n_bg = 0
        l1 = 0.0
        rh, rw = processor.resized_size(scenes[0].height, scenes[0].width)
        scale = np.array([rw, rh, rw, rh], np.float32)
        for i in range(0, n_val, B):
            idx = val_idx[i:i + B]
            pad = np.concatenate([idx, np.repeat(idx[:1], B - len(idx))])  # the jitted batch is B images
            logits, pb = predict(params, jnp.asarray(pix[pad]))
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

    rng = np.random.default_rng([config.seed, 2])
    history, t0, skipped = [], time.time(), jnp.zeros((), jnp.int32)
    for s in range(config.steps):
        idx = rng.choice(train_idx, B, replace=False)
        batch = (jnp.asarray(pix[idx]), jnp.asarray(cls[idx]), jnp.asarray(box[idx]))
        params, opt_state, skipped, m = step(params, opt_state, skipped, *batch)
        if (s + 1) % config.log_every == 0 or s + 1 == config.steps:
            row = {"step": s + 1, **{k: float(v) for k, v in m.items()}, "skipped_total": int(skipped),
                   "seconds": round(time.time() - t0, 1)}
            if row["skipped_total"] > (s + 1) // 10:
                raise FloatingPointError(f"vision pretraining: {row['skipped_total']} of {s + 1} steps had a "
                                         f"non-finite loss or gradient and were skipped (lower lr?): {row}")
            history.append(row)
            log(f"vision pretraining {row}")
    nnx.update(model.vision, params[0])
    return {"history": history, "val": held_out(params), "train_images": int(len(train_idx)),
            "categories": list(categories)}
