"""Loops over time or taps that keep 16-bit floats as bit patterns, and scans that carry their [T, ...] result.

XLA:CPU does not slice 16-bit floats inside a loop: it converts the whole scanned bf16 array to float32 before
the loop and each slice back to bf16, a float32 copy and twice the traffic. Integer slices are pure data movement, so these helpers move bf16/f16 slices as
their uint16 bit patterns. The bitcast to an integer cuts the gradient: use them inside custom VJPs only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def as_bits(x: jax.Array) -> jax.Array:
    """A bf16/f16 array as its uint16 bit pattern (a free bitcast); other dtypes unchanged."""
    return jax.lax.bitcast_convert_type(x, jnp.uint16) if x.dtype in LOW_PRECISION else x


def from_bits(x: jax.Array, dtype) -> jax.Array:
    """The inverse of ``as_bits`` for an array of ``dtype`` values."""
    return jax.lax.bitcast_convert_type(x, dtype) if x.dtype != dtype else x


def scan_bits(f, init, xs, **kwargs):
    """``jax.lax.scan(f, init, xs)`` whose bf16/f16 inputs are sliced as uint16 bit patterns (``f`` sees the
    float values). Not differentiable."""
    dtypes = jax.tree.map(lambda x: x.dtype, xs)
    return jax.lax.scan(lambda c, x: f(c, jax.tree.map(from_bits, x, dtypes)), init,
                        jax.tree.map(as_bits, xs), **kwargs)


def scan_buffer(step, like: jax.Array, xs, reverse: bool = False, unroll: int | bool = 1) -> jax.Array:
    """A scan over t = 0..T−1 (or back) that carries a [T, ...] buffer shaped like ``like``, starting at zero:
    ``step(buffer, (*xs_t, t)) → (buffer, None)`` writes slice t (``buffer_write``) and may read the slices
    written before (``buffer_slice``). Returns the final buffer. One in-place write per step, where a scan
    with outputs per step also writes its carry."""
    t = jnp.arange(like.shape[0])
    buf, _ = scan_bits(step, as_bits(jnp.zeros_like(like)), (*xs, t), reverse=reverse, unroll=unroll)
    return from_bits(buf, like.dtype)


def buffer_slice(buf: jax.Array, t: jax.Array, dtype) -> jax.Array:
    """Slice ``t`` of a ``scan_buffer`` buffer, as ``dtype``."""
    return from_bits(jax.lax.dynamic_index_in_dim(buf, t, keepdims=False), dtype)


def buffer_write(buf: jax.Array, t: jax.Array, value: jax.Array) -> jax.Array:
    """``buf`` (a ``scan_buffer`` buffer) with slice ``t`` set to ``value`` (in place inside the scan)."""
    return jax.lax.dynamic_update_index_in_dim(buf, as_bits(value), t, 0)
