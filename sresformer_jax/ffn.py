"""Group-wise spiking feed-forward network (GWFFN; docs/model.md).

    FFL_i(X) = BN(Conv_1×1(SN(X)))                  (up: C → R·C, down: R·C → C)
    GWL(X)   = BN(GWConv_3×3(SN(X))) + X            (groups of G channels, inner skip)
    GWFFN(X) = FFL_2(GWL(FFL_1(X))) + X
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from .layers import ConvBN, Dtype, Neuron, NeuronSpec
from .ops import lean_backward


class GWFFN(nn.Module):
    """x [T, B, H, W, C] (real) → same shape; expansion ``ratio`` R = 4, ``group_size`` G = 64."""

    dim: int
    ratio: int = 4
    group_size: int = 64
    neuron: str | NeuronSpec = "LIF"
    conv_impl: str = "xla"
    bn_group_size: int | None = None   # train: BatchNorm statistics per group of images
    axis_name: str | None = None       # inside shard_map: this device's shard; statistics over the whole batch
    early_weight_grads: bool = False   # the backward computes parameter gradients with input gradients (ops.grads)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        inner = self.dim * self.ratio
        if inner % self.group_size:
            raise ValueError(f"GWFFN group size {self.group_size} does not divide {inner} = "
                             f"{self.ratio}×{self.dim} hidden channels")
        kw = dict(spikes=True, conv_impl=self.conv_impl, bn_group_size=self.bn_group_size,
                  early_weight_grads=self.early_weight_grads,
                  axis_name=self.axis_name, dtype=self.dtype, param_dtype=self.param_dtype)  # convs of spikes
        spec = NeuronSpec.of(self.neuron).fields()
        neuron = lambda name: Neuron(**spec, param_dtype=self.param_dtype, name=name,  # noqa: E731
                                     early_weight_grads=self.early_weight_grads)

        # The two inner neurons read BatchNorm outputs: on XLA's lowering they rebuild their inputs from the
        # convolutions' outputs (which BatchNorm's backward keeps) instead of keeping membranes (neurons.Rebuild).
        lean = lean_backward(self.conv_impl)
        u, u_src = ConvBN(inner, 1, name="up", **kw)(neuron("up_lif")(x), train, rebuild=True)   # [T,B,H,W,RC]
        u_src = u_src if lean else None
        g, g_src = ConvBN(inner, 3, padding=1, groups=inner // self.group_size, name="conv", **kw)(
            neuron("conv_lif")(u, u_src), train, rebuild=True)
        src = g_src.plus(u_src) if u_src is not None else None
        u = g + u                                                                       # inner skip
        return ConvBN(self.dim, 1, name="down", **kw)(neuron("down_lif")(u, src), train) + x
