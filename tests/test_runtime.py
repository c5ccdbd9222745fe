"""runtime: glibc's huge pages for XLA:CPU's per-execution buffers, and the one-time restart that turns them on.
Fault counts come from fresh interpreters, because glibc reads its tunables only at process start."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from sresformer_jax import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_thp = pytest.mark.skipif(runtime.huge_pages_unavailable() is not None,
                               reason=f"no huge pages here: {runtime.huge_pages_unavailable()}")

# A jitted op whose 128 MiB result XLA allocates anew at every call; prints the minor page faults of calls 3–5.
FAULTS = """
    import json, resource
    import jax, jax.numpy as jnp
    f = jax.jit(lambda x: x * 2.0 + 1.0)
    x = jnp.ones((32 * 2**20,), jnp.float32)
    for _ in range(2):
        f(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        f(x).block_until_ready()
    print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
"""
PAGES = 3 * 128 * 2**20 // 4096   # 4 KiB pages the three results span


def _python(code: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                       env=env, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


def _base_env() -> dict[str, str]:
    env = runtime.with_huge_pages({**os.environ, "JAX_PLATFORMS": "cpu"}, on=False)
    env.pop(runtime.ENV, None)
    return env


@needs_thp
def test_huge_pages_cut_per_call_page_faults_without_growing_memory():
    system = json.loads(_python(FAULTS, _base_env()).stdout.splitlines()[-1])
    huge = json.loads(_python(FAULTS, runtime.with_huge_pages(_base_env())).stdout.splitlines()[-1])
    assert system["faults"] > PAGES // 2, system          # 4 KiB pages: every call faults its result in again
    assert huge["faults"] < PAGES // 20, huge             # 2 MiB pages: a few hundred faults
    assert huge["peak_rss_mib"] < system["peak_rss_mib"] + 300, (system, huge)   # freed memory goes back


RESTART = """
    import os, sys
    print("start", os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:], flush=True)
    from sresformer_jax import runtime
    runtime.reexec_with_huge_pages("huge")
    print("running", runtime.huge_pages_active(), flush=True)
"""


@needs_thp
def test_restart_happens_once_and_keeps_arguments_and_other_tunables():
    env = {**_base_env(), "GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}
    out = _python(RESTART, env, "--flag", "x y").stdout.splitlines()
    assert out == ["start glibc.malloc.arena_max=4 ['--flag', 'x y']",
                   "start glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1 ['--flag', 'x y']",
                   "running True"]


def test_a_users_own_hugetlb_choice_is_kept():
    env = {**_base_env(), "GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}
    assert _python(RESTART, env).stdout.splitlines()[1:] == ["running False"]      # no restart


def test_system_mode_never_restarts():
    env = {**_base_env(), runtime.ENV: "system"}
    code = RESTART.replace('reexec_with_huge_pages("huge")', "reexec_with_huge_pages()")
    assert len(_python(code, env).stdout.splitlines()) == 2


def test_tunables_are_edited_not_replaced():
    env = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=0", "A": "1"}
    on = runtime.with_huge_pages(env)
    assert on == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1"}
    assert runtime.huge_pages_active(on) and not runtime.huge_pages_active(env)
    assert runtime.with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, on=False) == {}


def test_auto_leaves_accelerator_hosts_alone(monkeypatch):
    monkeypatch.setattr(runtime, "accelerator_present", lambda: True)
    assert runtime.wants_huge_pages("auto") is False


def test_accelerator_detection_honours_jax_platforms(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert runtime.accelerator_present() is False


def test_unknown_mode_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="'auto'.*'huge'.*'system'"):
        runtime.wants_huge_pages("keep")
    monkeypatch.setenv(runtime.ENV, "sometimes")
    with pytest.raises(ValueError, match=runtime.ENV):
        runtime.reexec_with_huge_pages()
