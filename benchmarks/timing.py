"""What both sides of the step benchmark measure with, in the same way: wall time per call and peak memory.
Standard library only, so that the official side's interpreter (torch, no JAX) imports it too."""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

BENCH_JSON_PREFIX = "BENCH_JSON:"
"""Each side's process prints its result as one line: this prefix, then JSON."""


def timed(fn, n: int) -> list[float]:
    """Seconds of each of ``n`` calls of ``fn`` (which must block until its work is done)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def peak_rss_bytes() -> int:
    """Peak resident set size of this process: ``VmHWM`` from /proc/self/status where there is one (its own
    address space's high-water mark: a child started by fork+exec inherits its parent's ``ru_maxrss``), else
    ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)
