"""Training-mode BatchNorm's normalisation and batch statistics, with a backward that keeps only x, μ and 1/σ."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from . import kernels
from .collectives import device_count, mean_over_devices, sum_over_devices


def uses_kernels(use_kernels: bool, dtype) -> bool:
    """Whether statistics of a ``dtype`` activation run on the compiled CPU kernels when asked to."""
    return use_kernels and jnp.dtype(dtype) in kernels.STATS_DTYPES


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, use_kernels: bool = False,
                     group_axis: int | None = None, axis_name: str | None = None):
    """Training-mode BatchNorm over every axis but the last → (y, μ_B, σ²_B), σ² biased. Its backward keeps
    only x, μ and r = 1/√(σ² + ε) (autodiff would keep several full-size intermediates):

        x̂ = (x − μ)·r,   g = dy·γ,   dx = r·(g − ⟨g⟩ − x̂·⟨g·x̂⟩) + dμ/N + dσ²·2(x − μ)/N
        dγ = Σ dy·x̂,     dβ = Σ dy                        (⟨·⟩, Σ: mean / sum over the N reduced elements)

    ``x`` may be low precision (bf16/f16): μ, σ², y and the gradients are computed in float32, y returned in
    float32, and the backward keeps x in its own dtype.
    ``use_kernels`` (float32/float64 x): the statistics μ, σ², Σ dy and Σ dy·(x − μ) come from the compiled CPU
    kernels (``kernels.batch_norm_stats``), which read their inputs once; otherwise from jnp reductions.
    ``group_axis``: statistics per index of that axis (groups of images, each normalised on its own), so μ_B
    and σ²_B are [groups, C]; the reductions are then jnp's.
    ``axis_name`` (inside ``jax.shard_map``): ``x`` is this device's shard of a batch split evenly over that axis,
    and the statistics (without groups) are the whole batch's: μ = mean of the devices' μ, then σ² = mean of the
    devices' mean of (x − μ)² (or, from the kernels' per-device μ_d, σ²_d: mean of σ²_d + (μ_d − μ)²). The
    backward sums Σ dy and Σ dy·(x − μ) over the devices for dx, and returns this device's share of dγ and dβ (the
    caller averages parameter gradients over the devices). Groups stay within a device and need no collective.
    The backward keeps ``x`` itself (name it where it is made, e.g. ``checkpoint_name(x, "bn_input")``, so that a
    layer that rebuilds y from x, μ and σ², ``normalize``, shares that one array).
    """
    return _bn_fwd(x, scale, bias, eps, use_kernels, group_axis, axis_name)[0]


def _reduced(x, group_axis):
    """The axes BatchNorm reduces over, and the count N of elements per statistic."""
    axes = tuple(i for i in range(x.ndim - 1) if i != group_axis)
    groups = 1 if group_axis is None else x.shape[group_axis]
    return axes, x.size // (groups * x.shape[-1])


def _bn_fwd(x_in, scale, bias, eps, use_kernels, group_axis, axis_name):
    x = x_in.astype(jnp.promote_types(x_in.dtype, jnp.float32))       # statistics and x̂ in float32 (or f64)
    axes, _ = _reduced(x, group_axis)
    shared = None if group_axis is not None else axis_name             # statistics over every device's shard
    if group_axis is None and uses_kernels(use_kernels, x.dtype):
        mean, var = kernels.batch_norm_stats(x)                        # [C], this device's
        if shared is not None:
            local = mean
            mean = mean_over_devices(local, shared)
            var = mean_over_devices(var + jnp.square(local - mean), shared)
    else:                                          # [C] or, grouped, [1.., groups, 1.., C]
        keep = group_axis is not None
        mean = mean_over_devices(jnp.mean(x, axes, keepdims=keep), shared)
        var = mean_over_devices(jnp.mean(jnp.square(x - mean), axes, keepdims=keep), shared)
    r = jax.lax.rsqrt(var + eps)
    # the backward keeps x as it came (bf16 under bf16 compute: half of float32's bytes)
    res = (x_in, checkpoint_name(mean, "bn_stats"), checkpoint_name(r, "bn_stats"), scale)
    stats = (lambda v: v) if group_axis is None else (lambda v: v.reshape(-1, x.shape[-1]))   # [groups, C]
    return (_affine(x, mean, r, scale, bias), stats(mean), stats(var)), res


def _affine(x, mean, r, scale, bias):
    """y = (x − μ)·(r·γ) + β, r = 1/√(σ² + ε): the normalisation, written once (``normalize`` rebuilds it)."""
    return (x - mean) * (r * scale) + bias


def normalize(x_in, mean, var, scale, bias, eps: float, group_axis: int | None = None):
    """The y of ``batch_norm_train(x_in, scale, bias, eps, group_axis=group_axis)`` from its input and the μ_B,
    σ²_B it returned, computed as it computes y (the same values): a layer after BatchNorm may rebuild its
    input from these instead of keeping it for the backward pass."""
    x = x_in.astype(jnp.promote_types(x_in.dtype, jnp.float32))
    if group_axis is not None:                                         # [groups, C] → [1.., groups, 1.., C]
        shape = [1] * x.ndim
        shape[group_axis], shape[-1] = mean.shape
        mean, var = mean.reshape(shape), var.reshape(shape)
    return _affine(x, mean, jax.lax.rsqrt(var + eps), scale, bias)


def _bn_bwd(eps, use_kernels, group_axis, axis_name, res, cot):
    x_in, mean, r, scale = res
    x = x_in.astype(jnp.promote_types(x_in.dtype, jnp.float32))
    dy, dmean, dvar = cot
    dmean, dvar = dmean.reshape(mean.shape), dvar.reshape(mean.shape)
    axes, n = _reduced(x, group_axis)
    if group_axis is None and uses_kernels(use_kernels, x.dtype):
        dbias, dy_centred = kernels.batch_norm_grad_stats(x, dy, mean)
    else:
        keep = group_axis is not None
        dbias, dy_centred = jnp.sum(dy, axes, keepdims=keep), jnp.sum(dy * (x - mean), axes, keepdims=keep)
    dscale = dy_centred * r                                            # per group when grouped
    if group_axis is None and axis_name is not None:                   # the whole batch's sums, for dx
        dbias_all, dscale_all, dmean, dvar = sum_over_devices((dbias, dscale, dmean, dvar), axis_name)
        n = n * device_count(axis_name)
    else:
        dbias_all, dscale_all = dbias, dscale
    g_mean, gx_mean = dbias_all * scale / n, dscale_all * scale / n
    centred = x - mean
    dx = r * (dy * scale - g_mean - centred * (r * gx_mean)) + dmean / n + centred * (2 * dvar / n)
    if group_axis is not None:                                         # γ and β are shared by the groups
        dscale, dbias = dscale.reshape(-1, x.shape[-1]).sum(0), dbias.reshape(-1, x.shape[-1]).sum(0)
    return dx.astype(x_in.dtype), dscale, dbias


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)
