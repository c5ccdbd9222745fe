"""Compiled CPU kernels behind ``jax.ffi``: event-driven convolution of spike tensors, a dense direct
convolution for input gradients, and BatchNorm's batch statistics.

A spiking layer's input is mostly zeros (3–15 % of SpikingResformer's neurons fire), so its convolution is a sum
over events: for every nonzero x[n, r, q, c] and every tap (i, j) that reads it (r = s·a + i − p,
q = s·b + j − p),

    y[n, a, b, o]          += x[n, r, q, c] · K[i, j, c mod C/g, o]      (o in c's group; ``conv``)
    dK[i, j, c mod C/g, o] += x[n, r, q, c] · dy[n, a, b, o]             (``kernel_grad``)

Work and memory traffic scale with the number of events instead of the number of entries. Spikes may come as
bytes (``BYTES``): exact for 0/1, a quarter of float32's traffic. The values equal the dense convolution's up
to the order of the float additions, for any input (zeros are skipped, every other value is used). The input
gradient is dense: ``dense_conv`` computes it for stride-1 k×k convolutions (Winograd F(2×2, 3×3) for float32
3×3 with 64-channel groups). ``binary_matmul`` is a batched matrix product of spikes (the deploy form's DSSA
products). ``batch_norm_stats`` and ``batch_norm_grad_stats`` read their inputs once, where
XLA:CPU's reductions first write x − μ and dy·(x − μ) out in full.

**Build.** The sources (``csrc/``) are compiled with the system C++ compiler (``$CXX``, else
``g++``/``c++``/``clang++``) for the host CPU (``-O3 -march=native``) into ``$SRESFORMER_CACHE_DIR`` (default
``~/.cache/sresformer_jax``), keyed by the sources, the compiler, the flags, jaxlib's FFI headers and the CPU,
so a cluster of mixed CPUs or a jaxlib upgrade gets its own build. ``load()`` builds when needed, loads the
library and registers every handler the library lists (``csrc/registry.h``) as ``sresformer_<name>``. A model
calls it when it resolves its lowering (``resolve_conv_impl``), before anything is traced; the calls below
refuse to run before it. ``python -m sresformer_jax.ops`` builds ahead of time (e.g. in a container
image) and prints what it did.

On a multi-device CPU mesh XLA's SPMD partitioner does not know these custom calls: it all-gathers their inputs
and every device computes the whole batch's result (correct, not data-parallel).
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

CACHE_ENV = "SRESFORMER_CACHE_DIR"
CSRC = Path(__file__).with_name("csrc")
SOURCES = (CSRC / "event_conv.cc", CSRC / "batch_norm.cc")
HEADERS = (CSRC / "parallel.h", CSRC / "registry.h")
CXX_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")
PREFIX = "sresformer_"
BYTES = jnp.dtype(jnp.uint8)
"""The compact spike type: x as bytes (0/1), 4× less memory and traffic than float32 spikes; exact."""
_SUFFIX = {jnp.dtype(jnp.float32): "F32", jnp.dtype(jnp.float64): "F64", jnp.dtype(jnp.bfloat16): "BF16"}
CONV_DTYPES = tuple(_SUFFIX)
"""Element types of the convolution kernels' float operands (spikes may also come as ``BYTES``)."""
STATS_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))
"""Element types of the BatchNorm statistics kernels."""


class KernelBuildError(RuntimeError):
    """The CPU kernels could not be compiled or loaded."""


@dataclasses.dataclass(frozen=True)
class Library:
    """The loaded kernels: the shared library, its registered targets, and the build time if it was built now
    (None when it came from the cache)."""
    path: Path
    targets: frozenset[str]
    build_seconds: float | None


def _compiler() -> str:
    for cxx in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cxx and shutil.which(cxx):
            return cxx
    raise KernelBuildError("no C++ compiler found: install g++ (e.g. `apt-get install g++`) or set $CXX; "
                           "or build the model with conv_impl='slices' (matmuls, no compiled kernels)")


def _cpu_id() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        return next((line for line in info.splitlines() if line.startswith("flags")), "") + platform.processor()
    except OSError:
        return platform.machine() + platform.processor()


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sresformer_jax")


