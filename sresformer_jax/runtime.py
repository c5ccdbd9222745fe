"""Host memory for XLA:CPU: where its per-step buffers come from, and how to launch a process that has them fast.

XLA:CPU allocates each executable's temporary buffer with one ``malloc`` per execution: about 2 GB for a batch-8
training step of ``spikingresformer_cifar`` and 5 GB for batch 32. glibc serves an allocation that large with a
fresh ``mmap`` and unmaps it on ``free``, so every step page-faults through the whole buffer again, 4 KiB at a
time, and the kernel zeroes every page.

glibc reads its settings only when a process starts, so the fix is a launcher setting, never something a running
process can do for itself. Either of

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python train.py ...        # glibc >= 2.35, transparent huge pages on
    LD_PRELOAD=libtcmalloc_minimal.so.4 python train.py ...          # apt-get install libtcmalloc-minimal4

removes most of the cost (docs/performance.md: huge pages keep the memory footprint, tcmalloc is faster still
but keeps about twice the memory). ``train.py`` and ``eval.py`` say so once when a CPU run
has neither (``allocator_advice``). ``ALLOCATORS`` names the settings the benchmark gives to each process it launches.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
PRELOADS = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4", "mimalloc": "libmimalloc.so.2"}
DEBIAN_PACKAGES = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4", "mimalloc": "libmimalloc2.0"}
# jemalloc hands allocations above 8 MiB to an arena that returns them to the system at once, which is glibc's
# problem again; with no such threshold its dirty pages are reused (and returned after its 10 s decay).
PRELOAD_ENV = {"jemalloc": {"MALLOC_CONF": "oversize_threshold:0"}}

# glibc settings that keep freed memory in the process (one arena, no mmap, no trim). They avoid the faults too,
# but with XLA the heap grows by every freed output (glibc cannot reuse a freed aligned block for the next one of
# the same size), so this project does not recommend them; the benchmark can give them to the official process,
# whose PyTorch allocations they speed up the most of the settings tried.
RETAIN_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**62)}
ALLOCATORS = ("system", "huge", "retain", *PRELOADS)
"""Host-allocator settings a launcher can give a process (``allocator_env``)."""

# What the advice says it costs: benchmarks/results/host_allocator_cpu.json (spikingresformer_cifar, batch 32, T = 4,
# 32², float32 training step on a 2-core Sapphire Rapids VM, two interleaved rounds; docs/performance.md).
MEASURED_COST = ("a batch-32 training step of spikingresformer_cifar took 1.25× as long as with huge pages and 1.34× "
                 "as long as with tcmalloc on a 2-core VM")


_ACCELERATOR_NODES = ("/dev/nvidia0", "/dev/accel0", "/dev/kfd")


def accelerator_present() -> bool:
    """True unless ``JAX_PLATFORMS=cpu`` or the host has no GPU/TPU device node. Starts no JAX backend (for
    choices made before ``jax.distributed.initialize``)."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return False
    return any(os.path.exists(p) for p in _ACCELERATOR_NODES)


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc/self/statm``; 0 where there is none)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def huge_pages_unavailable() -> str | None:
    """Why this host cannot give glibc's allocations transparent huge pages, or None if it can."""
    name, version = platform.libc_ver()
    if platform.system() != "Linux" or name != "glibc":
        return f"needs Linux with glibc; this is {platform.system()} {name} {version}".rstrip()
    if tuple(int(p) for p in version.split(".")[:2]) < (2, 35):
        return f"needs glibc >= 2.35 for the {TUNABLE} tunable; this is glibc {version}"
    try:
        thp = Path(_THP_SETTING).read_text()
    except OSError:
        return f"the kernel has no transparent huge pages ({_THP_SETTING} is missing)"
    if "[never]" in thp:
        return f"transparent huge pages are off ({_THP_SETTING}: {thp.strip()})"
    return None


def with_huge_pages(env: dict[str, str], on: bool = True) -> dict[str, str]:
    """``env`` with ``glibc.malloc.hugetlb`` set to 1 (``on``) or removed from ``GLIBC_TUNABLES``."""
    kept = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and not t.startswith(TUNABLE + "=")]
    tunables = ":".join(kept + ([f"{TUNABLE}=1"] if on else []))
    out = {k: v for k, v in env.items() if k != "GLIBC_TUNABLES"}
    return out | ({"GLIBC_TUNABLES": tunables} if tunables else {})


