"""Spikes (0/1 values) kept for a backward pass as bits: eight per byte along the last axis."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def pack_bits(s: jax.Array) -> jax.Array:
    """0/1 values [..., C] → uint8 [..., ⌈C/8⌉], eight values per byte (the last byte zero-padded)."""
    pad = -s.shape[-1] % 8
    if pad:
        s = jnp.pad(s, [(0, 0)] * (s.ndim - 1) + [(0, pad)])
    bits = s.reshape(s.shape[:-1] + (s.shape[-1] // 8, 8)).astype(jnp.uint8)
    return jnp.sum(bits << jnp.arange(8, dtype=jnp.uint8), axis=-1, dtype=jnp.uint8)


def unpack_bits(packed: jax.Array, dtype, size: int | None = None) -> jax.Array:
    """The inverse of ``pack_bits``: uint8 [..., ⌈C/8⌉] → 0/1 [..., C] in ``dtype`` (C = ``size``, default 8×)."""
    bits = (packed[..., None] >> jnp.arange(8, dtype=jnp.uint8)) & 1
    out = bits.reshape(packed.shape[:-1] + (packed.shape[-1] * 8,))
    return (out if size is None else out[..., :size]).astype(dtype)
