"""Event-driven convolution of spike tensors on CPU: compiled zero-skipping kernels behind ``jax.ffi`` (and,
in the same library, BatchNorm's batch statistics: ``batch_norm_stats``, ``batch_norm_grad_stats``).

A spiking layer's input is mostly zeros (3–15 % of SpikingResformer's spikes fire), so its convolution is
a sum over events: for every nonzero x[n, r, q, c] and every tap (i, j) that reads it (r = s·a + i − p,
q = s·b + j − p),

    y[n, a, b, o]        += x[n, r, q, c] · K[i, j, c mod C/g, o]      (o in c's group; forward)
    dK[i, j, c mod C/g, o] += x[n, r, q, c] · dy[n, a, b, o]           (kernel gradient)

Work and memory traffic scale with the number of events instead of the number of entries. Spikes may come
as bytes (``BYTES``; ``layers.conv2d(..., binary=True)``): exact for 0/1, a quarter of float32's traffic. The
values are the dense convolution's up to the order of the float additions, for any input (zeros are skipped,
every other value is used), so float64 parity with the official model holds on this path too. The input
gradient dx is dense: for stride-1 k×k convolutions ``dense_conv`` (a direct convolution of dy; Winograd
F(2×2, 3×3) for float32 3×3 with 64-channel groups) computes it, otherwise XLA (``layers._conv_input_grad``).

The kernels (``csrc/event_conv.cc``, ``csrc/batch_norm.cc``; XLA FFI handlers, parallel on XLA's intra-op
thread pool) are built with the system C++ compiler (``$CXX``, else ``g++``/``c++``/``clang++``) on first use,
for the host CPU (``-O3 -march=native``), and cached in ``$SRESFORMER_CACHE_DIR`` (default
``~/.cache/sresformer_jax``), keyed by the sources, the compiler, the flags, jaxlib's FFI headers and the CPU.
Selection (``SRESFORMER_EVENT_CONV`` or ``EVENT_CONV``; read at trace time; it covers the BatchNorm statistics
kernels too):

    auto (default)  on for the CPU backend when the kernels build; otherwise XLA's path, with one warning
    on              the same, but a failed build raises (with the compiler's message)
    off             never (XLA's path everywhere)

On GPU/TPU the native convolutions are used (dense; no event kernels there). Known limitation: XLA's SPMD
partitioner does not know these custom calls, so on a multi-device CPU mesh it all-gathers their inputs and every
device computes the whole batch's convolution, or BatchNorm statistics (correct, and tested with 4 devices and
with two processes; not parallel). A partitioning rule (``custom_partitioning``: batch-sharded in and out,
kernel gradient summed over the devices) would remove that; ``SRESFORMER_EVENT_CONV=off`` keeps such runs on
XLA's partitioned matmuls.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ENV = "SRESFORMER_EVENT_CONV"
CACHE_ENV = "SRESFORMER_CACHE_DIR"
MODES = ("auto", "on", "off")
EVENT_CONV: str | None = None
"""Process-wide override of ``SRESFORMER_EVENT_CONV`` (``"auto"``, ``"on"``, ``"off"``); ``None`` defers to
the environment. Read at trace time: set it before a function is jitted."""

CSRC = Path(__file__).with_name("csrc")
SOURCES = (CSRC / "event_conv.cc", CSRC / "batch_norm.cc")     # one library (and BatchNorm statistics)
HEADERS = (CSRC / "parallel.h",)
CXX_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")
_TYPES = {jnp.dtype(jnp.float32): "F32", jnp.dtype(jnp.float64): "F64", jnp.dtype(jnp.bfloat16): "BF16"}
BYTES = jnp.dtype(jnp.uint8)
"""The compact spike type: x as bytes (0/1), 4× less memory and traffic than float32 spikes; exact."""
_TARGETS = {"EventConvFwd": ("F32", "F64", "BF16", "U8F32", "U8F64", "U8BF16"),
            "EventConvKernelGrad": ("F32", "F64", "BF16", "U8F32", "U8F64"),
            "DenseConvFwd": ("F32", "F64", "BF16"),
            "BatchNormStats": ("F32", "F64"), "BatchNormGradStats": ("F32", "F64")}
_STATS_TYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64))


class EventConvBuildError(RuntimeError):
    """The event-convolution kernels could not be compiled or loaded."""


def mode() -> str:
    m = (EVENT_CONV or os.environ.get(ENV) or "auto").lower()
    aliases = {"1": "on", "true": "on", "0": "off", "false": "off"}
    m = aliases.get(m, m)
    if m not in MODES:
        raise ValueError(f"{ENV} must be one of {MODES}, got {m!r}")
    return m


def enabled(dtype) -> bool:
    """Whether a convolution of spikes of ``dtype`` runs on the event kernels (at trace time)."""
    m = mode()
    if m == "off" or jax.default_backend() != "cpu" or jnp.dtype(dtype) not in _TYPES:
        return False
    try:
        _register()
    except EventConvBuildError as err:
        if m == "on":
            raise
        _warn_once(str(err))
        return False
    return True


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(f"event-driven convolution kernels unavailable, using XLA's convolutions: {message}",
                  RuntimeWarning, stacklevel=3)


def _compiler() -> str:
    for cxx in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cxx and shutil.which(cxx):
            return cxx
    raise EventConvBuildError("no C++ compiler found (set $CXX, or install g++; or set "
                              f"{ENV}=off to use XLA's convolutions)")


def _cpu_id() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        return next((line for line in info.splitlines() if line.startswith("flags")), "") + platform.processor()
    except OSError:
        return platform.machine() + platform.processor()


def library_path() -> Path:
    """The compiled kernels for this host (built now if not cached)."""
    cxx = _compiler()
    include = jax.ffi.include_dir()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    header = Path(include, "xla", "ffi", "api", "api.h")
    key = hashlib.sha256()
    for part in (*(f.read_bytes() for f in SOURCES + HEADERS), version.encode(), " ".join(CXX_FLAGS).encode(),
                 header.read_bytes() if header.exists() else b"", _cpu_id().encode()):
        key.update(part)
    cache = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sresformer_jax")
    lib = cache / f"event_conv_{key.hexdigest()[:20]}.so"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:           # build aside, then an atomic rename
        out = Path(tmp) / lib.name
        cmd = [cxx, *CXX_FLAGS, "-isystem", include, *map(str, SOURCES), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise EventConvBuildError(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-3000:]}")
        os.replace(out, lib)
    return lib


@functools.cache
def _register() -> None:
    try:
        lib = ctypes.CDLL(str(library_path()))
    except (OSError, subprocess.SubprocessError) as err:
        raise EventConvBuildError(str(err)) from err
    for kind, suffixes in _TARGETS.items():
        for suffix in suffixes:
            name = f"{kind}{suffix}"
            jax.ffi.register_ffi_target(f"sresformer_{name}", jax.ffi.pycapsule(getattr(lib, name)),
                                        platform="cpu")


def _acc_dtype(dtype) -> jnp.dtype:
    return jnp.promote_types(dtype, jnp.float32)


def _out_hw(h: int, w: int, k: int, stride: int, padding: int) -> tuple[int, int]:
    return (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1


def _call(target: str, out_shape: tuple[int, ...], x: jax.Array, operand: jax.Array, operand_dtype,
          stride: int, padding: int) -> jax.Array:
    """One FFI call: ``target`` for x's dtype (bytes: and the operand's) on (x, operand), result ``out_shape``
    in the accumulation type."""
    _register()
    if jnp.dtype(x.dtype) == BYTES:
        suffix, acc = "U8" + _TYPES[jnp.dtype(operand_dtype)], _acc_dtype(operand_dtype)
    else:
        suffix, acc = _TYPES[jnp.dtype(x.dtype)], _acc_dtype(x.dtype)
    return jax.ffi.ffi_call(f"sresformer_{target}{suffix}", jax.ShapeDtypeStruct(tuple(out_shape), acc),
                            vmap_method="sequential")(
        x, operand.astype(operand_dtype), stride=np.int64(stride), padding=np.int64(padding))


def _conv_shape(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> tuple[int, ...]:
    n, h, w, _ = x.shape
    return (n,) + _out_hw(h, w, kernel.shape[0], stride, padding) + (kernel.shape[-1],)


def conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """y = conv(x, K) over the events of ``x`` [N, H, W, C]; ``kernel`` [k, k, C/g, O] (groups = C / (C/g)),
    same dtype as x (float32, float64 or bfloat16), or x in bytes (``BYTES``: spikes, each byte its value).
    Returns [N, Ho, Wo, O] in float32 (float64 for float64). Not differentiable by itself (``layers`` wraps
    it in a custom VJP)."""
    kdtype = kernel.dtype if jnp.dtype(x.dtype) == BYTES else x.dtype
    return _call("EventConvFwd", _conv_shape(x, kernel, stride, padding), x, kernel, kdtype, stride, padding)


def kernel_grad(x: jax.Array, dy: jax.Array, kernel_shape: tuple[int, ...], stride: int,
                padding: int) -> jax.Array:
    """dK [k, k, C/g, O] = Σ over the events of ``x`` of x · dy (``dy`` [N, Ho, Wo, O]), in float32 (float64
    for float64 x; for byte x, in dy's type, float32 or float64)."""
    acc = dy.dtype if jnp.dtype(x.dtype) == BYTES else _acc_dtype(x.dtype)
    return _call("EventConvKernelGrad", kernel_shape, x, dy, acc, stride, padding)


def dense_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """The same convolution as a dense direct one (no event lists; for a dense input such as the gradient dy
    of the input-gradient convolution): a task is one group of a band of output pixels, so that group's kernel
    stays in L2; six output pixels share each kernel row, each input value is read once per tap. Float
    dtypes as ``conv`` (no bytes)."""
    return _call("DenseConvFwd", _conv_shape(x, kernel, stride, padding), x, kernel, x.dtype, stride, padding)


# ---------------------------------------------------------------------------------------------- BatchNorm
# (the same compiled library: csrc/batch_norm.cc)
def stats_enabled(dtype) -> bool:
    """Whether BatchNorm's statistics of a ``dtype`` activation run on the compiled kernels (CPU, float32 or
    float64, kernels enabled: ``enabled``)."""
    return jnp.dtype(dtype) in _STATS_TYPES and enabled(dtype)


def _stats_call(target: str, x: jax.Array, *operands: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One FFI call of a BatchNorm statistics ``target`` for x's dtype: two per-channel results [C]."""
    _register()
    out = jax.ShapeDtypeStruct((x.shape[-1],), x.dtype)
    return jax.ffi.ffi_call(f"sresformer_{target}{_TYPES[jnp.dtype(x.dtype)]}", (out, out),
                            vmap_method="sequential")(x, *(a.astype(x.dtype) for a in operands))


def batch_norm_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(μ, σ²) over every axis of ``x`` [..., C] but the last, σ² biased: two passes over x, no temporaries."""
    return _stats_call("BatchNormStats", x)


def batch_norm_grad_stats(x: jax.Array, dy: jax.Array, mean: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(Σ dy, Σ dy·(x − μ)) over every axis but the last, in one pass over x and dy."""
    return _stats_call("BatchNormGradStats", x, dy, mean)
