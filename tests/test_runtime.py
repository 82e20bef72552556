"""The huge-page re-execution of `rsground` (rsground_jax.runtime)."""

import os
import platform
import subprocess
import sys

import pytest

from rsground_jax import runtime

GLIBC_LINUX = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert runtime.thp_mode(str(f)) == "madvise"
    f.write_text("[always] madvise never\n")
    assert runtime.thp_mode(str(f)) == "always"
    f.write_text("garbage\n")
    assert runtime.thp_mode(str(f)) is None
    assert runtime.thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not GLIBC_LINUX, reason="the tunable exists only for glibc on Linux")
def test_hugepage_env_adds_the_tunable_only_where_it_helps(monkeypatch):
    env = {"PATH": "/bin"}
    out = runtime.hugepage_env(env, mode="madvise")
    assert out["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and out["PATH"] == "/bin"
    assert env == {"PATH": "/bin"}  # the caller's dict is left alone
    # the user's own tunables are kept, ours appended
    out = runtime.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, mode="madvise")
    assert out["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    # nothing to do: THP already always on, or refused, or unknown; the user decided; the opt-out
    for mode in ("always", "never"):
        assert runtime.hugepage_env(env, mode=mode) is None
    monkeypatch.setattr(runtime, "thp_mode", lambda: None)  # no THP setting to read
    assert runtime.hugepage_env(env) is None
    assert runtime.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, mode="madvise") is None
    assert runtime.hugepage_env({runtime.OPT_OUT: "1"}, mode="madvise") is None
    assert runtime.hugepage_env({runtime.OPT_OUT: "0"}, mode="madvise") is not None


def _child_tunables(extra_env):
    code = ("from rsground_jax.runtime import reexec_with_hugepages; import os, sys; "
            "reexec_with_hugepages(['-c', 'import os; print(os.environ.get(\"GLIBC_TUNABLES\"))'] ); "
            "print('not re-executed')")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", runtime.OPT_OUT)}
    env.update(extra_env)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_reexec_sets_the_tunable_once_or_not_at_all():
    expect_reexec = GLIBC_LINUX and runtime.thp_mode() == "madvise"
    assert _child_tunables({}) == ("glibc.malloc.hugetlb=1" if expect_reexec else "not re-executed")
    assert _child_tunables({runtime.OPT_OUT: "1"}) == "not re-executed"
