"""Training: losses (a registry), the optimizer, the train state and the jitted SFT step."""

from .losses import LOSSES, sft_cross_entropy
from .optim import OptimConfig, make_optimizer
from .step import TrainState, add_vision_inputs, make_sft_step, stack_micro_batches, static_vision_sizes

__all__ = [
    "LOSSES", "OptimConfig", "TrainState", "add_vision_inputs", "make_optimizer", "make_sft_step",
    "sft_cross_entropy", "stack_micro_batches", "static_vision_sizes",
]
from .loop import LoopConfig, LoopResult, NonFiniteLossError, run_sft  # noqa: E402

__all__ += ["LoopConfig", "LoopResult", "NonFiniteLossError", "run_sft"]
