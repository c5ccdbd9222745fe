"""Statistics across the devices of a data-parallel axis, for layers that run inside ``jax.shard_map``.

A layer given an ``axis_name`` computes on its device's shard of the batch and combines only channel-sized
statistics with the other devices: every function here is the identity when ``axis_name`` is None (one device, or
a model applied outside ``shard_map``), so the same layer code serves both.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def mean_over_devices(x, axis_name: str | None):
    """The mean over the axis's devices of ``x`` (a pytree): the global mean of per-device means of equal shards."""
    return x if axis_name is None else jax.lax.pmean(x, axis_name)


def sum_over_devices(x, axis_name: str | None):
    """The sum over the axis's devices of ``x`` (a pytree; one all-reduce)."""
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def device_count(axis_name: str | None) -> int:
    """How many devices the axis has (1 without one)."""
    return 1 if axis_name is None else jax.lax.axis_size(axis_name)


def from_first_device(x, axis_name: str | None):
    """Device 0's ``x`` on every device (a pytree of statistics; one all-reduce): what data-parallel training
    without synchronised statistics keeps, rank 0's."""
    if axis_name is None:
        return x
    first = jax.lax.axis_index(axis_name) == 0
    return jax.lax.psum(jax.tree.map(lambda v: jnp.where(first, v, jnp.zeros_like(v)), x), axis_name)
