"""runtime: the host allocator of XLA:CPU's per-execution buffers, as a launcher sets it (glibc's huge pages or a
preloaded malloc), and the warning a CPU run gives without one. Fault counts come from fresh interpreters,
because glibc reads its settings only at process start."""
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
    return runtime.allocator_env("system", {**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.slow
@needs_thp
def test_huge_pages_cut_per_call_page_faults_without_growing_memory():
    system = json.loads(_python(FAULTS, _base_env()).stdout.splitlines()[-1])
    huge = json.loads(_python(FAULTS, runtime.with_huge_pages(_base_env())).stdout.splitlines()[-1])
    assert system["faults"] > PAGES // 2, system          # 4 KiB pages: every call faults its result in again
    assert huge["faults"] < PAGES // 20, huge             # 2 MiB pages: a few hundred faults
    assert huge["peak_rss_mib"] < system["peak_rss_mib"] + 300, (system, huge)   # freed memory goes back


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tcmalloc", "jemalloc"])
def test_a_preloaded_malloc_also_cuts_the_faults(name):
    if runtime.find_library(runtime.PRELOADS[name]) is None:
        pytest.skip(f"{runtime.DEBIAN_PACKAGES[name]} is not installed")
    system = json.loads(_python(FAULTS, _base_env()).stdout.splitlines()[-1])
    preloaded = json.loads(_python(FAULTS, runtime.allocator_env(name, _base_env())).stdout.splitlines()[-1])
    # it keeps freed blocks mapped: at most one of the three calls faults its 128 MiB in (glibc: all three)
    assert preloaded["faults"] <= system["faults"] // 3 + 64, (system, preloaded)


def test_tunables_are_edited_not_replaced():
    env = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=0", "A": "1"}
    on = runtime.with_huge_pages(env)
    assert on == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1"}
    assert runtime.huge_pages_active(on) and not runtime.huge_pages_active(env)
    assert runtime.with_huge_pages({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, on=False) == {}


def test_allocator_envs_name_one_allocator_each():
    env = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.tcache_count=0", "LD_PRELOAD": "/x/libfoo.so",
           **runtime.RETAIN_ENV, "A": "1"}
    system = runtime.allocator_env("system", env)
    assert system == {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0", "LD_PRELOAD": "/x/libfoo.so", "A": "1"}
    assert runtime.describe(system) == "system"
    assert runtime.describe(runtime.allocator_env("huge", env)) == "huge"
    assert runtime.describe(runtime.allocator_env("retain", env)) == "retain"
    with pytest.raises(ValueError, match="unknown allocator"):
        runtime.allocator_env("fast", env)
    if runtime.find_library(runtime.PRELOADS["jemalloc"]):
        jem = runtime.allocator_env("jemalloc", env)
        assert runtime.describe(jem) == "jemalloc" and jem["LD_PRELOAD"].endswith("libjemalloc.so.2 /x/libfoo.so")
        assert runtime.describe(runtime.allocator_env("huge", jem)) == "huge"       # the preload is dropped


def test_cpu_runs_without_an_allocator_setting_are_told_the_fix():
    advice = runtime.allocator_advice("cpu", runtime.allocator_env("system"))
    assert advice and "LD_PRELOAD=" in advice and "tcmalloc" in advice and runtime.MEASURED_COST in advice
    if runtime.huge_pages_unavailable() is None:
        assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in advice
    assert runtime.allocator_advice("cpu", runtime.allocator_env("huge")) is None
    assert runtime.allocator_advice("gpu", runtime.allocator_env("system")) is None


def test_train_py_warns_once_without_an_allocator_setting(tmp_path, monkeypatch, capsys):
    """The warning comes from the real entry point (``cli.train``, in-process), once, before training (here on a
    config error after it), and not when the launcher set an allocator."""
    from sresformer_jax import cli
    argv = ["train.py", f"--workdir={tmp_path}", "--config.log_every_steps=0"]
    for name in ("GLIBC_TUNABLES", "LD_PRELOAD", *runtime.RETAIN_ENV):     # glibc's defaults
        monkeypatch.delenv(name, raising=False)
    assert cli.train(argv) == 1
    assert capsys.readouterr().err.count("per-step buffers") == 1
    for key, value in runtime.allocator_env("huge", {}).items():
        monkeypatch.setenv(key, value)
    assert cli.train(argv) == 1
    assert "per-step buffers" not in capsys.readouterr().err


def test_accelerator_detection_honours_jax_platforms(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert runtime.accelerator_present() is False
