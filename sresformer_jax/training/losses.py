"""Losses and metrics on per-step logits ``[T, B, K]`` (docs/model.md, "Training recipes").

Default: cross-entropy of the T-averaged logits, ``CE(mean_t z_t, y)``, with label smoothing ε on hard
labels (y ← (1 − ε)·onehot + ε/K) or soft targets as given (mixup/cutmix). TET option:
``(1 − λ)·mean_t CE(z_t, y) + λ·MSE(z, φ)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def smooth_targets(labels: jax.Array, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
    """Integer labels [B] → targets [B, K] with label smoothing (PyTorch ``CrossEntropyLoss`` semantics)."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return onehot * (1.0 - label_smoothing) + label_smoothing / num_classes


def classification_loss(logits: jax.Array, targets: jax.Array, tet: bool = False, tet_phi: float = 1.0,
                        tet_lambda: float = 0.0) -> jax.Array:
    """Mean loss over the batch; ``logits`` [T, B, K] (any float dtype, computed in float32 or wider), ``targets``
    [B, K]."""
    z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if not tet:
        return optax.softmax_cross_entropy(z.mean(0), targets).mean()
    per_step = optax.softmax_cross_entropy(z, targets[None]).mean(1)          # [T]
    loss = (1.0 - tet_lambda) * per_step.mean()
    if tet_lambda:
        loss = loss + tet_lambda * jnp.mean(jnp.square(z - tet_phi))
    return loss


def topk_correct(logits: jax.Array, labels: jax.Array, ks=(1, 5)) -> dict[str, jax.Array]:
    """Per-example correctness [B] for each k, from T-averaged logits ``[T, B, K]``."""
    z = logits.astype(jnp.float32).mean(0)
    ranks = jnp.sum(z > jnp.take_along_axis(z, labels[:, None], 1), axis=1)  # classes scoring higher
    return {f"top{k}": (ranks < k).astype(jnp.float32) for k in ks}
