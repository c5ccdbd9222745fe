"""The model's one matmul, with the mixed-precision rule of every product in the model."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jax.ad_checkpoint import checkpoint_name

from .bits import pack_bits, unpack_bits
from .scan import LOW_PRECISION


def dot(spec: str, a: jax.Array, b: jax.Array, binary: int | None = None) -> jax.Array:
    """``einsum(spec, a, b)`` of two operands (no index summed within one operand).

    float32/float64 operands: a plain einsum. Low-precision operands (bf16/f16): products accumulated in float32
    and the result returned in **float32**, the path of bf16 units (AMX on x86, tensor cores, the MXU; on CPU
    a bf16 result is slower than a float32 one). Its VJP casts the cotangent to the operands' dtype, so that both backward matmuls
    take the same path.
    ``binary`` (0 or 1): that operand holds only 0 and 1 (spikes), and the backward keeps it as bits (eight per
    byte) instead of in its dtype; the same values and gradients.
    """
    if binary is not None:
        return _binary_dot(spec, binary, a, b)
    if a.dtype == b.dtype and a.dtype in LOW_PRECISION:
        return _mixed_dot(spec, a, b)
    return jnp.einsum(spec, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _binary_dot(spec, which, a, b):
    return dot(spec, a, b)


def _binary_dot_fwd(spec, which, a, b):
    ops = (a, b)
    return dot(spec, a, b), (checkpoint_name(pack_bits(ops[which]), "spike_bytes"), ops[1 - which])


def _binary_dot_bwd(spec, which, res, g):
    kept, other = res
    inputs, out = spec.replace(" ", "").split("->")
    names = inputs.split(",")
    last = names[which][-1]                                          # the spikes' last index: its size is known
    sizes = dict(zip(names[1 - which], other.shape)) | dict(zip(out, g.shape))   # from the other operand or g
    spikes = unpack_bits(kept, other.dtype, sizes[last])
    ops = (spikes, other) if which == 0 else (other, spikes)
    return jax.vjp(lambda a, b: dot(spec, a, b), *ops)[1](g)


_binary_dot.defvjp(_binary_dot_fwd, _binary_dot_bwd)


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
