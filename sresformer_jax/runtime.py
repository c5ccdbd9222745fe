"""Process start-up settings for hosts that run XLA:CPU: huge pages for its per-step buffers.

XLA:CPU allocates each executable's temporary buffer with one ``malloc`` per execution. That is about 2 GB for
a batch-8 training step and 8 GB for batch 32. glibc serves an allocation that large with a fresh ``mmap`` and
unmaps it on ``free``. So every step page-faults through the whole buffer again, 4 KiB at a time, and the
kernel zeroes every page. Measured at batch 32 on a 2-core VM: 2.0 M minor faults and 6–7 s of kernel time in
a 12 s step.

glibc's ``glibc.malloc.hugetlb=1`` tunable marks those mappings for transparent huge pages, so one fault maps
2 MiB. That is about 300× fewer faults, 2 s of kernel time, and a ~9.5 s step. The memory still goes back to
the system on ``free``. Keeping it in the process instead (``mallopt``: no mmap, no trim) also avoids the faults,
but it leaks. glibc cannot reuse an aligned block's hole for the next aligned block of the same size, so the
heap grew by every freed XLA output (docs/performance.md).

glibc reads tunables only when a process starts. So ``reexec_with_huge_pages`` replaces the process, once and
before it does anything else, by the same command with ``GLIBC_TUNABLES`` extended. ``train.py``, ``eval.py``
and ``bench.py`` call it first thing. A program that imports the library can start Python with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` itself.

Mode, from the argument or ``$SRESFORMER_HOST_MEMORY``:
  ``auto``    huge pages when the kernel offers transparent huge pages, glibc ≥ 2.35 and no accelerator is
              present (``JAX_PLATFORMS=cpu``, or no GPU/TPU device node). This is the default.
  ``huge``    huge pages whenever the kernel and glibc allow it
  ``system``  leave the allocator as it is
"""
from __future__ import annotations

import os
import platform
import sys
import warnings

MODES = ("auto", "huge", "system")
ENV = "SRESFORMER_HOST_MEMORY"
TUNABLE = "glibc.malloc.hugetlb"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
_ACCELERATOR_NODES = ("/dev/nvidia0", "/dev/accel0", "/dev/kfd")


# glibc's start-up settings that keep freed memory in the process (one arena, no mmap, no trim). They avoid the
# faults too, but with XLA the heap grows by every freed output (see the module docstring), so this project does
# not use them; ``bench.py --official-host-memory retain`` gives them to the official process, whose PyTorch
# allocations they speed up the most of the settings tried.
RETAIN_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**62)}


def accelerator_present() -> bool:
    """True unless ``JAX_PLATFORMS=cpu`` or the host has no GPU/TPU device node. Starts no JAX backend."""
    if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
        return False
    return any(os.path.exists(p) for p in _ACCELERATOR_NODES)


def huge_pages_unavailable() -> str | None:
    """Why this host cannot give glibc's allocations transparent huge pages, or None if it can."""
    name, version = platform.libc_ver()
    if platform.system() != "Linux" or name != "glibc":
        return f"needs Linux with glibc; this is {platform.system()} {name} {version}".rstrip()
    if tuple(int(p) for p in version.split(".")[:2]) < (2, 35):
        return f"needs glibc >= 2.35 for the {TUNABLE} tunable; this is glibc {version}"
    try:
        with open(_THP_SETTING) as f:
            thp = f.read()
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


def wants_huge_pages(mode: str | None = None) -> bool:
    """Whether ``mode`` (default ``$SRESFORMER_HOST_MEMORY`` or ``auto``) asks for huge pages on this host."""
    mode = os.environ.get(ENV, "auto") if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"host memory mode {mode!r} (from the argument or ${ENV}) is not one of {MODES}; "
                         "use 'auto' (the default), 'huge' or 'system'")
    if mode == "system" or (mode == "auto" and accelerator_present()):
        return False
    why_not = huge_pages_unavailable()
    if why_not and mode == "huge":
        warnings.warn(f"{ENV}=huge: {why_not}; the allocator is left as it is.", stacklevel=3)
    return why_not is None


def reexec_with_huge_pages(mode: str | None = None) -> None:
    """Restart this program with glibc's huge pages on, if ``mode`` wants them and the process started without
    them. Call it before anything else happens: it does not return when it restarts the process."""
    if not wants_huge_pages(mode) or TUNABLE + "=" in os.environ.get("GLIBC_TUNABLES", ""):
        return          # not wanted, already on, or the user chose a value: leave it
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], with_huge_pages(dict(os.environ)))
