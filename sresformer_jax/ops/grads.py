"""When the backward pass computes a layer's parameter gradients: ``together`` ties them to its input's gradient.

A parameter's gradient is needed only by the optimizer, at the end of the step, so a scheduler may leave it until
then, with every activation it reads kept alive: XLA:TPU's does, and in a backward pass of recomputed layers (remat)
the values kept for all of them then pile up. ``together((x, w))`` is the identity whose backward returns the
cotangents of ``x`` and ``w`` through one ``jax.lax.optimization_barrier``: w's gradient is computed when x's is,
which the layer before needs at once, and what it reads can be freed there. Values are unchanged.
"""
from __future__ import annotations

import jax


@jax.custom_vjp
def together(xs: tuple) -> tuple:
    """``xs`` unchanged; its cotangents leave the backward pass at the same point."""
    return xs


def _fwd(xs):
    return xs, None


def _bwd(_, g):
    return (tuple(jax.lax.optimization_barrier(tuple(g))),)


together.defvjp(_fwd, _bwd)
