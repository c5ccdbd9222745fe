"""Dynamic loss scaling for float16 training: the rule of PyTorch's ``torch.cuda.amp.GradScaler``.

The loss is multiplied by a scale ``S`` before differentiation, so that small float16 cotangents do not flush to
zero, and the gradients are divided by ``S`` afterwards. A step whose gradients are not all finite is skipped
(parameters and optimizer state unchanged) and multiplies ``S`` by ``backoff_factor``; after ``growth_interval``
finite steps in a row ``S`` is multiplied by ``growth_factor``, effective from the next step. GradScaler's
defaults: ``S₀ = 2¹⁶``, ``growth_interval = 2000``, growth ×2, backoff ×0.5, no floor.

The scale is a pytree in the train state, so that it is checkpointed with the step and a resume continues
bitwise; other precisions carry ``NoLossScale`` (no leaves, no cost).

A small module rather than a library class: ``jmp.DynamicLossScale`` validates its leaves when a pytree is rebuilt,
which fails inside ``jax.jit(...).lower`` on a state that holds it, and floors the scale at 1; flax's
``DynamicScale`` grows the scale one step after GradScaler does. Tested against GradScaler's rule.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class DynamicLossScale:
    scale: jax.Array                   # float32 scalar: the factor the loss is multiplied by
    counter: jax.Array                 # int32 scalar: finite steps in a row since the scale last changed
    growth_interval: int = struct.field(pytree_node=False, default=2000)
    growth_factor: float = struct.field(pytree_node=False, default=2.0)
    backoff_factor: float = struct.field(pytree_node=False, default=0.5)

    def scale_loss(self, loss: jax.Array) -> jax.Array:
        return loss * self.scale.astype(loss.dtype)

    def unscale(self, grads: Any) -> Any:
        inv = 1.0 / self.scale
        return jax.tree.map(lambda g: g * inv.astype(g.dtype), grads)

    def adjust(self, finite: jax.Array) -> DynamicLossScale:
        """The scale after a step whose gradients were (``finite``) or were not all finite."""
        grow = finite & (self.counter + 1 >= self.growth_interval)
        scale = jnp.where(finite, jnp.where(grow, self.scale * self.growth_factor, self.scale),
                          self.scale * self.backoff_factor)
        counter = jnp.where(finite & ~grow, self.counter + 1, 0)
        return self.replace(scale=scale.astype(self.scale.dtype), counter=counter.astype(self.counter.dtype))


@struct.dataclass
class NoLossScale:
    """Every precision but float16: the loss and gradients pass through."""

    def scale_loss(self, loss: jax.Array) -> jax.Array:
        return loss

    def unscale(self, grads: Any) -> Any:
        return grads


LossScale = DynamicLossScale | NoLossScale


def make_loss_scale(precision: str, loss_scale=None) -> LossScale:
    """The loss scale a run in ``precision`` starts with: dynamic for "float16" (``loss_scale``: the config's
    ``loss_scale`` fields ``init_scale``, ``growth_interval``, ``growth_factor``, ``backoff_factor``; GradScaler's
    defaults where absent), else none."""
    if precision != "float16":
        return NoLossScale()
    ls = dict(loss_scale or {})
    init = float(ls.get("init_scale", 2.0 ** 16))
    period = int(ls.get("growth_interval", 2000))
    factor = float(ls.get("growth_factor", 2.0))
    backoff = float(ls.get("backoff_factor", 0.5))
    if init <= 0 or period < 1 or factor <= 1 or not 0 < backoff < 1:
        raise ValueError(f"config.loss_scale needs init_scale > 0, growth_interval >= 1, growth_factor > 1 and "
                         f"0 < backoff_factor < 1, got init_scale={init}, growth_interval={period}, "
                         f"growth_factor={factor}, backoff_factor={backoff}")
    return DynamicLossScale(jnp.asarray(init, jnp.float32), jnp.zeros((), jnp.int32), growth_interval=period,
                            growth_factor=factor, backoff_factor=backoff)


def is_dynamic(loss_scale: LossScale) -> bool:
    return isinstance(loss_scale, DynamicLossScale)


def all_finite(tree) -> jax.Array:
    """Scalar bool: every leaf of ``tree`` is finite."""
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.asarray(True)


def select_tree(pred: jax.Array, a, b):
    """``a`` where the scalar ``pred`` holds, else ``b`` (leaf by leaf; same structures)."""
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)
