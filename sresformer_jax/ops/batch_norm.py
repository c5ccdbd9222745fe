"""Training-mode BatchNorm's normalisation and batch statistics, with a backward that keeps only x, μ and 1/σ."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from . import kernels


def uses_kernels(use_kernels: bool, dtype) -> bool:
    """Whether statistics of a ``dtype`` activation run on the compiled CPU kernels when asked to."""
    return use_kernels and jnp.dtype(dtype) in kernels.STATS_DTYPES


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, use_kernels: bool = False):
    """Training-mode BatchNorm over every axis but the last → (y, μ_B, σ²_B), σ² biased. Its backward keeps
    only x, μ and r = 1/√(σ² + ε) (autodiff would keep several full-size intermediates):

        x̂ = (x − μ)·r,   g = dy·γ,   dx = r·(g − ⟨g⟩ − x̂·⟨g·x̂⟩) + dμ/N + dσ²·2(x − μ)/N
        dγ = Σ dy·x̂,     dβ = Σ dy                        (⟨·⟩, Σ: mean / sum over the N reduced elements)

    ``x`` may be low precision (bf16/f16): μ, σ², y and the gradients are computed in float32, y returned in
    float32, and the backward keeps x in its own dtype.
    ``use_kernels`` (float32/float64 x): the statistics μ, σ², Σ dy and Σ dy·(x − μ) come from the compiled CPU
    kernels (``kernels.batch_norm_stats``), which read their inputs once; otherwise from jnp reductions.
    """
    return _bn_fwd(x, scale, bias, eps, use_kernels)[0]


def _bn_fwd(x_in, scale, bias, eps, use_kernels):
    x = x_in.astype(jnp.promote_types(x_in.dtype, jnp.float32))       # statistics and x̂ in float32 (or f64)
    axes = tuple(range(x.ndim - 1))
    if uses_kernels(use_kernels, x.dtype):
        mean, var = kernels.batch_norm_stats(x)
    else:
        mean = jnp.mean(x, axes)
        var = jnp.mean(jnp.square(x - mean), axes)
    r = jax.lax.rsqrt(var + eps)
    # the backward keeps x as it came (bf16 under bf16 compute: half of float32's bytes)
    res = (checkpoint_name(x_in, "bn_input"), checkpoint_name(mean, "bn_stats"), checkpoint_name(r, "bn_stats"), scale)
    return ((x - mean) * (r * scale) + bias, mean, var), res


def _bn_bwd(eps, use_kernels, res, cot):
    x_in, mean, r, scale = res
    x = x_in.astype(jnp.promote_types(x_in.dtype, jnp.float32))
    dy, dmean, dvar = cot
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    if uses_kernels(use_kernels, x.dtype):
        dbias, dy_centred = kernels.batch_norm_grad_stats(x, dy, mean)
    else:
        dbias, dy_centred = jnp.sum(dy, axes), jnp.sum(dy * (x - mean), axes)
    dscale = dy_centred * r
    g_mean, gx_mean = dbias * scale / n, dscale * scale / n
    centred = x - mean
    dx = r * (dy * scale - g_mean - centred * (r * gx_mean)) + dmean / n + centred * (2 * dvar / n)
    return dx.astype(x_in.dtype), dscale, dbias


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)
