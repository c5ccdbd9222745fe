"""How a convolution is computed: XLA's native convolution, matmuls ("slices"), or the compiled event-driven
CPU kernels ("events"). Every lowering gives the same values and gradients up to rounding; which one runs is
the ``impl`` argument, chosen when the model is built (``ops.lowering``).

On CPU, XLA's convolutions are slow, their backward worst of all, so the CPU lowerings write each convolution
as matmuls or hand spike inputs to the event kernels (docs/performance.md compares them). On GPU/TPU the native convolution is best.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from . import kernels
from .bits import pack_bits, unpack_bits
from .dot import dot
from .scan import LOW_PRECISION, as_bits, from_bits, scan_bits

LOWERINGS = ("xla", "slices", "events")


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0, groups: int = 1,
           impl: str = "xla", binary: bool = False) -> jax.Array:
    """2-D cross-correlation, NHWC × HWIO → NHWC, explicit symmetric zero padding (PyTorch's):

        y[n, a, b, o] = Σ_{i, j < k} Σ_{c < Cin/g} x̃[n, s·a + i, s·b + j, g(o)·Cin/g + c] · K[i, j, c, o],
        x̃ = x zero-padded by p on both sides of H and W, g(o) = o // (Cout/g), output ⌊(H + 2p − k)/s⌋ + 1.

    ``x``: [..., H, W, Cin] (leading axes folded into the batch); ``kernel``: [k, k, Cin/groups, Cout].
    ``impl`` (an argument, never process state): ``"xla"`` (``lax.conv_general_dilated``), ``"slices"``
    (matmuls, ``_conv_slices``) or ``"events"`` (the compiled event-driven kernels, ``_event_conv``; they must be
    loaded first, ``kernels.load()``). ``binary``: ``x`` holds only 0 and 1 (a neuron's spikes): the event kernels
    then read, and the backward keeps, ``x`` as bytes (exact; a quarter of float32's memory and traffic). Other
    values would be truncated.
    All lowerings give the same values and gradients up to rounding. Low-precision (bf16/f16) operands are
    accumulated in float32 and give a float32 result (see ``dot``).
    """
    lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
    x4, kernel = x.reshape((-1, h, w, c)), kernel.astype(x.dtype)
    if impl not in LOWERINGS:
        raise ValueError(f"conv2d: impl must be one of {LOWERINGS}, got {impl!r}")
    if impl == "xla":
        y = (_xla_conv_spikes(x4, kernel, stride, padding, groups) if binary
             else _xla_conv(checkpoint_name(x4, "conv_input"), kernel, stride, padding, groups))
    elif impl == "events":
        if c % kernel.shape[2] or c // kernel.shape[2] != groups:
            raise ValueError(f"conv2d: kernel {kernel.shape} does not match {c} input channels in {groups} groups")
        y = _event_conv(x4, kernel, stride, padding, binary)
    else:
        y = _conv_slices(x4, kernel, stride, padding, groups)
    return y.reshape(lead + y.shape[1:])


def _xla_conv(x, kernel, stride, padding, groups):
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups,
        preferred_element_type=jnp.float32 if x.dtype in LOW_PRECISION else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _xla_conv_spikes(x, kernel, stride, padding, groups):
    """XLA's convolution of a spike tensor whose backward keeps the spikes as bits (eight channels per byte;
    exact for 0/1); the gradients are XLA's own, from the unpacked spikes."""
    return _xla_conv(x, kernel, stride, padding, groups)


def _xla_conv_spikes_fwd(x, kernel, stride, padding, groups):
    return _xla_conv(x, kernel, stride, padding, groups), (checkpoint_name(pack_bits(x), "spike_bytes"), kernel)


def _xla_conv_spikes_bwd(stride, padding, groups, res, dy):
    kept, kernel = res                             # conv2d casts the kernel to x's dtype
    c = kernel.shape[2] * groups
    x = unpack_bits(kept, kernel.dtype, c)
    _, vjp = jax.vjp(lambda x, k: _xla_conv(x, k, stride, padding, groups), x, kernel)
    return vjp(dy)


_xla_conv_spikes.defvjp(_xla_conv_spikes_fwd, _xla_conv_spikes_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _event_conv(x, kernel, stride, padding, binary):
    """Convolution of a spike tensor on the event kernels (``kernels``: work ∝ the number of spikes):

        y  = Σ_events x · K            (forward, event kernel)
        dK = Σ_events x · dy           (event kernel)
        dx = conv(dy, K̃)               (dense: a direct-convolution kernel for stride-1 k×k, k > 1;
                                        ``_conv_input_grad`` (XLA) otherwise)

    ``binary``: both kernels read x as bytes, and the backward keeps those (XLA fuses the conversion into
    the neuron that fires x, so float spikes are never written).
    """
    return _event_conv_fwd(x, kernel, stride, padding, binary)[0]


def _event_conv_fwd(x, kernel, stride, padding, binary):
    events = x.astype(kernels.BYTES) if binary else x
    return kernels.conv(events, kernel, stride, padding), (checkpoint_name(events, "spike_bytes" if binary else
                                                                           "conv_input"), kernel)


def _event_conv_bwd(stride, padding, binary, res, dy):
    events, kernel = res
    groups = events.shape[-1] // kernel.shape[2]
    dk = kernels.kernel_grad(events, dy, kernel.shape, stride, padding).astype(kernel.dtype)
    x = events.astype(kernel.dtype)                 # only its shape and dtype are used (dx is linear in dy)
    return _conv_input_grad(dy, kernel, x, stride, padding, groups, direct=True), dk


_event_conv.defvjp(_event_conv_fwd, _event_conv_bwd)


def _conv_input_grad(dy: jax.Array, kernel: jax.Array, x: jax.Array, stride: int, padding: int,
                     groups: int, direct: bool = False) -> jax.Array:
    """dx of the convolution (its transpose in x; only x's shape and dtype are used). Stride 1: the forward
    convolution of dy with the flipped, in/out-swapped kernel (``_transposed_kernel``), padding k − 1 − p —
    with ``direct`` and k > 1 on the direct-convolution kernel (``kernels.dense_conv``), else as matmuls;
    other strides: the transpose of the slices lowering (XLA drops its unused forward)."""
    k = kernel.shape[0]
    if stride == 1:
        dy, kt = dy.astype(x.dtype), _transposed_kernel(kernel, groups)   # low precision: bf16 products too
        if direct and k > 1:
            dx = kernels.dense_conv(dy, kt, 1, k - 1 - padding)
        else:
            dx = _conv_groups(dy, kt, 1, k - 1 - padding, groups, bits=True)
        return dx.astype(x.dtype)
    return jax.vjp(lambda x_: _conv_groups(x_, kernel, stride, padding, groups), x)[1](dy)[0]


def _conv_slices(x: jax.Array, kernel: jax.Array, stride: int, padding: int, groups: int) -> jax.Array:
    """Grouped convolution as ``groups`` dense ones, vmapped over a leading group axis, so that every
    contraction is a batched matmul with the groups as its leading batch dimension:

        y[..., g·O/g + o] = dense(x[..., g·C/g : (g+1)·C/g], K[..., g·O/g : (g+1)·O/g])[..., o]

    Stride-1 k×k convolutions (the group-wise 3×3 of GWFFN, the 3×3 stem) have a custom VJP
    (``_conv_stride1``).
    """
    if kernel.shape[0] > 1 and stride == 1:
        return _conv_stride1(x, kernel, padding, groups)
    return _conv_groups(x, kernel, stride, padding, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_stride1(x, kernel, padding, groups):
    """A stride-1 k×k (grouped) convolution whose backward pass keeps only the group-major padded input
    (not the k² shifted slices autodiff would store) and computes

        dx = conv(dy, K̃, padding k − 1 − p),   K̃[i, j, o, c] = K[k−1−i, k−1−j, c, o] within each group
        dK = Σ_chunks X̃ᵀ · dy                  (``_kernel_grad_chunks``: one im2col matmul per chunk of images)

    i.e. the input gradient is itself a forward convolution (accumulated in place, no scatter of k² slice
    gradients)."""
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
    XLA materialise all k² slices at once). The first tap
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
    tap at a time, runs on XLA:CPU's slow generic path for transposed operands.
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
