"""`GRPOConfig`: the GRPO settings, in TRL's and Tunix's vocabulary (numpy-free, JAX-free: a config is checked
before JAX starts). The formulas they steer are in `grpo.py`."""

from __future__ import annotations

import dataclasses

from ..errors import UserError

SCALES = ("group", "batch", "none")
KL_ESTIMATORS = ("k1", "k3")
LOSS_AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
ADV_EPS = 1e-4


class GRPOConfigError(UserError, ValueError):
    """A GRPO setting out of range or unknown."""


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    num_generations: int = 8  # G completions per prompt
    num_iterations: int = 1  # updates per rollout batch (mu); old log-probs fixed across them
    beta: float = 0.04  # KL coefficient; 0 skips the reference policy
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None: epsilon (DAPO clip-higher: 0.28)
    kl_estimator: str = "k3"
    loss_agg_mode: str = "seq-mean-token-mean"
    scale_rewards: str = "group"
    temperature: float = 1.0
    top_k: int = 0  # rollouts only: log-probs in the loss are under the temperature-scaled, unfiltered softmax
    top_p: float = 1.0
    max_new_tokens: int = 64
    dynamic_sampling: bool = False  # drop groups whose rewards are all equal, fill the batch from further prompts
    dynamic_sampling_oversample: int = 2  # with dynamic_sampling: prompts drawn per prompt the update keeps
    mask_truncated_completions: bool = False  # completions without an end token get no loss
    greedy_rollouts: int = 0  # of each group's G completions, this many decoded greedily (the policy's mode)
    # the SFT anchor (InstructGPT's PPO-ptx, here on the same prompts): this times the token-mean negative
    # log-likelihood of each prompt's SFT target joins the loss; 0 trains on the rewards alone
    sft_coef: float = 0.0
    # rollouts draw the tokens inside the answer's box (after its '[', up to its ']') at this temperature instead
    # of `temperature` (None: one temperature); the loss's log-probabilities stay at `temperature`
    box_temperature: float | None = None

    def __post_init__(self):
        def need(ok: bool, what: str):
            if not ok:
                raise GRPOConfigError(f"GRPO setting {what}")

        need(isinstance(self.num_generations, int) and self.num_generations >= 2,
             f"num_generations={self.num_generations!r}: must be an integer >= 2 (advantages compare a group's "
             f"completions)")
        need(isinstance(self.num_iterations, int) and self.num_iterations >= 1,
             f"num_iterations={self.num_iterations!r}: must be an integer >= 1")
        need(self.beta >= 0, f"beta={self.beta!r}: must be >= 0")
        need(0 < self.epsilon < 1, f"epsilon={self.epsilon!r}: must be in (0, 1)")
        need(self.epsilon_high is None or self.epsilon_high > 0, f"epsilon_high={self.epsilon_high!r}: must be > 0")
        need(self.kl_estimator in KL_ESTIMATORS, f"kl_estimator={self.kl_estimator!r}: one of {KL_ESTIMATORS}")
        need(self.loss_agg_mode in LOSS_AGG_MODES, f"loss_agg_mode={self.loss_agg_mode!r}: one of {LOSS_AGG_MODES}")
        need(self.scale_rewards in SCALES, f"scale_rewards={self.scale_rewards!r}: one of {SCALES}")
        need(self.temperature > 0, f"temperature={self.temperature!r}: must be > 0 for sampled rollouts")
        need(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
             f"max_new_tokens={self.max_new_tokens!r}: must be a positive integer")
        need(isinstance(self.greedy_rollouts, int) and 0 <= self.greedy_rollouts < self.num_generations,
             f"greedy_rollouts={self.greedy_rollouts!r}: must be an integer in [0, num_generations) (at least one "
             f"completion a group is sampled)")
        need(self.sft_coef >= 0, f"sft_coef={self.sft_coef!r}: must be >= 0")
        need(self.box_temperature is None or self.box_temperature > 0,
             f"box_temperature={self.box_temperature!r}: must be > 0, or None for the rollouts' temperature")
        need(isinstance(self.dynamic_sampling_oversample, int) and self.dynamic_sampling_oversample >= 2,
             f"dynamic_sampling_oversample={self.dynamic_sampling_oversample!r}: must be an integer >= 2 (the "
             f"prompts drawn per prompt kept, so that dropped groups can be refilled)")

    @property
    def prompts_drawn_per_kept(self) -> int:
        """How many prompts a step rolls out for each prompt its update keeps."""
        return self.dynamic_sampling_oversample if self.dynamic_sampling else 1

    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high
