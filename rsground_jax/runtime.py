"""Process settings that make XLA:CPU faster and must be in place when the process starts.

XLA:CPU allocates an executable's temporaries afresh on every call (377 MB for the 47M-parameter training
step of `benchmarks/model_train_step.py`) through glibc malloc, which maps blocks that large with mmap and
unmaps them when they are freed. Each call then faults the whole block back in, 4 KiB page by page: about
107,000 page faults per step there, a quarter of the step's time on the 2-core development VM. glibc's
`glibc.malloc.hugetlb=1` tunable makes malloc ask for transparent huge pages (2 MiB) on its maps, which the
kernel honours when THP is in `madvise` mode, the common default: 10x fewer faults, and the same step ran
in 757 ms instead of 1,000 ms. Tunables are read once, when a process starts, so the `rsground` command and
the benchmarks re-execute themselves once with the tunable added (`reexec_with_hugepages`). Nothing changes
numerically; set `RSGROUND_NO_HUGEPAGES=1` to opt out.

The command also keeps JAX's persistent compilation cache (`compile_cache_env`), as MaxText does: a resumed
run, after a preemption or a crash, loads the programs the first run compiled instead of compiling them again
(the tiny SFT step of the fault tests: 22 s to start and finish, 10.5 s with the cache). It lives in
`$XDG_CACHE_HOME/rsground/jax` (`~/.cache/rsground/jax`); `JAX_COMPILATION_CACHE_DIR` puts it elsewhere and
`RSGROUND_NO_COMPILE_CACHE=1` turns it off. Programs are keyed by JAX on their computation, compile options,
devices and library versions, so a cached program is the one a compile would give.
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "RSGROUND_NO_HUGEPAGES"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_SETTING) -> str | None:
    """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), or None where unknown."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def hugepage_env(env: dict[str, str], mode: str | None = None) -> dict[str, str] | None:
    """`env` with the glibc THP tunable added, or None when that would change nothing: not Linux with glibc,
    THP not in `madvise` mode (`always` already gives huge pages; `never` refuses them), the tunable already
    set by the user, or the opt-out variable set."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    if env.get(OPT_OUT, "") not in ("", "0") or TUNABLE in env.get("GLIBC_TUNABLES", ""):
        return None
    if (mode if mode is not None else thp_mode()) != "madvise":
        return None
    tunables = env.get("GLIBC_TUNABLES", "")
    return {**env, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"}


def hugepages_active(env: dict[str, str] | None = None) -> bool:
    """Whether this process started with malloc on transparent huge pages (the tunable, or THP `always`)."""
    env = os.environ if env is None else env
    return f"{TUNABLE}=1" in env.get("GLIBC_TUNABLES", "") or thp_mode() == "always"


def reexec_with_hugepages(interpreter_args: list[str]) -> None:
    """Replace this process by `python <interpreter_args>` with the tunable set, when it would help.

    Call it first thing, before JAX starts; it returns (doing nothing) where `hugepage_env` says so, and the
    re-executed process finds the tunable set and returns too.
    """
    env = hugepage_env(dict(os.environ))
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *interpreter_args], env)


CACHE_OPT_OUT = "RSGROUND_NO_COMPILE_CACHE"


def compile_cache_env(env: dict[str, str]) -> dict[str, str]:
    """The variables that turn on JAX's persistent compilation cache for every compile (each entry at least
    the JAX default's size), unless the user set the cache or opted out; {} when nothing is to change."""
    if env.get(CACHE_OPT_OUT, "") not in ("", "0") or "JAX_COMPILATION_CACHE_DIR" in env:
        return {}
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return {"JAX_COMPILATION_CACHE_DIR": os.path.join(base, "rsground", "jax"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": env.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")}
