"""Training: losses (a registry), the optimizer, the train state and the jitted SFT step."""

from .losses import LOSSES, sft_cross_entropy, sft_loss
from .optim import OptimConfig, make_optimizer
from .step import TrainState, make_sft_step, make_train_step, make_update, stack_micro_batches

__all__ = [
    "LOSSES", "OptimConfig", "TrainState", "make_optimizer", "make_sft_step", "make_train_step", "make_update",
    "sft_cross_entropy", "sft_loss", "stack_micro_batches",
]
from .loop import LoopConfig, LoopResult, NonFiniteLossError, PipelineData, run_loop, run_sft  # noqa: E402

__all__ += ["LoopConfig", "LoopResult", "NonFiniteLossError", "PipelineData", "run_loop", "run_sft"]
