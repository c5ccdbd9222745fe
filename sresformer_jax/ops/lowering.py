"""Which lowering a model computes with: a field of the model (``conv_impl``), resolved once when it is built.

    "xla"     XLA's native convolutions and reductions: the GPU/TPU path, and the reference everywhere
    "slices"  every convolution as matmuls (shifted slices, im2col, or patches); jnp reductions
    "events"  CPU only: convolutions of spikes on the compiled event-driven kernels, the dense image stem as
              matmuls, and BatchNorm's statistics on compiled kernels (``ops.kernels``)
    "auto"    "xla" off the CPU; on the CPU "events" when the kernels build and support the compute dtype,
              else "slices" (with one warning that says why). Resolved by the model factories
              (``model.create_model``, ``model.build_model``), never by a module, which stores the result.

The choice changes how values are computed, never which values: every lowering is tested against the others.
"""
from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

from . import kernels
from .conv import LOWERINGS

CONV_IMPLS = ("auto", *LOWERINGS)


@functools.cache
def _warn_fallback(why: str) -> None:
    warnings.warn(f"conv_impl='auto' uses 'slices' (matmuls) instead of the compiled CPU kernels: {why}",
                  RuntimeWarning, stacklevel=4)


def resolve_conv_impl(conv_impl: str = "auto", dtype=None, platform: str | None = None) -> str:
    """The concrete lowering ("xla", "slices" or "events") for ``conv_impl`` on ``platform`` ("cpu", "gpu",
    "tpu"; default: this process's default backend), for a model computing in ``dtype`` (None: float32 or
    float64 inputs). On the CPU, loads (building if needed) the CPU kernels for "auto" and "events"; an explicit
    "events" that cannot run raises, naming the fix."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {conv_impl!r}")
    backend = platform or jax.default_backend()
    supported = dtype is None or jnp.dtype(dtype) in kernels.CONV_DTYPES
    if conv_impl == "auto":
        if backend != "cpu":
            return "xla"
        if not supported:
            return "slices"
        why = kernels.unavailable()
        if why:
            _warn_fallback(why)
            return "slices"
        return "events"
    if conv_impl == "events":
        if backend != "cpu":
            raise ValueError(f"conv_impl='events' runs on the CPU only, and the default backend is {backend}: "
                             "use conv_impl='xla' (or 'auto')")
        if not supported:
            raise ValueError(f"conv_impl='events' computes in float32, float64 or bfloat16, not "
                             f"{jnp.dtype(dtype).name}: use conv_impl='slices' (or 'auto')")
        why = kernels.unavailable()
        if why:
            raise kernels.KernelBuildError(f"conv_impl='events' needs the compiled CPU kernels: {why}")
    return conv_impl


def describe(conv_impl: str) -> str:
    """``conv_impl``, and for "events" where the compiled kernels came from."""
    if conv_impl != "events":
        return conv_impl
    lib = kernels.load()
    how = f"built in {lib.build_seconds:.1f} s" if lib.build_seconds is not None else "cached"
    return f"events (CPU kernels {how}: {lib.path})"


def conv_lowering(conv_impl: str, spikes: bool) -> str:
    """The lowering of one convolution of a model built with ``conv_impl``: "events" applies to convolutions
    of spikes; a dense input (the image stem) is computed as matmuls."""
    return "slices" if conv_impl == "events" and not spikes else conv_impl


def lean_backward(conv_impl: str) -> bool:
    """Whether the backward pass keeps the least it can under ``conv_impl``: the attention products' spike operands
    as bits, and no membranes for the neurons that can rebuild their input (``neurons.Rebuild``). On XLA's
    lowering, the accelerators' path, where what the backward keeps sets the batch that fits; the CPU lowerings
    keep those values as they are, which their kernels read without unpacking or recomputing."""
    return conv_impl == "xla"


def uses_stats_kernels(conv_impl: str) -> bool:
    """Whether BatchNorm's statistics use the compiled CPU kernels under ``conv_impl``."""
    return conv_impl == "events"
