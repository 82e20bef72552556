"""The package's layering, checked in fresh interpreters: the data modules and the host-side model inputs
import no JAX (data workers and tools stay light), and evaluation does not import training code."""

from __future__ import annotations

import json
import subprocess
import sys


def _modules_after(imports: list[str]) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in imports) + "import json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_data_and_host_inputs_import_no_jax():
    # the Grain pipeline module is left out: Grain itself imports JAX (its profiler)
    loaded = _modules_after([
        "rsground_jax.data", "rsground_jax.data.synthetic", "rsground_jax.data.expressions", "rsground_jax.data.cot",
        "rsground_jax.data.chat", "rsground_jax.data.tokenizer", "rsground_jax.data.images",
        "rsground_jax.data.boxes", "rsground_jax.models.qwen2_5_vl.inputs", "rsground_jax.data.answers"])
    assert not {m for m in loaded if m == "jax" or m.startswith(("jax.", "flax"))}


def test_evaluation_does_not_import_training():
    loaded = _modules_after(["rsground_jax.eval.evaluate"])
    assert not {m for m in loaded if m.startswith("rsground_jax.train")}


def test_the_command_line_parser_imports_no_jax():
    """A mistyped argument is refused in a tenth of a second: building the parser (every subcommand's
    arguments and choices) loads neither JAX nor numpy."""
    code = ("import sys, json; from rsground_jax.cli.main import build_parser; build_parser(); "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.splitlines()[-1]))
    assert not {m for m in loaded if m.split(".")[0] in ("jax", "flax", "numpy", "ml_collections")}
