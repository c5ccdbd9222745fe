"""Spikes (0/1 values) kept for a backward pass as bits: eight per byte along the last axis.

Byte j of a row of C values holds the values j, j + n, …, j + 7n (n = ⌈C/8⌉, bit i = value j + i·n): the row is
cut into eight contiguous slices and slice i becomes bit i. Packing is then eight elementwise shifts of contiguous
slices, with no reduction over a minor axis of eight, a form every backend compiles (XLA:TPU's fusion emitter
aborts on a sum over a trailing axis of 8 bits).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def pack_bits(s: jax.Array) -> jax.Array:
    """0/1 values [..., C] → uint8 [..., ⌈C/8⌉], eight values per byte (the last slice zero-padded)."""
    n = -(-s.shape[-1] // 8)
    pad = 8 * n - s.shape[-1]
    if pad:
        s = jnp.pad(s, [(0, 0)] * (s.ndim - 1) + [(0, pad)])
    s = s.astype(jnp.uint8)
    packed = s[..., :n]
    for i in range(1, 8):
        packed = packed | (s[..., i * n:(i + 1) * n] << i)
    return packed


def unpack_bits(packed: jax.Array, dtype, size: int | None = None) -> jax.Array:
    """The inverse of ``pack_bits``: uint8 [..., n] → 0/1 [..., C] in ``dtype`` (C = ``size``, default 8n)."""
    out = jnp.concatenate([(packed >> i) & 1 for i in range(8)], axis=-1)           # [..., 8n]
    return (out if size is None else out[..., :size]).astype(dtype)
