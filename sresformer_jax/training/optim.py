"""AdamW and the timm cosine schedule exactly as the official recipe (docs/model.md).

Schedule (timm ``CosineLRScheduler``, warm-up ``w`` epochs from ``warmup_lr``, floor ``min_lr``, stepped
once per epoch; epoch ``e`` is 0-based):

    e < w:  lr = warmup_lr + e·(base − warmup_lr)/w
    e ≥ w:  lr = min_lr + ½(base − min_lr)(1 + cos(π·e/epochs))

With ``per_step`` the same formula is evaluated at the fractional epoch step/steps_per_epoch.
Weight decay applies to parameters of rank ≥ 2 only (conv and linear kernels); BN γ/β and PLIF ``w``
(rank ≤ 1) are not decayed, like timm's parameter groups.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cosine_schedule(base_lr: float, epochs: int, steps_per_epoch: int, warmup_epochs: int = 3,
                    warmup_lr: float = 1e-5, min_lr: float = 1e-5, per_step: bool = False):
    """Returns ``step → lr`` (an optax schedule)."""

    def schedule(step):
        e = step / steps_per_epoch if per_step else step // steps_per_epoch
        e = jnp.asarray(e, jnp.float32)
        warm = warmup_lr + e * (base_lr - warmup_lr) / max(warmup_epochs, 1)
        cos = min_lr + 0.5 * (base_lr - min_lr) * (1 + jnp.cos(jnp.pi * e / epochs))
        return jnp.where(e < warmup_epochs, warm, cos)

    return schedule


def decay_mask(params):
    """True for the parameters that get weight decay: rank ≥ 2 (conv/linear kernels)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(optim_config, steps_per_epoch: int):
    """(optax AdamW with the official decay groups, lr schedule) from ``config.optim``."""
    c = optim_config
    schedule = cosine_schedule(c.lr, c.epochs, steps_per_epoch, c.warmup_epochs, c.warmup_lr, c.min_lr,
                               c.schedule_per_step)
    tx = optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay, mask=decay_mask)
    return tx, schedule
