"""`rsground` entry point.

Each subcommand lives in its own module under `rsground_jax.cli` and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`. Errors that users can fix
(`UserError`) print one line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `--help` lists them.
SUBCOMMANDS = ("demo", "sft", "eval", "predict", "convert", "data")


class UserError(Exception):
    """A problem with the user's input (path, config, arguments): reported as one clear line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsground",
        description="rsground_jax: Qwen2.5-VL remote-sensing visual grounding in JAX (CoT-SFT, GRPO).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"rsground_jax.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `rsground` command itself: restart once with malloc on huge pages (see runtime.py)
        from ..runtime import reexec_with_hugepages

        reexec_with_hugepages(["-m", "rsground_jax.cli.main", *sys.argv[1:]])
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `--config.key=value` overrides (ml_collections style) become positional key=value overrides
    argv = [a[len("--config."):] if a.startswith("--config.") else a for a in argv]
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as e:
        if not isinstance(e, _user_error_types()):
            raise
        # Library errors for bad input are written to name the file/value and the problem.
        print(f"rsground {args.command}: error: {e}", file=sys.stderr)
        return 2


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input; imported lazily so `--help` stays fast."""
    from ..data.records import DataError
    from ..configs import ConfigError as ExperimentConfigError
    from ..models.qwen2_5_vl import CheckpointError, ConfigError, ImageTokenMismatchError
    from ..train.loop import CheckpointMismatchError, NonFiniteLossError, WorkdirInUseError

    return (UserError, FileNotFoundError, DataError, CheckpointError, ConfigError, ImageTokenMismatchError,
            ExperimentConfigError, CheckpointMismatchError, NonFiniteLossError, WorkdirInUseError)


if __name__ == "__main__":
    sys.exit(main())
