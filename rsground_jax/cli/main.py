"""`rsground` entry point.

Each subcommand lives in its own module under `rsground_jax.cli` and exposes `register(subparsers)`, which
adds its parser and sets `func(args) -> int`. Building the parser imports no JAX, so a bad argument is
refused at once.

Exit statuses: 0 done; 2 a problem the user can fix (a `UserError`, a bad argument, or the file system
refusing a write: full disk, read-only folder, a file where a folder should be), reported as one line on
stderr that names the file or value; 3 stopped on SIGTERM or Ctrl-C after saving its state (run the same
command again, with `--resume` where it has one, to continue); 130 interrupted where nothing was saved.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError

# Subcommand modules, in the order `--help` lists them.
SUBCOMMANDS = ("demo", "sft", "grpo", "eval", "predict", "convert", "data", "ablate", "plan")
EXIT_USER_ERROR = 2
EXIT_STOPPED = 3
EXIT_INTERRUPTED = 130

__all__ = ["EXIT_STOPPED", "EXIT_USER_ERROR", "Parser", "UserError", "build_parser", "main", "non_negative_float",
           "non_negative_int", "positive_float", "positive_int", "user_message"]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: `rsground eval: error: argument --batch-size: ...`, status 2."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind, test, wanted: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    parse.__name__ = wanted  # argparse names the type in its own messages
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
non_negative_int = _number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")
non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), "a finite number >= 0")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="rsground",
        description="rsground_jax: Qwen2.5-VL remote-sensing visual grounding in JAX (CoT-SFT, GRPO).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"rsground_jax.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `rsground` command itself: malloc on huge pages, the compilation cache (runtime.py)
        import os

        from ..runtime import compile_cache_env, reexec_with_hugepages

        # `-m rsground_jax.cli` (its __main__ imports this module), so the re-executed process has one copy of
        # this module and of the error classes, not a second one under the name __main__.
        reexec_with_hugepages(["-m", "rsground_jax.cli", *sys.argv[1:]])
        os.environ.update(compile_cache_env(dict(os.environ)))  # read by JAX when it is imported
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `--config.key=value` overrides (ml_collections style) become positional key=value overrides
    argv = [a[len("--config."):] if a.startswith("--config.") else a for a in argv]
    try:
        args, extra = parser.parse_known_args(argv)
        # key=value overrides may come after options too (`rsground sft --config C --resume steps=9`)
        if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides += extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # --help, or a bad argument (already printed as one line)
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR
    from ..stopping import Stopped

    try:
        return int(args.func(args) or 0)
    except Stopped as e:
        print(f"rsground {args.command}: stopped: {e}", file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print(f"rsground {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        message = user_message(e)
        if message is None:
            raise
        print(f"rsground {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def user_message(error: BaseException) -> str | None:
    """One line for an error the user can act on, None for a bug.

    A `UserError` says what is wrong in its message. An `OSError`, raised or given as the explicit cause
    (`raise ... from`) of what was raised, is the file system refusing (no space, read-only, a file where a
    folder should be): its file and reason. An error raised while handling another is not followed back to it:
    that would report a bug as the error it met.
    """
    if isinstance(error, UserError):
        return _one_line(error)
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            if not error.strerror:  # raised with a message of ours
                return _one_line(error)
            names = [str(n) for n in (error.filename, error.filename2) if n]
            return f"{' -> '.join(names) or 'writing a file'}: {error.strerror}"
        error = error.__cause__
    return None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split("\n"))
