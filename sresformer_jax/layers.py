"""Stateless layers applied with T folded into the batch (SPEC §4.1).

Everything here acts on arrays whose last three axes are [H, W, C] (NHWC); any leading axes
(e.g. [T, B]) are folded into one batch axis for the convolution and are all reduced over by
BatchNorm, so statistics are taken over T·B·H·W exactly like the official ``seq_to_ann_forward``.
"""
from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from . import event_conv

Dtype = Any


def trunc_normal_init(std: float = 0.02, bound: float = 2.0):
    """PyTorch ``trunc_normal_(std=std)``: N(0, std²) truncated at ±``bound`` (absolute, not in σ)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.truncated_normal(key, -bound / std, bound / std, shape, dtype) * std

    return init


LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def dot(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """The model's one matmul: ``einsum(spec, a, b)`` of two operands (no index summed within one operand).

    float32/float64 operands: a plain einsum. Low-precision operands (bf16/f16, the ``bfloat16`` policy):
    products accumulated in float32 and the result returned in **float32** — the path with bf16 units (AMX on
    x86, tensor cores, the MXU); on this project's CPU a bf16×bf16→f32 matmul runs 3.7× an f32 one, while
    bf16→bf16 output is slower than f32 (docs/performance.md). Its VJP casts the cotangent to the operands'
    dtype so that both backward matmuls take the same path (as mixed-precision training does everywhere).
    """
    if a.dtype == b.dtype and a.dtype in LOW_PRECISION:
        return _mixed_dot(spec, a, b)
    return jnp.einsum(spec, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _mixed_dot(spec, a, b):
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


def _mixed_dot_fwd(spec, a, b):
    return _mixed_dot(spec, a, b), (a, b)


def _mixed_dot_bwd(spec, res, g):
    a, b = res
    inputs, out = spec.replace(" ", "").split("->")
    sa, sb = inputs.split(",")
    g = g.astype(a.dtype)
    da = jnp.einsum(f"{out},{sb}->{sa}", g, b, preferred_element_type=jnp.float32)     # dL/da = g·bᵀ
    db = jnp.einsum(f"{sa},{out}->{sb}", a, g, preferred_element_type=jnp.float32)     # dL/db = aᵀ·g
    return da.astype(a.dtype), db.astype(b.dtype)


_mixed_dot.defvjp(_mixed_dot_fwd, _mixed_dot_bwd)


def as_bits(x: jax.Array) -> jax.Array:
    """A bf16/f16 array as its uint16 bit pattern (a free bitcast); other dtypes unchanged."""
    return jax.lax.bitcast_convert_type(x, jnp.uint16) if x.dtype in LOW_PRECISION else x


def from_bits(x: jax.Array, dtype) -> jax.Array:
    return jax.lax.bitcast_convert_type(x, dtype) if x.dtype != dtype else x


def scan_bits(f, init, xs, **kwargs):
    """``jax.lax.scan(f, init, xs)`` whose bf16/f16 inputs are sliced as uint16 bit patterns.

    XLA:CPU does not slice 16-bit floats inside a loop: it converts the whole scanned bf16 array to float32
    before the loop and each slice back to bf16 (a float32 copy, twice the traffic; 1.8× slower on a
    [32, 4, 4096, 64] bf16 scan feeding a matmul). Integer slices are pure data movement. Not differentiable
    (the bitcast to an integer cuts the gradient): for use inside custom VJPs only.
    """
    dtypes = jax.tree.map(lambda x: x.dtype, xs)
    return jax.lax.scan(lambda c, x: f(c, jax.tree.map(from_bits, x, dtypes)), init,
                        jax.tree.map(as_bits, xs), **kwargs)


def scan_buffer(step, like: jax.Array, xs, reverse: bool = False, unroll: int | bool = 1) -> jax.Array:
    """A scan over t = 0..T−1 (or back) that carries a [T, ...] buffer shaped like ``like``, starting at zero:
    ``step(buffer, (*xs_t, t)) → (buffer, None)`` writes slice t (``buffer_write``) and may read the slices
    written before (``buffer_slice``). Returns the final buffer. One in-place write per step, where a scan
    with outputs per step also writes its carry. bf16 slices move as bit patterns (``scan_bits``)."""
    t = jnp.arange(like.shape[0])
    buf, _ = scan_bits(step, as_bits(jnp.zeros_like(like)), (*xs, t), reverse=reverse, unroll=unroll)
    return from_bits(buf, like.dtype)


def buffer_slice(buf: jax.Array, t: jax.Array, dtype) -> jax.Array:
    """Slice ``t`` of a ``scan_buffer`` buffer, as ``dtype``."""
    return from_bits(jax.lax.dynamic_index_in_dim(buf, t, keepdims=False), dtype)


def buffer_write(buf: jax.Array, t: jax.Array, value: jax.Array) -> jax.Array:
    """``buf`` (a ``scan_buffer`` buffer) with slice ``t`` set to ``value`` (in place inside the scan)."""
    return jax.lax.dynamic_update_index_in_dim(buf, as_bits(value), t, 0)


CONV_IMPLS = ("auto", "xla", "slices", "events")
CONV_IMPL_ENV = "SRESFORMER_CONV_IMPL"
CONV_VJP_ENV = "SRESFORMER_CONV_VJP"   # "custom" (default) or "autodiff": the slices lowering's stride-1 backward
CONV_IMPL: str | None = None
"""Process-wide override of ``conv2d``'s ``impl="auto"`` (``"xla"`` or ``"slices"``); ``None`` defers to
the environment variable ``SRESFORMER_CONV_IMPL``, then to the backend. Read at trace time, so set it
before a function is jitted (an already compiled function keeps the lowering it was traced with)."""


def resolve_conv_impl(impl: str = "auto", events: bool = False, dtype=None) -> str:
    """The lowering ``conv2d`` uses: an explicit ``impl`` wins, then ``CONV_IMPL``, then the environment
    variable ``SRESFORMER_CONV_IMPL``, then the backend: on CPU ``"events"`` for a convolution of spikes
    (``events=True``) when the event kernels are available (``event_conv.enabled``), else ``"slices"``;
    ``"xla"`` elsewhere."""
    if impl == "auto":
        impl = CONV_IMPL or os.environ.get(CONV_IMPL_ENV) or "auto"
    if impl == "auto":
        if jax.default_backend() != "cpu":
            impl = "xla"
        else:
            impl = "events" if events and event_conv.enabled(dtype) else "slices"
    if impl not in CONV_IMPLS[1:]:
        raise ValueError(f"conv impl must be one of {CONV_IMPLS}, got {impl!r}")
    return impl


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0,
           groups: int = 1, impl: str = "auto", events: bool = False, binary: bool = False) -> jax.Array:
    """2-D cross-correlation, NHWC × HWIO → NHWC, explicit symmetric zero padding (PyTorch's):

        y[n, a, b, o] = Σ_{i, j < k} Σ_{c < Cin/g} x̃[n, s·a + i, s·b + j, g(o)·Cin/g + c] · K[i, j, c, o],
        x̃ = x zero-padded by p on both sides of H and W, g(o) = o // (Cout/g), output ⌊(H + 2p − k)/s⌋ + 1.

    ``x``: [..., H, W, Cin] (leading axes folded into the batch); ``kernel``: [k, k, Cin/groups, Cout].
    ``impl``: ``"xla"`` (``lax.conv_general_dilated``), ``"slices"`` (matmuls, ``_conv_slices``),
    ``"events"`` (event-driven kernels, ``_event_conv``) or ``"auto"`` (see ``resolve_conv_impl``).
    ``events``: ``x`` is a spike tensor (mostly zeros), for which ``"auto"`` picks the event kernels on CPU.
    ``binary``: ``x`` holds only 0 and 1 (a neuron's spikes): the event kernels then read, and the backward
    keeps, ``x`` as bytes (exact; a quarter of float32's memory and traffic). Other values would be truncated.
    All lowerings give the same values and gradients up to rounding. Low-precision (bf16/f16) operands are
    accumulated in float32 and give a float32 result (see ``dot``).
    """
    lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
    x4, kernel = x.reshape((-1, h, w, c)), kernel.astype(x.dtype)
    impl = resolve_conv_impl(impl, events, x4.dtype)
    if impl == "xla":
        y = jax.lax.conv_general_dilated(
            x4, kernel, window_strides=(stride, stride),
            padding=((padding, padding), (padding, padding)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
            preferred_element_type=jnp.float32 if x4.dtype in LOW_PRECISION else None)
    elif impl == "events":
        if c % kernel.shape[2] or c // kernel.shape[2] != groups:
            raise ValueError(f"conv2d: kernel {kernel.shape} does not match {c} input channels in {groups} groups")
        y = _event_conv(x4, kernel, stride, padding, binary)
    else:
        y = _conv_slices(x4, kernel, stride, padding, groups)
    return y.reshape(lead + y.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _event_conv(x, kernel, stride, padding, binary):
    """Convolution of a spike tensor on the event kernels (``event_conv``: work ∝ the number of spikes):

        y  = Σ_events x · K            (forward, event kernel)
        dK = Σ_events x · dy           (event kernel)
        dx = conv(dy, K̃)               (dense: a direct-convolution kernel for stride-1 k×k, k > 1;
                                        ``_conv_input_grad`` (XLA) otherwise)

    ``binary``: both kernels read x as bytes, and the backward keeps those (XLA fuses the conversion into
    the neuron that fires x, so float spikes are never written).
    """
    return _event_conv_fwd(x, kernel, stride, padding, binary)[0]


def _event_conv_fwd(x, kernel, stride, padding, binary):
    events = x.astype(event_conv.BYTES) if binary else x
    return event_conv.conv(events, kernel, stride, padding), (events, kernel)


def _event_conv_bwd(stride, padding, binary, res, dy):
    events, kernel = res
    groups = events.shape[-1] // kernel.shape[2]
    dk = event_conv.kernel_grad(events, dy, kernel.shape, stride, padding).astype(kernel.dtype)
    x = events.astype(kernel.dtype)                 # only its shape and dtype are used (dx is linear in dy)
    return _conv_input_grad(dy, kernel, x, stride, padding, groups, direct=True), dk


_event_conv.defvjp(_event_conv_fwd, _event_conv_bwd)


def _conv_input_grad(dy: jax.Array, kernel: jax.Array, x: jax.Array, stride: int, padding: int,
                     groups: int, direct: bool = False) -> jax.Array:
    """dx of the convolution (its transpose in x; only x's shape and dtype are used). Stride 1: the forward
    convolution of dy with the flipped, in/out-swapped kernel (``_transposed_kernel``), padding k − 1 − p —
    with ``direct`` and k > 1 on the direct-convolution kernel (``event_conv.dense_conv``), else as matmuls;
    other strides: the transpose of the slices lowering (XLA drops its unused forward)."""
    k = kernel.shape[0]
    if stride == 1:
        dy, kt = dy.astype(x.dtype), _transposed_kernel(kernel, groups)   # low precision: bf16 products too
        if direct and k > 1:
            dx = event_conv.dense_conv(dy, kt, 1, k - 1 - padding)
        else:
            dx = _conv_groups(dy, kt, 1, k - 1 - padding, groups, bits=True)
        return dx.astype(x.dtype)
    return jax.vjp(lambda x_: _conv_groups(x_, kernel, stride, padding, groups), x)[1](dy)[0]


def _conv_slices(x: jax.Array, kernel: jax.Array, stride: int, padding: int, groups: int) -> jax.Array:
    """Grouped convolution as ``groups`` dense ones, vmapped over a leading group axis, so that every
    contraction is a batched matmul with the groups as its leading batch dimension:

        y[..., g·O/g + o] = dense(x[..., g·C/g : (g+1)·C/g], K[..., g·O/g : (g+1)·O/g])[..., o]

    Stride-1 k×k convolutions (the group-wise 3×3 of GWFFN, the 3×3 stem) have a custom VJP
    (``_conv_stride1``); ``SRESFORMER_CONV_VJP=autodiff`` turns it off (for benchmarks).
    """
    if kernel.shape[0] > 1 and stride == 1 and os.environ.get(CONV_VJP_ENV, "custom") == "custom":
        return _conv_stride1(x, kernel, padding, groups)
    return _conv_groups(x, kernel, stride, padding, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_stride1(x, kernel, padding, groups):
    """A stride-1 k×k (grouped) convolution whose backward pass keeps only the group-major padded input
    (not the k² shifted slices autodiff would store) and computes

        dx = conv(dy, K̃, padding k − 1 − p),   K̃[i, j, o, c] = K[k−1−i, k−1−j, c, o] within each group
        dK = Σ_chunks X̃ᵀ · dy                  (``_kernel_grad_chunks``: one im2col matmul per chunk of images)

    i.e. the input gradient is itself a forward convolution (accumulated in place, no scatter of k² slice
    gradients): 1.2× faster training steps on CPU (docs/performance.md)."""
    return _conv_stride1_fwd(x, kernel, padding, groups)[0]


def _group_major(x: jax.Array, padding: int, groups: int) -> jax.Array:
    """[N, H, W, C] → zero-padded, group-major [g, N, H + 2p, W + 2p, C/g] (one copy)."""
    n, h, w, c = x.shape
    xg = jnp.moveaxis(x.reshape(n, h, w, groups, c // groups), 3, 0)
    return jnp.pad(xg, ((0, 0), (0, 0), (padding, padding), (padding, padding), (0, 0)))


def _conv_stride1_fwd(x, kernel, padding, groups):
    xg = _group_major(x, padding, groups)                                           # [g, N, H', W', C/g]
    return _conv_group_major(xg, kernel, 1, 0, bits=True), (xg, kernel)


def _transposed_kernel(kernel: jax.Array, groups: int) -> jax.Array:
    """[k, k, C/g, O] → [k, k, O/g, C]: spatially flipped, input/output swapped within each group."""
    k, _, cg, cout = kernel.shape
    kt = kernel[::-1, ::-1].reshape(k, k, cg, groups, cout // groups)
    return jnp.swapaxes(kt, 2, 4).reshape(k, k, cout // groups, groups * cg)


def _conv_stride1_bwd(padding, groups, res, dy):
    xg, kernel = res
    k, cg, cout = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    dy = dy.astype(xg.dtype)                     # low precision: the backward matmuls take the bf16 path too
    dx = _conv_input_grad(dy, kernel, jax.ShapeDtypeStruct(
        (dy.shape[0], xg.shape[2] - 2 * padding, xg.shape[3] - 2 * padding, groups * cg), xg.dtype),
        1, padding, groups)
    dk = _kernel_grad_chunks(xg, dy, k)                                                # [g, O/g, k·k·C/g]
    dk = jnp.transpose(dk.reshape(groups, cout // groups, k, k, cg), (2, 3, 4, 0, 1))  # [k, k, C/g, g, O/g]
    return dx, dk.reshape(k, k, cg, cout).astype(kernel.dtype)


_conv_stride1.defvjp(_conv_stride1_fwd, _conv_stride1_bwd)


def _conv_groups(x: jax.Array, kernel: jax.Array, stride: int, padding: int, groups: int,
                 bits: bool = False) -> jax.Array:
    if groups == 1:
        return _conv_dense(x, kernel, stride, padding, bits)
    return _conv_group_major(_group_major(x, 0, groups), kernel, stride, padding, bits)


def _conv_group_major(xg: jax.Array, kernel: jax.Array, stride: int, padding: int, bits: bool) -> jax.Array:
    """Grouped conv of a group-major input [g, N, H, W, C/g] → [N, Ho, Wo, O]: one dense conv per group."""
    groups, (k, cout) = xg.shape[0], (kernel.shape[0], kernel.shape[-1])
    kg = jnp.moveaxis(kernel.reshape(k, k, -1, groups, cout // groups), 3, 0)       # [g, k, k, C/g, O/g]
    y = jax.vmap(_conv_dense, (0, 0, None, None, None))(xg, kg, stride, padding, bits)  # [g, N, Ho, Wo, O/g]
    return jnp.moveaxis(y, 0, 3).reshape(y.shape[1:4] + (cout,))


# Below this contraction depth (input channels per tap) one matmul per tap is a poor use of the CPU, so
# the taps are concatenated into one contraction of depth k²·C instead (im2col; e.g. the 3-channel stem).
_MIN_TAP_DEPTH = 32


def _conv_dense(x: jax.Array, kernel: jax.Array, stride: int, padding: int, bits: bool = False) -> jax.Array:
    """Dense convolution ([N, H, W, C] × [k, k, C, O] → [N, Ho, Wo, O]) as matmuls on the zero-padded x̃:

      1×1:                 y = x̃[:, ::s, ::s] @ K[0, 0]                     (one [N·Ho·Wo, C] × [C, O] matmul)
      k×k, stride k:       non-overlapping patches: x̃ → [N, Ho, k, Wo, k, C], contracted over (k, k, C)
      k×k, other strides:  y = Σ_{i,j} x̃[:, i::s, j::s][:, :Ho, :Wo] @ K[i, j]   (k² shifted slices; for
                           stride 1 a scan over the taps, ``_conv_taps_scan``; im2col below 32 channels)
    """
    k, _, c, cout = kernel.shape
    n, h, w = x.shape[:3]
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    if padding:
        x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    if k == 1:
        xs = x[:, ::stride, ::stride]                                                # [N, Ho, Wo, C]
        return dot("pc,co->po", xs.reshape(-1, c), kernel.reshape(c, cout)).reshape(n, ho, wo, cout)
    if k == stride:
        patches = x[:, :ho * k, :wo * k].reshape(n, ho, k, wo, k, c)                 # [N, Ho, k, Wo, k, C]
        return dot("nakbjc,kjco->nabo", patches, kernel)
    if stride == 1 and c >= _MIN_TAP_DEPTH:
        return _conv_taps_scan(x, kernel, ho, wo, bits)
    taps = [jax.lax.slice(x, (0, i, j, 0), (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                          (1, stride, stride, 1))                                    # k² × [N, Ho, Wo, C]
            for i in range(k) for j in range(k)]
    if c < _MIN_TAP_DEPTH:
        cols = jnp.concatenate(taps, axis=-1)                                        # [N, Ho, Wo, k²·C]
        return dot("pk,ko->po", cols.reshape(-1, k * k * c), kernel.reshape(k * k * c, cout)).reshape(
            n, ho, wo, cout)
    kernel = kernel.reshape(k * k, c, cout)
    y = dot("nabc,co->nabo", taps[0], kernel[0])
    for t, kt in zip(taps[1:], kernel[1:]):
        y = y + dot("nabc,co->nabo", t, kt)                                         # [N, Ho, Wo, O]
    return y


def _tap_offsets(k: int) -> jax.Array:
    return jnp.asarray([(i, j) for i in range(k) for j in range(k)])      # [k², 2], default int (x64-safe)


def _shifted(xp: jax.Array, i, j, ho: int, wo: int, dtype=None) -> jax.Array:
    """x̃[:, i:i+Ho, j:j+Wo] of a padded [N, H', W', C] as [N·Ho·Wo, C] (traced offsets: a scan over taps);
    ``dtype``: the float type of which ``xp`` holds the bits (see ``scan_bits``)."""
    n, c = xp.shape[0], xp.shape[-1]
    return from_bits(jax.lax.dynamic_slice(xp, (0, i, j, 0), (n, ho, wo, c)).reshape(-1, c), dtype or xp.dtype)


def _conv_taps_scan(xp: jax.Array, kernel: jax.Array, ho: int, wo: int, bits: bool = False) -> jax.Array:
    """Stride-1 k×k convolution of the already padded ``xp`` [N, H', W', C] as a ``lax.scan`` over the k²
    taps, y += x̃[:, i:i+Ho, j:j+Wo] @ K[i, j]: one shifted slice is alive at a time (a Python loop lets
    XLA materialise all k² slices at once: 3.2× the temporary memory, and slower on CPU). The first tap
    initialises the [N·Ho·Wo, O] accumulator (no zero fill). ``bits``: slice 16-bit floats as their bit
    patterns (``scan_bits``; not differentiable, set by the custom VJP only)."""
    k, _, c, cout = kernel.shape
    kernel = kernel.reshape(k * k, c, cout)
    dtype, xv = xp.dtype, as_bits(xp) if bits else xp

    def tap(y, inp):
        (i, j), kt = inp
        return y + dot("pc,co->po", _shifted(xv, i, j, ho, wo, dtype), kt), None

    y = dot("pc,co->po", _shifted(xv, 0, 0, ho, wo, dtype), kernel[0])
    y = jax.lax.scan(tap, y, (_tap_offsets(k)[1:], kernel[1:]))[0]
    return y.reshape(xp.shape[0], ho, wo, cout)


# Pixels per chunk of the kernel-gradient scan (at least one image): its im2col block stays in cache.
_DK_CHUNK_PIXELS = 256


def _kernel_grad_chunks(xg: jax.Array, dy: jax.Array, k: int) -> jax.Array:
    """dK of a stride-1 k×k grouped conv from its group-major padded input ``xg`` [g, N, H', W', C/g] and
    ``dy`` [N, Ho, Wo, O], as a scan over chunks of images: per chunk, dyᵀ [g, O/g, P] times the im2col
    block X̃ [g, P, k²·C/g] (built in cache), accumulated:

        dKᵀ[g] = Σ_chunks dy[g]ᵀ · X̃[g]   → [g, O/g, k²·C/g]

    Canonical row-major matmuls of depth P (the chunk's pixels): contracting all N·Ho·Wo pixels at once, one
    tap at a time, ran on XLA:CPU's slow generic path for transposed operands (2× slower, docs/performance.md).
    """
    groups, n, _, _, cg = xg.shape
    ho, wo, cout = dy.shape[1:]
    og = cout // groups
    chunk = max(d for d in range(1, n + 1) if n % d == 0 and d * ho * wo <= max(_DK_CHUNK_PIXELS, ho * wo))
    xc = jnp.moveaxis(xg.reshape((groups, n // chunk, chunk) + xg.shape[2:]), 1, 0)  # [n/ch, g, ch, H', W', C/g]
    dyc = dy.reshape(n // chunk, chunk * ho * wo, groups, og)                         # [n/ch, P, g, O/g]

    def step(acc, inp):
        x, d = inp
        taps = [x[:, :, i:i + ho, j:j + wo].reshape(groups, -1, cg) for i in range(k) for j in range(k)]
        cols = jnp.stack(taps, 2).reshape(groups, -1, k * k * cg)                     # [g, P, k²·C/g]
        return acc + dot("gop,gpk->gok", jnp.transpose(d, (1, 2, 0)), cols), None

    acc = jnp.zeros((groups, og, k * k * cg), jnp.promote_types(xg.dtype, jnp.float32))
    return scan_bits(step, acc, (xc, dyc))[0]


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """PyTorch ``MaxPool2d(window, stride, padding)`` on [..., H, W, C] (padding with −inf)."""
    lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
    y = jax.lax.reduce_window(
        x.reshape((-1, h, w, c)), -jnp.inf, jax.lax.max,
        (1, window, window, 1), (1, stride, stride, 1),
        ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    return y.reshape(lead + y.shape[1:])


class BatchNorm(nn.Module):
    """BatchNorm with PyTorch semantics over every axis but the last (channels).

    train:  y = (x − μ_B) / √(σ²_B + ε) · γ + β,   σ²_B biased;
            running_mean ← (1 − m)·running_mean + m·μ_B
            running_var  ← (1 − m)·running_var  + m·σ²_B · n/(n − 1)   (unbiased), m = 0.1
    eval:   y = (x − running_mean) / √(running_var + ε) · γ + β

    ``repeat`` says how many identical copies of ``x`` the statistics stand for (the static-image stem is
    computed once for all T steps): it changes only the unbiased count n, so results equal the T-fold input.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, repeat: int = 1) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), self.param_dtype))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), self.param_dtype))
        stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
        xs = x.astype(stat_dtype)
        if train:
            y, mean, var = batch_norm_train(xs, scale.astype(stat_dtype), bias.astype(stat_dtype), self.epsilon)
            if not self.is_initializing():
                n = repeat * (x.size // c)
                m = self.momentum
                ra_mean.value = ((1 - m) * ra_mean.value + m * mean).astype(self.param_dtype)
                ra_var.value = ((1 - m) * ra_var.value + m * var * (n / max(n - 1, 1))).astype(
                    self.param_dtype)
            return y.astype(self.dtype or x.dtype)
        mean, var = ra_mean.value.astype(stat_dtype), ra_var.value.astype(stat_dtype)
        y = (xs - mean) * jax.lax.rsqrt(var + self.epsilon) * scale.astype(stat_dtype) + bias.astype(
            stat_dtype)
        return y.astype(self.dtype or x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float):
    """Training-mode BatchNorm over every axis but the last → (y, μ_B, σ²_B), σ² biased. Its backward keeps
    only x, μ and r = 1/√(σ² + ε) (autodiff would keep several full-size intermediates):

        x̂ = (x − μ)·r,   g = dy·γ,   dx = r·(g − ⟨g⟩ − x̂·⟨g·x̂⟩) + dμ/N + dσ²·2(x − μ)/N
        dγ = Σ dy·x̂,     dβ = Σ dy                        (⟨·⟩, Σ: mean / sum over the N reduced elements)

    On CPU (float32/float64) the statistics μ, σ², Σ dy and Σ dy·(x − μ) come from compiled kernels
    (``event_conv.batch_norm_stats``) that read their inputs once; XLA:CPU's reductions would first write
    x − μ and dy·(x − μ) out in full. Elsewhere, or with ``SRESFORMER_EVENT_CONV=off``, jnp reductions.
    """
    return _bn_fwd(x, scale, bias, eps)[0]


def _bn_fwd(x, scale, bias, eps):
    axes = tuple(range(x.ndim - 1))
    if event_conv.stats_enabled(x.dtype):
        mean, var = event_conv.batch_norm_stats(x)
    else:
        mean = jnp.mean(x, axes)
        var = jnp.mean(jnp.square(x - mean), axes)
    r = jax.lax.rsqrt(var + eps)
    return ((x - mean) * (r * scale) + bias, mean, var), (x, mean, r, scale)


def _bn_bwd(eps, res, cot):
    x, mean, r, scale = res
    dy, dmean, dvar = cot
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    if event_conv.stats_enabled(x.dtype):
        dbias, dy_centred = event_conv.batch_norm_grad_stats(x, dy, mean)
    else:
        dbias, dy_centred = jnp.sum(dy, axes), jnp.sum(dy * (x - mean), axes)
    dscale = dy_centred * r
    g_mean, gx_mean = dbias * scale / n, dscale * scale / n
    centred = x - mean
    dx = r * (dy * scale - g_mean - centred * (r * gx_mean)) + dmean / n + centred * (2 * dvar / n)
    return dx, dscale, dbias


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)


class ConvBN(nn.Module):
    """BN(Conv(x)): a bias-free k×k convolution (explicit padding, optional groups) and a BatchNorm,
    both with time folded into the batch. Params: ``kernel`` [k, k, Cin/groups, Cout], ``bn/{scale,bias}``."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    spikes: bool = False               # x is a spike tensor (0/1): event-driven kernels on CPU, bytes (``conv2d``)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, repeat: int = 1) -> jax.Array:
        cin = x.shape[-1]
        k = self.kernel_size
        kernel = self.param("kernel", trunc_normal_init(0.02), (k, k, cin // self.groups, self.features),
                            self.param_dtype)
        dtype = self.dtype or x.dtype
        y = conv2d(x.astype(dtype), kernel.astype(dtype), self.stride, self.padding, self.groups,
                   events=self.spikes, binary=self.spikes)
        return BatchNorm(dtype=dtype, param_dtype=self.param_dtype, name="bn")(y, train, repeat)