def huge_pages_active(env: dict[str, str] | None = None) -> bool:
    """Whether ``GLIBC_TUNABLES`` (of ``env``, default this process's) turns glibc's huge pages on."""
    tunables = (os.environ if env is None else env).get("GLIBC_TUNABLES", "")
    return any(t in (f"{TUNABLE}=1", f"{TUNABLE}=2") for t in tunables.split(":"))


def find_library(soname: str) -> str | None:
    """The path of a shared library in the system's library directories (for ``LD_PRELOAD``), or None."""
    for d in _LIB_DIRS:
        if Path(d, soname).exists():
            return str(Path(d, soname))
    return None


def preloaded_allocator(env: dict[str, str] | None = None) -> str | None:
    """The name of the malloc replacement in ``LD_PRELOAD`` (of ``env``, default this process's), or None."""
    preload = (os.environ if env is None else env).get("LD_PRELOAD", "")
    return next((name for name, so in PRELOADS.items() if so.split(".so")[0] in preload), None)


def allocator_env(name: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default this process's) set up to start a process on the host allocator ``name``
    (``ALLOCATORS``): glibc's defaults, huge pages, glibc retaining freed memory, or a preloaded malloc."""
    if name not in ALLOCATORS:
        raise ValueError(f"unknown allocator {name!r}; choose one of {ALLOCATORS}")
    out = with_huge_pages(dict(os.environ if env is None else env), on=name == "huge")
    for k in RETAIN_ENV:
        out.pop(k, None)
    out["LD_PRELOAD"] = " ".join(p for p in out.get("LD_PRELOAD", "").split() if preloaded_allocator(
        {"LD_PRELOAD": p}) is None)
    if name == "retain":
        out |= RETAIN_ENV
    if name in PRELOADS:
        lib = find_library(PRELOADS[name])
        if lib is None:
            raise FileNotFoundError(f"{PRELOADS[name]} is not installed (Debian: apt-get install "
                                    f"{DEBIAN_PACKAGES[name]})")
        out["LD_PRELOAD"] = " ".join(filter(None, (lib, out["LD_PRELOAD"])))
        out |= PRELOAD_ENV.get(name, {})
    if not out["LD_PRELOAD"]:
        del out["LD_PRELOAD"]
    return out


def describe(env: dict[str, str] | None = None) -> str:
    """The host allocator a process with ``env`` runs on, in a word."""
    env = os.environ if env is None else env
    if preloaded_allocator(env):
        return preloaded_allocator(env)
    if huge_pages_active(env):
        return "huge"
    return "retain" if env.get("MALLOC_MMAP_MAX_") == "0" else "system"


def allocator_advice(platform_name: str, env: dict[str, str] | None = None) -> str | None:
    """What to change, if anything, for XLA:CPU's per-step buffers on a host running ``platform_name``."""
    if platform_name != "cpu" or describe(env) != "system":
        return None
    fixes = []
    if huge_pages_unavailable() is None:
        fixes.append(f"GLIBC_TUNABLES={TUNABLE}=1")
    tcmalloc = find_library(PRELOADS["tcmalloc"]) or f"{PRELOADS['tcmalloc']} (apt-get install libtcmalloc-minimal4)"
    fixes.append(f"LD_PRELOAD={tcmalloc} (about twice the memory)")
    return (f"XLA:CPU's per-step buffers are on glibc's default allocator, which re-faults them every step "
            f"({MEASURED_COST}). Start Python with {' or with '.join(fixes)}, e.g. `{fixes[0].split(' (')[0]} "
            "python train.py`; see docs/performance.md.")


__all__ = ["ALLOCATORS", "MEASURED_COST", "PRELOADS", "RETAIN_ENV", "TUNABLE", "accelerator_present",
           "allocator_advice", "allocator_env", "describe", "find_library", "huge_pages_active",
           "huge_pages_unavailable", "preloaded_allocator", "rss_bytes", "with_huge_pages"]
