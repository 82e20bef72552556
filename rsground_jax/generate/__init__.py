"""Generation: the jitted KV-cache sampler that serves evaluation and GRPO rollouts."""

from .sampler import Sampler, SamplingConfig, generate

__all__ = ["Sampler", "SamplingConfig", "generate"]
