"""The model's layers: BatchNorm with PyTorch's semantics, ConvBN, max-pooling, and the spiking neuron layer.

Everything here acts on arrays whose last three axes are [H, W, C] (NHWC); any leading axes (e.g. [T, B]) are
folded into one batch axis for the convolution and are all reduced over by BatchNorm, so statistics are taken
over T·B·H·W, as the official code's ``seq_to_ann_forward`` does (docs/model.md). How a convolution or a
statistic is computed (the lowering) is a field, chosen when the model is built; see ``sresformer_jax.ops``.
"""
from __future__ import annotations

import functools
import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from .neurons import MEMBRANES, SPIKE_COUNTS, SPIKES, Rebuild, lif, membranes, plif
from .ops import batch_norm_train, conv2d, conv_lowering, normalize, uses_stats_kernels
from .ops.collectives import device_count, from_first_device
from .ops.conv import max_pool  # noqa: F401  (a layer of the model; pure lax, shared with the deploy form)
from .ops.grads import together

Dtype = Any


def trunc_normal_init(std: float = 0.02, bound: float = 2.0):
    """PyTorch ``trunc_normal_(std=std)``: N(0, std²) truncated at ±``bound`` (absolute, not in σ)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.truncated_normal(key, -bound / std, bound / std, shape, dtype) * std

    return init


class BatchNorm(nn.Module):
    """BatchNorm with PyTorch semantics over every axis but the last (channels).

    train:  y = (x − μ_B) / √(σ²_B + ε) · γ + β,   σ²_B biased;
            running_mean ← (1 − m)·running_mean + m·μ_B
            running_var  ← (1 − m)·running_var  + m·σ²_B · n/(n − 1)   (unbiased), m = 0.1
    eval:   y = (x − running_mean) / √(running_var + ε) · γ + β

    ``repeat`` says how many identical copies of ``x`` the statistics stand for (the static-image stem is
    computed once for all T steps): it changes only the unbiased count n, so results equal the T-fold input.
    ``stats_kernels``: the batch statistics come from the compiled CPU kernels (``ops.batch_norm_train``).
    ``group_size`` (train): statistics over groups of that many images (the batch axis is the one before
    [H, W, C]), each group normalised with its own, as data-parallel training without synchronised BatchNorm
    computes them; the running statistics follow group 0 (the first images of the batch). None: the batch.
    ``axis_name`` (inside ``jax.shard_map`` over a data axis): ``x`` is this device's shard, and the statistics are
    the whole batch's (or, with groups, each group's within the device, group 0 being device 0's first).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    stats_kernels: bool = False
    group_size: int | None = None
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, repeat: int = 1, rebuild: bool = False):
        """y [..., C]; with ``rebuild``, (y, how to rebuild y from what the backward keeps anyway: a
        ``neurons.Rebuild``, None in evaluation), for a neuron that reads y directly."""
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), self.param_dtype))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), self.param_dtype))
        stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
        dtype = self.dtype or x.dtype
        if not train:
            mean, var = ra_mean.value.astype(stat_dtype), ra_var.value.astype(stat_dtype)
            y = ((x.astype(stat_dtype) - mean) * jax.lax.rsqrt(var + self.epsilon) * scale.astype(stat_dtype)
                 + bias.astype(stat_dtype)).astype(dtype)
            return (y, None) if rebuild else y
        # x as it comes (bf16 under bf16 compute, as autocast); statistics in float32
        scale, bias = scale.astype(stat_dtype), bias.astype(stat_dtype)
        groups, group_axis, xg = 1, None, x
        if self.group_size is not None:
            group_axis = x.ndim - 4                                    # the batch axis of [..., B, H, W, C]
            if group_axis < 0:
                raise ValueError(f"BatchNorm groups of images need an [..., B, H, W, C] input, got shape "
                                 f"{tuple(x.shape)}")
            groups = image_groups(x.shape[group_axis], self.group_size)
            xg = x.reshape(x.shape[:group_axis] + (groups, self.group_size) + x.shape[group_axis + 1:])
        xg = checkpoint_name(xg, "bn_input")                           # kept by the backward (one array)
        y, mean, var = batch_norm_train(xg, scale, bias, self.epsilon, self.stats_kernels, group_axis,
                                        self.axis_name)
        y = y.reshape(x.shape).astype(dtype)
        if not self.is_initializing():
            n = repeat * (x.size // (c * groups))                      # elements per statistic
            m = self.momentum
            if group_axis is None:
                mean0, var0, n = mean, var, n * device_count(self.axis_name)
            else:                                                      # group 0's are kept (device 0's)
                mean0, var0 = from_first_device((mean[0], var[0]), self.axis_name)
            ra_mean.value = ((1 - m) * ra_mean.value + m * mean0).astype(self.param_dtype)
            ra_var.value = ((1 - m) * ra_var.value + m * var0 * (n / max(n - 1, 1))).astype(self.param_dtype)
        if not rebuild:
            return y
        fn = functools.partial(_rebuild_bn, eps=self.epsilon, group_axis=group_axis, shape=x.shape, dtype=dtype)
        return y, Rebuild(fn, (xg, mean, var, scale, bias))


def _rebuild_bn(x, mean, var, scale, bias, *, eps, group_axis, shape, dtype):
    """BatchNorm's training output, as ``BatchNorm`` computes it, from its input and batch statistics."""
    return normalize(x, mean, var, scale, bias, eps, group_axis).reshape(shape).astype(dtype)


def image_groups(batch: int, group_size: int) -> int:
    """How many groups of ``group_size`` images a batch of ``batch`` makes; raises if they do not divide it."""
    if group_size < 1 or batch % group_size:
        raise ValueError(f"bn_group_size={group_size} does not divide the batch of {batch} images; choose a "
                         f"divisor of the global batch size (e.g. the per-device batch)")
    return batch // group_size


class ConvBN(nn.Module):
    """BN(Conv(x)): a bias-free k×k convolution (explicit padding, optional groups) and a BatchNorm,
    both with time folded into the batch. Params: ``kernel`` [k, k, Cin/groups, Cout], ``bn/{scale,bias}``.

    ``spikes``: x is a spike tensor (0/1), which the convolution may read as bytes. ``conv_impl``: the model's
    lowering ("xla", "slices" or "events"; ``ops.lowering``), which decides this convolution's and statistics'
    computation. ``bn_group_size``, ``axis_name``: BatchNorm's ``group_size`` and ``axis_name``.
    ``early_weight_grads``: the backward computes the kernel's gradient with the input's (``ops.grads``)."""

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    spikes: bool = False
    conv_impl: str = "xla"
    bn_group_size: int | None = None
    axis_name: str | None = None
    early_weight_grads: bool = False
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, repeat: int = 1, rebuild: bool = False):
        """BN(Conv(x)); with ``rebuild``, also how a neuron reading it may rebuild it (``BatchNorm``)."""
        cin = x.shape[-1]
        k = self.kernel_size
        kernel = self.param("kernel", trunc_normal_init(0.02), (k, k, cin // self.groups, self.features),
                            self.param_dtype)
        dtype = self.dtype or x.dtype
        if self.early_weight_grads:
            x, kernel = together((x, kernel))
        kernel = checkpoint_name(kernel.astype(dtype), "param_copy")      # the compute-dtype copy (bf16: kept)
        y = conv2d(x.astype(dtype), kernel, self.stride, self.padding, self.groups,
                   conv_lowering(self.conv_impl, self.spikes), binary=self.spikes).astype(dtype)
        return BatchNorm(dtype=dtype, param_dtype=self.param_dtype, stats_kernels=uses_stats_kernels(
            self.conv_impl), group_size=self.bn_group_size, axis_name=self.axis_name, name="bn")(
            y, train, repeat, rebuild)


@dataclasses.dataclass(frozen=True)
class NeuronSpec:
    """The spiking neuron of every layer of a model: ``kind`` "LIF" or "PLIF", the time constant ``tau`` (PLIF: its
    initial value, w = −ln(τ − 1)), the threshold ``v_threshold``, and the surrogate derivative of the spike
    (``surrogate`` "atan" or "sigmoid", ``alpha``: its sharpness, None for the default), and the reset: hard, to
    ``v_reset`` (None: soft, V = H − V_th·S), detached from the gradient unless ``detach_reset`` is False. The
    defaults are the official model's (a hard reset to 0, detached).

    ``fn``: a neuron of your own instead, a pure function with ``lif``'s signature,
    ``fn(x_seq, tau, v_threshold, surrogate, alpha) -> spikes [T, ...]`` (give it a ``jax.custom_vjp`` for its
    surrogate gradient); spike counts, firing rates and SOPs see its spikes as any other."""
    kind: str = "LIF"
    tau: float = 2.0
    v_threshold: float = 1.0
    surrogate: str = "atan"
    alpha: float | None = None
    v_reset: float | None = 0.0
    detach_reset: bool = True
    fn: Callable | None = None

    @classmethod
    def of(cls, neuron: "str | NeuronSpec") -> "NeuronSpec":
        return neuron if isinstance(neuron, NeuronSpec) else cls(neuron)

    def fields(self) -> dict:
        """The ``Neuron`` layer's fields."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class Neuron(nn.Module):
    """A spiking neuron layer over time-major input [T, ...]: ``LIF`` or ``PLIF`` (param ``w``, init
    −ln(τ₀ − 1) = 0 for τ₀ = 2)."""

    kind: str = "LIF"
    tau: float = 2.0
    v_threshold: float = 1.0
    surrogate: str = "atan"
    alpha: float | None = None
    unroll: int | bool = 1
    param_dtype: jnp.dtype = jnp.float32
    count_map: bool = True  # with spike counting on: also sow the per-pixel count map of [T, B, H, W, C] spikes
    v_reset: float | None = 0.0  # hard reset value; None: soft reset
    detach_reset: bool = True
    fn: Callable | None = None   # a neuron of one's own with lif's signature (NeuronSpec.fn)
    early_weight_grads: bool = False  # PLIF: the backward computes w's gradient with the input's (ops.grads)

    def setup(self):
        if self.fn is None and self.kind not in ("LIF", "PLIF"):
            raise ValueError(f"unknown neuron kind {self.kind!r}; choose 'LIF' or 'PLIF'")
        if self.fn is None and self.kind == "PLIF":
            w0 = -math.log(self.tau - 1.0)
            self.w = self.param("w", lambda _: jnp.asarray(w0, self.param_dtype))

    def firing(self) -> Callable[..., jax.Array]:
        """The layer's neuron as a pure function ``f(x_seq, rebuild=None) -> spikes [T, ...]`` (its parameter, if
        any, bound): for use inside a JAX transformation such as ``lax.scan``, where a Flax layer cannot be
        called. It records nothing (``count``)."""
        if self.fn is not None:
            return lambda x_seq, rebuild=None: self.fn(x_seq, self.tau, self.v_threshold, self.surrogate,
                                                        self.alpha)
        reset = {"v_reset": self.v_reset, "detach_reset": self.detach_reset}
        if self.kind == "LIF":
            return lambda x_seq, rebuild=None: lif(x_seq, self.tau, self.v_threshold, self.surrogate,
                                                   self.alpha, self.unroll, rebuild, **reset)
        w, early = self.w, self.early_weight_grads

        def fire(x_seq, rebuild=None):
            x_seq, w_ = together((x_seq, w)) if early else (x_seq, w)
            return plif(x_seq, w_, self.v_threshold, self.surrogate, self.alpha, self.unroll, rebuild, **reset)
        return fire

    def __call__(self, x_seq: jax.Array, rebuild: Rebuild | None = None) -> jax.Array:
        """Spikes of ``x_seq``; ``rebuild`` (optional): how ``x_seq`` is computed from arrays kept anyway, so that
        the backward recomputes the membranes instead of keeping them (``neurons.Rebuild``)."""
        s = self.firing()(x_seq, rebuild)
        s = checkpoint_name(s, "spikes")      # names what the backward keeps (memory report, remat policies)
        if self.is_mutable_collection(SPIKES) and not self.is_initializing():      # probes: only when asked
            self.sow(SPIKES, "spikes", s)
        if self.is_mutable_collection(MEMBRANES) and not self.is_initializing() and self.fn is None:
            k = jax.nn.sigmoid(self.w).astype(x_seq.dtype) if self.kind == "PLIF" else None
            self.sow(MEMBRANES, "membranes", membranes(x_seq, self.v_threshold, tau=self.tau, k=k,
                                                            v_reset=self.v_reset))
        if self.is_mutable_collection(SPIKE_COUNTS) and not self.is_initializing():
            si = jax.lax.stop_gradient(s).astype(jnp.int32)
            self.count(jnp.sum(si), s.size, jnp.sum(si, axis=(0, 1, 4)) if self.count_map and s.ndim == 5 else None)
        return s

    def count(self, total: jax.Array, numel: int, count_map: jax.Array | None = None) -> None:
        """Records spike counts (only when the caller asks for the ``spike_counts`` collection): the exact integer
        ``total`` of ``numel`` spikes, and the per-pixel ``count_map`` [H, W] of [T, B, H, W, C] spikes."""
        if not self.is_mutable_collection(SPIKE_COUNTS) or self.is_initializing():
            return
        self.sow(SPIKE_COUNTS, "total", total)
        self.sow(SPIKE_COUNTS, "numel", jnp.asarray(numel, jnp.int32) if numel < 2**31 else
                 jnp.asarray(numel, jnp.float32))
        if count_map is not None:
            self.sow(SPIKE_COUNTS, "map", count_map)  # [H, W]
