"""Mixup / CutMix on device, per batch (timm ``Mixup``, mode='batch').

With probability ``prob`` the batch is mixed with its reverse: CutMix with probability ``switch_prob``
when both alphas are positive (else whichever is positive), λ ~ Beta(α, α):

    mixup:  x ← λ·x + (1 − λ)·flip(x)
    cutmix: a box of side ⌊√(1 − λ)·H⌋ × ⌊√(1 − λ)·W⌋ around a uniform centre (clipped) is pasted from
            flip(x), and λ ← 1 − box area / (H·W)
    targets ← λ·y + (1 − λ)·flip(y)      (y already label-smoothed)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def mixup_cutmix(rng: jax.Array, images: jax.Array, targets: jax.Array, cfg) -> tuple[jax.Array, jax.Array]:
    """``images`` [B, ..., H, W, C], ``targets`` [B, K] → mixed images and soft targets."""
    k_apply, k_switch, k_mix, k_cut, k_y, k_x = jax.random.split(rng, 6)
    H, W = images.shape[-3], images.shape[-2]
    apply = jax.random.uniform(k_apply) < cfg.prob
    if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch) < cfg.switch_prob
    else:
        use_cutmix = jnp.asarray(cfg.cutmix_alpha > 0)
    lam_mix = jax.random.beta(k_mix, max(cfg.mixup_alpha, 1e-6), max(cfg.mixup_alpha, 1e-6))
    lam_cut = jax.random.beta(k_cut, max(cfg.cutmix_alpha, 1e-6), max(cfg.cutmix_alpha, 1e-6))
    flipped = images[::-1]

    # cutmix box
    ratio = jnp.sqrt(1.0 - lam_cut)
    cut_h, cut_w = jnp.floor(H * ratio).astype(jnp.int32), jnp.floor(W * ratio).astype(jnp.int32)
    cy, cx = jax.random.randint(k_y, (), 0, H), jax.random.randint(k_x, (), 0, W)
    yl, yh = jnp.clip(cy - cut_h // 2, 0, H), jnp.clip(cy + cut_h // 2, 0, H)
    xl, xh = jnp.clip(cx - cut_w // 2, 0, W), jnp.clip(cx + cut_w // 2, 0, W)
    yy, xx = jnp.arange(H)[:, None], jnp.arange(W)[None, :]
    box = ((yy >= yl) & (yy < yh) & (xx >= xl) & (xx < xh))[:, :, None]   # [H, W, 1]
    lam_cut = 1.0 - (yh - yl) * (xh - xl) / (H * W)

    lam = jnp.where(apply, jnp.where(use_cutmix, lam_cut, lam_mix), 1.0).astype(jnp.float32)
    mixed = jnp.where(use_cutmix, jnp.where(box, flipped, images),
                      lam.astype(images.dtype) * images + (1 - lam).astype(images.dtype) * flipped)
    images = jnp.where(apply, mixed, images)
    return images, lam * targets + (1.0 - lam) * targets[::-1]
