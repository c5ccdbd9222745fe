"""The model's stateless layers: BatchNorm with PyTorch's semantics, ConvBN and max-pooling.

Everything here acts on arrays whose last three axes are [H, W, C] (NHWC); any leading axes (e.g. [T, B]) are
folded into one batch axis for the convolution and are all reduced over by BatchNorm, so statistics are taken
over T·B·H·W, as the official code's ``seq_to_ann_forward`` does (docs/model.md). How a convolution or a
statistic is computed (the lowering) is a field, chosen when the model is built; see ``sresformer_jax.ops``.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from .ops import batch_norm_train, conv2d, conv_lowering, uses_stats_kernels

Dtype = Any


def trunc_normal_init(std: float = 0.02, bound: float = 2.0):
    """PyTorch ``trunc_normal_(std=std)``: N(0, std²) truncated at ±``bound`` (absolute, not in σ)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.truncated_normal(key, -bound / std, bound / std, shape, dtype) * std

    return init


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """PyTorch ``MaxPool2d(window, stride, padding)`` on [..., H, W, C] (padding with −inf)."""
    lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
    y = jax.lax.reduce_window(
        x.reshape((-1, h, w, c)), -jnp.inf, jax.lax.max,
        (1, window, window, 1), (1, stride, stride, 1),
        ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    return y.reshape(lead + y.shape[1:])


class BatchNorm(nn.Module):
    """BatchNorm with PyTorch semantics over every axis but the last (channels).

    train:  y = (x − μ_B) / √(σ²_B + ε) · γ + β,   σ²_B biased;
            running_mean ← (1 − m)·running_mean + m·μ_B
            running_var  ← (1 − m)·running_var  + m·σ²_B · n/(n − 1)   (unbiased), m = 0.1
    eval:   y = (x − running_mean) / √(running_var + ε) · γ + β

    ``repeat`` says how many identical copies of ``x`` the statistics stand for (the static-image stem is
    computed once for all T steps): it changes only the unbiased count n, so results equal the T-fold input.
    ``stats_kernels``: the batch statistics come from the compiled CPU kernels (``ops.batch_norm_train``).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    stats_kernels: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, repeat: int = 1) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), self.param_dtype))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), self.param_dtype))
        stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
        xs = x.astype(stat_dtype)
        if train:
            y, mean, var = batch_norm_train(xs, scale.astype(stat_dtype), bias.astype(stat_dtype), self.epsilon,
                                             self.stats_kernels)
            if not self.is_initializing():
                n = repeat * (x.size // c)
                m = self.momentum
                ra_mean.value = ((1 - m) * ra_mean.value + m * mean).astype(self.param_dtype)
                ra_var.value = ((1 - m) * ra_var.value + m * var * (n / max(n - 1, 1))).astype(
                    self.param_dtype)
            return y.astype(self.dtype or x.dtype)
        mean, var = ra_mean.value.astype(stat_dtype), ra_var.value.astype(stat_dtype)
        y = (xs - mean) * jax.lax.rsqrt(var + self.epsilon) * scale.astype(stat_dtype) + bias.astype(
            stat_dtype)
        return y.astype(self.dtype or x.dtype)


class ConvBN(nn.Module):
    """BN(Conv(x)): a bias-free k×k convolution (explicit padding, optional groups) and a BatchNorm,
    both with time folded into the batch. Params: ``kernel`` [k, k, Cin/groups, Cout], ``bn/{scale,bias}``.

    ``spikes``: x is a spike tensor (0/1), which the convolution may read as bytes. ``conv_impl``: the model's
    lowering ("xla", "slices" or "events"; ``ops.lowering``), which decides this convolution's and statistics'
    computation."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    spikes: bool = False
    conv_impl: str = "xla"
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, repeat: int = 1) -> jax.Array:
        cin = x.shape[-1]
        k = self.kernel_size
        kernel = self.param("kernel", trunc_normal_init(0.02), (k, k, cin // self.groups, self.features),
                            self.param_dtype)
        dtype = self.dtype or x.dtype
        y = conv2d(x.astype(dtype), kernel.astype(dtype), self.stride, self.padding, self.groups,
                   conv_lowering(self.conv_impl, self.spikes), binary=self.spikes)
        return BatchNorm(dtype=dtype, param_dtype=self.param_dtype, stats_kernels=uses_stats_kernels(
            self.conv_impl), name="bn")(y, train, repeat)
