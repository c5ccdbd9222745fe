"""The model's one matmul, with the mixed-precision rule of every product in the model."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from .scan import LOW_PRECISION


def dot(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """``einsum(spec, a, b)`` of two operands (no index summed within one operand).

    float32/float64 operands: a plain einsum. Low-precision operands (bf16/f16): products accumulated in float32
    and the result returned in **float32**, the path of bf16 units (AMX on x86, tensor cores, the MXU); on a
    Sapphire Rapids CPU a bf16×bf16→f32 matmul runs 3.7× an f32 one, while a bf16 result is slower than f32
    (docs/performance.md). Its VJP casts the cotangent to the operands' dtype, so that both backward matmuls
    take the same path.
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
