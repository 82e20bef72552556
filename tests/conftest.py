"""Shared test set-up: float32 at highest matmul precision, fresh random seeds reported on failure."""

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def rng(request):
    """A numpy Generator seeded afresh for each test; the seed is printed so a failure can be replayed
    with RSGROUND_TEST_SEED=<seed>."""
    seed = int(os.environ.get("RSGROUND_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    print(f"[{request.node.name}] seed={seed}")
    return np.random.default_rng(seed)


def pytest_testnodedown(node, error):
    """pytest-xdist: add up the reliability cases each worker ran."""
    from tests.reliability.conftest import CASES

    for k, v in getattr(node, "workeroutput", {}).get("rsground_cases", {}).items():
        CASES[k] += v


def pytest_terminal_summary(terminalreporter):
    from rsground_jax import runtime
    from tests.reliability.conftest import CASES

    if any(CASES.values()):
        reexec = runtime.hugepage_env(dict(os.environ)) is not None
        terminalreporter.write_line(
            f"reliability: {CASES['refusals']} refusals and {CASES['faults']} faults ran through the installed "
            f"rsground command ({'re-executing itself with huge pages' if reexec else 'without re-execution'} here)")


def pytest_collection_modifyitems(session, config, items):
    """Files with a `slow` test first (stable otherwise): with `-n 2 --dist loadfile` each file runs whole on
    one worker, so the long ones start first and the short ones fill the other worker at the end instead of
    one long file running alone after everything else."""
    slow = {item.fspath for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.fspath not in slow)
