"""Dual Spike Self-Attention (DSSA; docs/model.md, "DSSA").

Per head i, with spikes S = SN(X) (queries, no projection) and [f1 | f2] = BN(Conv_{p×p/p}(S)):

    AttnMap = SN( f1(S)ᵀ · S · c1 ),          c1 = 1 / √(r_x · d)
    DSSA    = SN( f2(S) · AttnMap · c2 ),     c2 = 1 / √(r_A · N′)
    out     = BN(Conv_1×1(DSSA)) + X

d = C/h is the head dim, N′ = (H/p)(W/p) the number of key/value tokens (taken from the actual input,
so a model runs at any resolution the patch size divides), r_x and r_A the firing rates of S and of
the attention map: per-head EMAs (momentum 0.999, initialised from the first training batch, updated
before use) kept in the ``firing_rates`` collection and frozen at evaluation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from .layers import ConvBN, Dtype, Neuron, NeuronSpec, image_groups
from .neurons import MEMBRANES, SPIKE_COUNTS, SPIKES
from .ops import dot, lean_backward
from .ops.chunks import attention_in_chunks, rows_per_chunk
from .ops.collectives import from_first_device, mean_over_devices

FIRING_RATES = "firing_rates"


class FiringRatesNotSetError(ValueError):
    """Evaluation was asked of a DSSA whose firing-rate statistics were never set."""


def _firing_rate(var, batch_rate: jax.Array, train: bool, momentum: float, initializing: bool,
                 groups_axis: str | None = None):
    """Per-head rate used for the scale, [groups, h]: the EMA updated with each group's batch rate
    ``batch_rate`` [groups, h] (train) or the stored one (eval, [1, h]).

    As the official code: a buffer that is still all zero is first set to the batch rate, then
    r ← m·r + (1 − m)·r_batch (so the first batch leaves r = r_batch). Each group of images (``bn_group_size``)
    updates the stored EMA on its own, as each device of a data-parallel run does; group 0's result is kept
    (with the groups spread over the devices of ``groups_axis``, device 0's).
    """
    if not train:
        return var.value.astype(batch_rate.dtype)[None]
    prev = var.value.astype(batch_rate.dtype)
    prev = jnp.where(jnp.all(prev == 0), batch_rate, prev)
    rate = prev * momentum + batch_rate * (1 - momentum)
    if not initializing:
        var.value = from_first_device(rate[0], groups_axis).astype(var.value.dtype)
    return rate


def _scale(rate: jax.Array, n: int) -> jax.Array:
    """c = 1/√(r·n), and 0 where r = 0: a head with no spikes gives a zero product, which stays zero (the
    official code computes 0·∞ = NaN there, e.g. for a batch of constant images). A NaN rate stays NaN."""
    silent = rate == 0
    return jnp.where(silent, 0, 1.0 / jnp.sqrt(jnp.where(silent, 1, rate) * n))


def _per_image(scale: jax.Array, batch: int) -> jax.Array:
    """A per-group, per-head scale [groups, h] → [1, B, h, 1, 1], against [T, B, h, ·, ·] products."""
    return jnp.repeat(scale, batch // scale.shape[0], axis=0)[None, :, :, None, None]


def check_firing_rates(value: jax.Array, path: str) -> None:
    """Raises if concrete firing-rate statistics contain a zero: also under ``jax.jit`` when the variables are
    closed over (concrete while tracing). Traced ones (variables passed as an argument) cannot be checked while
    tracing: ``SpikingResformer`` then returns NaN logits for an uncalibrated model instead of meaningless ones."""
    if isinstance(value, jax.core.Tracer):
        return
    if not np.all(np.asarray(value) != 0):
        raise FiringRatesNotSetError(
            f"{path}: DSSA firing-rate statistics are not set (zero for some head), so evaluation would "
            "divide by zero and return NaN. Calibrate them first with "
            "`variables = sresformer_jax.model.calibrate(model, variables, x)` (one training-mode forward, "
            "no weight update), train at least one step, or load a trained/converted checkpoint.")


class DSSA(nn.Module):
    """Multi-head DSSA block on the real-valued residual stream x [T, B, H, W, C] → same shape."""

    dim: int
    num_heads: int
    patch_size: int
    neuron: str | NeuronSpec = "LIF"
    momentum: float = 0.999
    conv_impl: str = "xla"
    attention_chunk: int | None = None  # map rows (key/value tokens) computed at a time (ops.chunks); None: all
    bn_group_size: int | None = None   # train: BatchNorm statistics and firing rates per group of images
    axis_name: str | None = None       # inside shard_map: this device's shard; statistics over the whole batch
    early_weight_grads: bool = False   # the backward computes parameter gradients with input gradients (ops.grads)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        T, B, H, W, C = x.shape
        h, p = self.num_heads, self.patch_size
        d = C // h
        if C != self.dim or C % h:
            raise ValueError(f"DSSA expects {self.dim} channels divisible by {h} heads, got {C}")
        if H % p or W % p:
            raise ValueError(f"DSSA patch size {p} does not divide the feature map {H}×{W}; choose an "
                             "input size that every stage's patch size divides")
        spec = NeuronSpec.of(self.neuron).fields()
        neuron = lambda name, **kw: Neuron(**spec, param_dtype=self.param_dtype, name=name,  # noqa: E731
                                           early_weight_grads=self.early_weight_grads, **kw)
        init = self.is_initializing()

        s = neuron("lif_in")(x)                                               # [T, B, H, W, C]
        kw = dict(spikes=True, conv_impl=self.conv_impl, bn_group_size=self.bn_group_size,
                  early_weight_grads=self.early_weight_grads,
                  axis_name=self.axis_name, dtype=self.dtype, param_dtype=self.param_dtype)
        y = ConvBN(2 * C, p, stride=p, name="kv", **kw)(s, train)            # [T, B, H/p, W/p, 2C]
        n_kv = y.shape[2] * y.shape[3]                                        # N'
        y = jnp.moveaxis(y.reshape(T, B, n_kv, h, 2 * d), 3, 2)               # [T, B, h, N', 2d]
        y1, y2 = y[..., :d], y[..., d:]                                       # [T, B, h, N', d] each
        q = jnp.moveaxis(s.reshape(T, B, H * W, h, d), 3, 2)                  # [T, B, h, HW, d]
        # (heads-major batch dims: every product below is a canonical batched matmul, the form XLA:CPU's
        #  bf16 × bf16 → f32 path accepts, see ops.dot)

        r_x = self.variable(FIRING_RATES, "firing_rate_x", jnp.zeros, (h,), self.param_dtype)
        r_attn = self.variable(FIRING_RATES, "firing_rate_attn", jnp.zeros, (h,), self.param_dtype)
        if not train and not init:
            check_firing_rates(r_x.value, f"{self.name}/firing_rate_x")
            check_firing_rates(r_attn.value, f"{self.name}/firing_rate_attn")

        stat = jnp.promote_types(y.dtype, jnp.float32)
        grouped = train and self.bn_group_size is not None
        groups = image_groups(B, self.bn_group_size) if grouped else 1
        groups_axis = self.axis_name if grouped else None                     # groups on every device

        def whole_batch(rate):                                                # [groups, h] of this device's
            return rate if grouped or not train else mean_over_devices(rate, self.axis_name)

        def batch_rate(v):                                                    # [T, B, h, ·, ·] → [groups, h]
            v = jax.lax.stop_gradient(v).astype(stat)
            return whole_batch(jnp.mean(v.reshape((T, groups, B // groups) + v.shape[2:]), (0, 2, 4, 5)))

        rate_x = _firing_rate(r_x, batch_rate(q), train, self.momentum, init, groups_axis)  # [groups, h]
        c1 = _scale(rate_x, d)
        lif_attn = neuron("lif_attn", count_map=False)                        # spiking attention map
        rows = rows_per_chunk(n_kv, self.attention_chunk)
        if rows is None or self.is_mutable_collection(SPIKES) or self.is_mutable_collection(MEMBRANES):
            bits = lean_backward(self.conv_impl)        # XLA's lowering: the backward keeps the spikes as bits
            y1, q = checkpoint_name(y1, "attention_operand"), q if bits else checkpoint_name(q, "attention_operand")
            attn = dot("tbhnd,tbhmd->tbhnm", y1, q, binary=1 if bits else None)  # [T, B, h, N', HW]
            attn = (attn * _per_image(c1, B)).astype(y.dtype)
            a = lif_attn(attn)
            rate_a = batch_rate(a)
            y2, a = checkpoint_name(y2, "attention_operand"), a if bits else checkpoint_name(a, "attention_operand")
            out = dot("tbhnm,tbhnd->tbhmd", a, y2, binary=0 if bits else None)   # [T, B, h, HW, d]
        else:                                           # ``rows`` map rows at a time, recomputed by the backward
            counting = self.is_mutable_collection(SPIKE_COUNTS) and not init
            out, spikes_a, total = attention_in_chunks(y1, q, y2, _per_image(c1, B), lif_attn.firing(), rows,
                                                       groups, counting)
            rate_a = whole_batch(spikes_a / float(T * (B // groups) * n_kv * H * W))
            if counting:
                lif_attn.count(total, T * B * h * n_kv * H * W)
        rate_a = _firing_rate(r_attn, rate_a, train, self.momentum, init, groups_axis)  # [groups, h]
        c2 = _scale(rate_a, n_kv)
        out = (out * _per_image(c2, B)).astype(y.dtype)
        out = jnp.moveaxis(out, 2, 3).reshape(T, B, H, W, C)                  # head-major channels

        o = neuron("lif_out")(out)
        o = ConvBN(C, 1, name="proj", **kw)(o, train)
        return o + x