def library_path() -> Path:
    """Where the kernels for this host, compiler and jaxlib live (built or not)."""
    cxx = _compiler()
    include = jax.ffi.include_dir()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    header = Path(include, "xla", "ffi", "api", "api.h")
    key = hashlib.sha256()
    for part in (*(f.read_bytes() for f in SOURCES + HEADERS), version.encode(), " ".join(CXX_FLAGS).encode(),
                 header.read_bytes() if header.exists() else b"", _cpu_id().encode()):
        key.update(part)
    return cache_dir() / f"sresformer_kernels_{key.hexdigest()[:20]}.so"


def build() -> tuple[Path, float | None]:
    """Compiles the kernels for this host unless a build is cached; returns (path, seconds spent building or
    None). Builds aside and renames into place, so concurrent builds and interrupted ones are harmless."""
    lib = library_path()
    if lib.exists():
        return lib, None
    lib.parent.mkdir(parents=True, exist_ok=True)
    cxx, t0 = _compiler(), time.perf_counter()
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        out = Path(tmp) / lib.name
        cmd = [cxx, *CXX_FLAGS, "-isystem", jax.ffi.include_dir(), *map(str, SOURCES), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise KernelBuildError(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-3000:]}")
        os.replace(out, lib)
    return lib, time.perf_counter() - t0


@functools.cache
def _load() -> Library | KernelBuildError:
    """Builds (if needed), loads and registers the kernels once per process; the error, if any, is kept."""
    try:
        path, seconds = build()
        lib = ctypes.CDLL(str(path))
    except (KernelBuildError, OSError, subprocess.SubprocessError) as err:
        return err if isinstance(err, KernelBuildError) else KernelBuildError(str(err))
    lib.sresformer_num_targets.restype = ctypes.c_int64
    lib.sresformer_target_name.restype = ctypes.c_char_p
    lib.sresformer_target_name.argtypes = (ctypes.c_int64,)
    lib.sresformer_target_handler.restype = ctypes.c_void_p
    lib.sresformer_target_handler.argtypes = (ctypes.c_int64,)
    names = []
    for i in range(lib.sresformer_num_targets()):
        name = lib.sresformer_target_name(i).decode()
        jax.ffi.register_ffi_target(PREFIX + name, jax.ffi.pycapsule(lib.sresformer_target_handler(i)),
                                    platform="cpu")
        names.append(name)
    return Library(path, frozenset(names), seconds)


def load() -> Library:
    """The kernels, built and registered (once per process); raises ``KernelBuildError`` with the cause."""
    result = _load()
    if isinstance(result, KernelBuildError):
        raise result
    return result


def unavailable() -> str | None:
    """Why the kernels cannot be used in this process (building and loading them if needed), or None."""
    result = _load()
    return str(result) if isinstance(result, KernelBuildError) else None


# ----------------------------------------------------------------------------------------------- FFI calls
def _target(kind: str, suffix: str) -> str:
    if _load.cache_info().currsize == 0 or isinstance(_load(), KernelBuildError):
        raise RuntimeError("the compiled CPU kernels are not loaded: build the model with conv_impl='events' "
                           "(which loads them before tracing) or call sresformer_jax.ops.kernels.load() first")
    if kind + suffix not in _load().targets:
        raise ValueError(f"no compiled kernel {kind}{suffix}: these kernels take float32, float64 or bfloat16 "
                         "operands (spikes also as uint8)")
    return PREFIX + kind + suffix


