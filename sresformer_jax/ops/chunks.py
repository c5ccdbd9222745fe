"""DSSA's two attention products computed a chunk of the map's rows at a time (``attention_chunk``).

The spiking attention map a = SN(c1 · y1ᵀq) is [T, B, h, N', HW]: at high resolution the largest array of the model
(for 128² event frames, N' = 1024 and HW = 16384 in stage 1: 268 M values per image at T = 16). Its rows (the N'
key/value tokens) are independent until the second product sums over them, so

    Σ_n a[n, m] · y2[n, d]  =  Σ_chunks Σ_{n ∈ chunk} a[n, m] · y2[n, d]

is computed as a ``lax.scan`` over chunks of rows that accumulates the product (and the spike counts for the firing
rate), with each chunk's map recomputed by the backward pass (``jax.checkpoint``) instead of kept: the forward and
the backward hold one chunk of the map at a time, for a second computation of the map (one matmul and the neuron).
The values are those of the whole-map computation up to the order of the sums.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from .dot import dot


def rows_per_chunk(n_rows: int, chunk: int | None) -> int | None:
    """The rows of a chunk for ``n_rows`` map rows and at most ``chunk`` per chunk: the largest divisor of ``n_rows``
    not above ``chunk``; None (the whole map at once) when ``chunk`` is None or not smaller than ``n_rows``."""
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"attention_chunk must be a positive int (map rows per chunk) or None, got {chunk!r}")
    if chunk is None or chunk >= n_rows:
        return None
    return max(r for r in range(1, chunk + 1) if n_rows % r == 0)


def attention_in_chunks(y1: jax.Array, q: jax.Array, y2: jax.Array, c1: jax.Array,
                        fire: Callable[[jax.Array], jax.Array], rows: int, groups: int, count: bool = False):
    """``(Σ_n a[n]·y2[n], spikes per group and head, total spikes)`` for a = ``fire``((y1ᵀq · c1) in y1's dtype),
    ``rows`` map rows at a time.

    y1, y2 [T, B, h, N', d]; q [T, B, h, HW, d]; c1 broadcasts against [T, B, h, N', HW]; ``fire`` the neuron (pure,
    over the leading time axis). Returns the unscaled product [T, B, h, HW, d] (float32 for low-precision operands,
    as ``dot``), the number of spikes of a per image group and head [groups, h] (float32 or wider, not
    differentiated), and with ``count`` their exact total (int32; else None)."""
    T, B, h, n, _ = y1.shape
    k = n // rows
    stat = jnp.promote_types(y1.dtype, jnp.float32)

    def split(v):                                                 # [T, B, h, N', ·] → [k, T, B, h, rows, ·]
        return jnp.moveaxis(v.reshape(T, B, h, k, rows, v.shape[-1]), 3, 0)

    @jax.checkpoint                                                           # the backward recomputes the chunk's map
    def chunk(y1c, y2c):
        attn = (dot("tbhnd,tbhmd->tbhnm", y1c, q) * c1).astype(y1.dtype)     # [T, B, h, rows, HW]
        a = fire(attn)
        sa = jax.lax.stop_gradient(a)
        per = jnp.sum(sa.astype(stat).reshape((T, groups, B // groups) + sa.shape[2:]), (0, 2, 4, 5))
        total = jnp.sum(sa.astype(jnp.int32)) if count else jnp.zeros((), jnp.int32)
        return dot("tbhnm,tbhnd->tbhmd", a, y2c), per, total               # [T, B, h, HW, d], [groups, h], []

    xs = (split(y1), split(y2))
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(chunk, *(v[0] for v in xs)))

    def body(acc, xs):
        return jax.tree.map(jnp.add, acc, chunk(*xs)), None

    out, per, total = jax.lax.scan(body, init, xs)[0]
    return out, per, total if count else None
