"""GRPO for grounding: rollouts from a shared prefill, rewards on device, the group-relative update.

  parse       the answer grammar on the host: `parse_box`, `format_ok`, the token byte table (no JAX)
  rewards     the on-device parser, reward terms (`REWARDS`), `positional_reward`, the coherence hook
  grpo        `GRPOConfig`, `group_advantages`, `grpo_loss`
"""

import importlib

_EXPORTS = {
    "parse_box": "parse", "format_ok": "parse", "TokenBytes": "parse",
    "positional_reward": "rewards", "REWARDS": "rewards", "COHERENCE": "rewards",
    "GRPOConfig": "config", "group_advantages": "grpo", "grpo_loss": "grpo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
