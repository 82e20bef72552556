"""The SFT loop in-process: stop after too many non-finite steps, a checkpoint of another shape, the metrics file
on resume. Exact resume, SIGTERM and Ctrl-C run through the installed command in tests/reliability/."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from flax import nnx

from rsground_jax.data import load_split
from rsground_jax.data.pipeline import PipelineConfig, sft_pipeline
from rsground_jax.data.synthetic import generate_dataset
from rsground_jax.data.tokenizer import load_small_tokenizer, special_token_ids
from rsground_jax.models import ImageProcessor, Qwen25VL
from rsground_jax.models.qwen2_5_vl import tiny
from rsground_jax.train import LoopConfig, NonFiniteLossError, OptimConfig, make_optimizer, run_sft

PROC = ImageProcessor(max_pixels=112 * 112)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, 24, seed=3, config="tiny")
    tok = load_small_tokenizer()
    sp = special_token_ids(tok)
    cfg = tiny(vocab_size=sp.vocab_size, image_token_id=sp.image_pad, vision_start_token_id=sp.vision_start,
               vision_end_token_id=sp.vision_end, eos_token_id=sp.im_end, bos_token_id=sp.pad,
               video_token_id=sp.video_pad, text_layers=2, vision_depth=2)
    return load_split(root, "train"), tok, cfg


def _run(setup, workdir, total, resume=False, on_log=None, pipeline=None, max_skips=5, lr=2e-3):
    records, tok, cfg = setup
    pl = pipeline or sft_pipeline(records, tok, PROC, PipelineConfig(batch_size=4, seed=1, answer_style="box"))
    model = Qwen25VL(cfg, rngs=nnx.Rngs(0))
    tx = make_optimizer(OptimConfig(lr=lr, warmup_steps=2, total_steps=8))
    loop = LoopConfig(total_steps=total, log_every=1, checkpoint_every=2, keep_checkpoints=2, progress=False,
                      max_skips_in_row=max_skips)
    return run_sft(model, pl, tx, loop, str(workdir), resume=resume, on_log=on_log)


class _NaNPipeline:
    """A pipeline whose images are NaN: every step is non-finite."""

    def __init__(self, inner):
        self.inner, self.plan, self.config = inner, inner.plan, inner.config

    def __iter__(self):
        for batch in self.inner:
            yield dict(batch, pixel_values=np.full_like(batch["pixel_values"], np.nan))

    def state_dict(self, iterator):
        return {}


def test_too_many_nonfinite_steps_stop_with_a_clear_message(setup, tmp_path):
    records, tok, _ = setup
    pl = _NaNPipeline(sft_pipeline(records, tok, PROC, PipelineConfig(batch_size=4, answer_style="box")))
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps had a non-finite loss"):
        _run(setup, tmp_path, 10, pipeline=pl, max_skips=2)


def test_resuming_a_checkpoint_of_another_model_shape_is_a_clear_error(setup, tmp_path):
    from rsground_jax.train.loop import CheckpointMismatchError

    _run(setup, tmp_path, 2)
    records, tok, cfg = setup
    other = cfg.replace(text=cfg.text.__class__(**{**cfg.text.__dict__, "intermediate_size": 256}))
    pl = sft_pipeline(records, tok, PROC, PipelineConfig(batch_size=4, seed=1, answer_style="box"))
    tx = make_optimizer(OptimConfig(lr=1e-3, total_steps=8))
    with pytest.raises(CheckpointMismatchError, match="does not fit this model") as err:
        run_sft(Qwen25VL(other, rngs=nnx.Rngs(0)), pl, tx, LoopConfig(total_steps=4, progress=False), str(tmp_path),
                resume=True)
    # found in the checkpoint's metadata, before a restore starts: the leaf and both shapes are named
    assert re.search(r"params/\S+ has shape \(.*\) in the checkpoint, \(.*\) here", str(err.value)), str(err.value)


def test_a_resumed_run_drops_the_metrics_rows_logged_after_its_checkpoint(tmp_path):
    from rsground_jax.train.loop import MetricsWriter

    path = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 11)]
    path.write_text("\n".join(rows) + "\n" + '{"step": 11, "lo')  # a line cut short by kill -9
    writer = MetricsWriter(str(tmp_path), resumed_at=6)
    writer.write({"step": 7, "loss": 0.5})
    writer.close()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4, 5, 6, 7]
    MetricsWriter(str(tmp_path), resumed_at=0).close()  # a run started afresh keeps none
    assert path.read_text() == ""