def _acc_dtype(dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def _conv_shape(x: jax.Array, kernel_shape, stride: int, padding: int) -> tuple[int, ...]:
    n, h, w, _ = x.shape
    k = kernel_shape[0]
    return (n, (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1, kernel_shape[-1])


def _call(kind: str, out_shape: tuple[int, ...], x: jax.Array, operand: jax.Array, operand_dtype,
          stride: int, padding: int) -> jax.Array:
    """One convolution kernel call: ``kind`` for x's dtype (bytes: and the operand's) on (x, operand), result
    ``out_shape`` in the accumulation type."""
    if jnp.dtype(x.dtype) == BYTES:
        suffix, acc = "U8" + _SUFFIX.get(jnp.dtype(operand_dtype), "?"), _acc_dtype(operand_dtype)
    else:
        suffix, acc = _SUFFIX.get(jnp.dtype(x.dtype), "?"), _acc_dtype(x.dtype)
    return jax.ffi.ffi_call(_target(kind, suffix), jax.ShapeDtypeStruct(tuple(out_shape), acc),
                            vmap_method="sequential")(
        x, operand.astype(operand_dtype), stride=np.int64(stride), padding=np.int64(padding))


def conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """y = conv(x, K) over the events of ``x`` [N, H, W, C]; ``kernel`` [k, k, C/g, O] (groups = C / (C/g)),
    same dtype as x (float32, float64 or bfloat16), or x in bytes (``BYTES``). Returns [N, Ho, Wo, O] in float32
    (float64 for float64). Not differentiable by itself (``ops.conv`` wraps it in a custom VJP)."""
    kdtype = kernel.dtype if jnp.dtype(x.dtype) == BYTES else x.dtype
    return _call("EventConvFwd", _conv_shape(x, kernel.shape, stride, padding), x, kernel, kdtype, stride, padding)


def kernel_grad(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], stride: int,
                padding: int) -> jax.Array:
    """dK [k, k, C/g, O] = Σ over the events of ``x`` of x · dy (``dy`` [N, Ho, Wo, O]), in float32 (float64
    for float64 x; for byte x, in dy's type, float32 or float64)."""
    acc = dy.dtype if jnp.dtype(x.dtype) == BYTES else _acc_dtype(x.dtype)
    return _call("EventConvKernelGrad", kernel_shape, x, dy, acc, stride, padding)


def dense_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """The same convolution as a dense direct one (no event lists), for a dense input such as dy in the input
    gradient: a task is one group of a band of output pixels, so that group's kernel stays in L2; six output
    pixels share each kernel row. Float dtypes as ``conv`` (no bytes)."""
    return _call("DenseConvFwd", _conv_shape(x, kernel.shape, stride, padding), x, kernel, x.dtype, stride,
                 padding)


def binary_matmul(s: jax.Array, kernel: jax.Array) -> jax.Array:
    """y[n, p, o] = Σ_c s[n, p, c] · K[n, c, o] for a binary ``s`` [N, P, C] (bytes; its events only) and
    ``kernel`` [N, C, O] of float32 or float64: the deploy form's DSSA products, one kernel per (step, image, head).
    Returns [N, P, O] in the kernel's dtype. Not differentiable."""
    if jnp.dtype(s.dtype) != BYTES:
        raise ValueError(f"binary_matmul takes spikes as {BYTES.name}, got {s.dtype}")
    out = jax.ShapeDtypeStruct((s.shape[0], s.shape[1], kernel.shape[2]), kernel.dtype)
    return jax.ffi.ffi_call(_target("EventMatmulFwd", _SUFFIX.get(jnp.dtype(kernel.dtype), "?")), out,
                            vmap_method="sequential")(s, kernel)


def _stats_call(kind: str, x: jax.Array, *operands: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One BatchNorm statistics call for x's dtype: two per-channel results [C]."""
    out = jax.ShapeDtypeStruct((x.shape[-1],), x.dtype)
    return jax.ffi.ffi_call(_target(kind, _SUFFIX.get(jnp.dtype(x.dtype), "?")), (out, out),
                            vmap_method="sequential")(x, *(a.astype(x.dtype) for a in operands))


def batch_norm_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(μ, σ²) over every axis of ``x`` [..., C] but the last, σ² biased: two passes over x, no temporaries."""
    return _stats_call("BatchNormStats", x)


def batch_norm_grad_stats(x: jax.Array, dy: jax.Array, mean: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(Σ dy, Σ dy·(x − μ)) over every axis but the last, in one pass over x and dy."""
    return _stats_call("BatchNormGradStats", x, dy, mean)


def main(argv=None) -> int:
    """``python -m sresformer_jax.ops``: build (or find) the kernels for this host and list them."""
    del argv
    try:
        lib = load()
    except KernelBuildError as err:
        print(f"sresformer_jax: the CPU kernels could not be built: {err}", file=sys.stderr)
        return 1
    how = f"built in {lib.build_seconds:.1f} s" if lib.build_seconds is not None else "already built (cached)"
    print(f"{lib.path}: {how}; {len(lib.targets)} FFI targets: {', '.join(sorted(lib.targets))}")
    return 0

