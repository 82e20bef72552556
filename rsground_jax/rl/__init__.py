"""GRPO for grounding: rollouts from a shared prefill, rewards on device, the group-relative update.

  parse_box, format_ok, TokenBytes   the answer grammar, from `data.answers` (numpy only; evaluation reads it too)
  rewards     the on-device parser, reward terms (`REWARDS`), `positional_reward`, the coherence hook
  config      `GRPOConfig` (no JAX: configs are checked before JAX starts)
  grpo        `group_advantages`, `grpo_loss`
  step, loop, experiment   the one-program GRPO step, `run_grpo`, `rsground grpo`'s experiment
"""

import importlib

_EXPORTS = {
    "parse_box": "..data.answers", "format_ok": "..data.answers", "TokenBytes": "..data.answers",
    "positional_reward": "rewards", "REWARDS": "rewards", "COHERENCE": "rewards",
    "GRPOConfig": "config", "group_advantages": "grpo", "grpo_loss": "grpo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module = _EXPORTS[name]
        path = "rsground_jax.data.answers" if module.startswith("..") else f"{__name__}.{module}"
        return getattr(importlib.import_module(path), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
