"""SpikingResformer: stem → 3 stages of [DSSA → GWFFN] with spiking downsamples → head (docs/model.md).

    x ─ stem ─ stage1 ─ ↓ ─ stage2 ─ ↓ ─ stage3 ─ avg-pool ─ classifier ─ logits [T, B, classes]

Inside, activations are time-major [T, B, H, W, C] and the residual stream is real-valued; every block
starts with a spiking neuron. Static images are directly encoded (repeated over T); since the stem has
no neuron, it is computed once and broadcast over T (exact, BatchNorm's unbiased count included).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from . import architecture, trees
from .attention import DSSA, FIRING_RATES, FiringRatesNotSetError, check_firing_rates
from .ffn import GWFFN
from .layers import ConvBN, Dtype, Neuron, NeuronSpec, max_pool, trunc_normal_init
from .neurons import SURROGATES
from .ops import LOWERINGS, resolve_conv_impl
from .ops.chunks import rows_per_chunk

BATCH_STATS = "batch_stats"
STATE_COLLECTIONS = (BATCH_STATS, FIRING_RATES)

# The official constructors (models/spikingresformer.py); img_size / T / num_classes are the defaults
# of the official code and are overridden per dataset (e.g. spikingresformer_cifar(num_classes=100, img_size=32)).
_IMAGENET = dict(blocks=(1, 2, 3), patch_sizes=(4, 2, 1), img_size=224, T=4, in_channels=3,
                 num_classes=1000, prologue="default", group_size=64, activation="LIF", dvs=False)
VARIANTS: dict[str, dict[str, Any]] = {
    "spikingresformer_ti": dict(_IMAGENET, planes=(64, 192, 384), num_heads=(1, 3, 6)),
    "spikingresformer_s": dict(_IMAGENET, planes=(64, 256, 512), num_heads=(1, 4, 8)),
    "spikingresformer_m": dict(_IMAGENET, planes=(64, 384, 768), num_heads=(1, 6, 12)),
    "spikingresformer_l": dict(_IMAGENET, planes=(128, 512, 1024), num_heads=(2, 8, 16)),
    "spikingresformer_cifar": dict(_IMAGENET, planes=(64, 192, 384), num_heads=(1, 3, 6),
                                   prologue="conv3x3"),
    "spikingresformer_dvsg": dict(_IMAGENET, planes=(32, 96, 192), num_heads=(1, 3, 6),
                                  prologue="conv3x3", group_size=32, activation="PLIF",
                                  dvs=True),
}
CONFIG_KEYS = ("blocks", "planes", "num_heads", "patch_sizes", "img_size", "T", "in_channels",
               "num_classes", "prologue", "group_size", "activation", "dvs", "tau", "v_threshold", "surrogate",
               "surrogate_alpha", "v_reset", "detach_reset")
# the neuron's settings (layers.NeuronSpec), the official values; every variant has them
NEURON_DEFAULTS = dict(tau=2.0, v_threshold=1.0, surrogate="atan", surrogate_alpha=None, v_reset=0.0,
                       detach_reset=True)
# model config keys that are not the architecture (CONFIG_KEYS, stored with every checkpoint) but decide how a
# training program computes: its lowering, BatchNorm's statistics groups, and DSSA's map rows at a time
TRAINING_MODEL_KEYS = ("conv_impl", "bn_group_size", "attention_chunk")
# a config's precision → the compute dtype (parameters stay float32)
PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class Downsample(nn.Module):
    """LIF → Conv3×3 (stride 2, pad 1) → BN; no shortcut."""

    features: int
    neuron: str | NeuronSpec = "LIF"
    conv_impl: str = "xla"
    bn_group_size: int | None = None
    axis_name: str | None = None
    early_weight_grads: bool = False   # the backward computes parameter gradients with input gradients (ops.grads)
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s = Neuron(**NeuronSpec.of(self.neuron).fields(), param_dtype=self.param_dtype, name="lif",
                   early_weight_grads=self.early_weight_grads)(x)
        return ConvBN(self.features, 3, stride=2, padding=1, spikes=True, conv_impl=self.conv_impl,
                      bn_group_size=self.bn_group_size, axis_name=self.axis_name, dtype=self.dtype,
                      param_dtype=self.param_dtype, early_weight_grads=self.early_weight_grads, name="conv")(s, train)


# What the stem and each layer of a SpikingResformer block (the stage's downsample before its first block, the DSSA,
# the GWFFN: one remat region each) keep for the backward pass (``remat``); the rest is recomputed there. Values are
# named where they are made (``jax.ad_checkpoint.checkpoint_name``): "spike_bytes" (the spikes a convolution keeps, as
# bits), "membrane", "bn_input" (a convolution's output), "attention_operand", "block_input" (benchmarks/memory.py
# measures each).
REMAT_POLICIES = {
    "none": None,                                                        # no remat: autodiff keeps what it needs
    "block": jax.checkpoint_policies.nothing_saveable,                   # only each layer's input: +1 forward
    # + the convolutions' outputs (and BatchNorm's μ, 1/σ): the backward recomputes no convolution
    "convs": jax.checkpoint_policies.save_only_these_names("bn_input", "bn_stats"),
}


def remat_policy(remat: str | bool) -> str:
    """The name of a remat policy (``REMAT_POLICIES``); ``True``/``False`` mean "block"/"none"."""
    if isinstance(remat, bool):
        return "block" if remat else "none"
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)} (or a bool), got {remat!r}")
    return remat


class SpikingResformer(nn.Module):
    """The SpikingResformer network. Fields are the official constructor's arguments.

    ``__call__(x, train)``: ``x`` is NHWC ``[B, H, W, C]`` (static image, direct encoding over ``T``) or,
    when ``dvs`` is set, event frames ``[B, T, H, W, C]``; returns per-step logits ``[T, B, classes]``.
    Training mode needs ``mutable=["batch_stats", "firing_rates"]``.

    ``conv_impl`` is how its convolutions and BatchNorm statistics are computed (``ops.lowering``): "xla", "slices"
    or "events", the lowering its programs use. The factories (``create_model``, ``build_model``) resolve "auto"
    for the platform before they build the module, which does no I/O or compilation itself. Two models with
    different lowerings compile to different programs.

    ``bn_group_size`` (training only): BatchNorm's batch statistics and DSSA's firing rates are computed per
    group of that many images of the (global) batch, whatever the device count, as the official data-parallel
    runs without synchronised BatchNorm computed them per GPU; the running statistics and firing-rate EMAs kept
    are group 0's (the first images), as DDP keeps rank 0's. None: over the whole batch.

    ``axis_name``: the model runs inside ``jax.shard_map`` over that (data) axis, on this device's shard of the
    batch; BatchNorm's and DSSA's statistics are combined over the axis (channel-sized collectives), so they are
    the whole batch's, and groups of ``bn_group_size`` stay within a device. None: the batch is all here. The
    training steps set it (``training.steps``); it changes no parameter or value.

    ``attention_chunk``: DSSA computes its spiking attention map [T, B, h, N', HW] that many rows (of the N'
    key/value tokens; the largest divisor of N' not above it) at a time, and its backward recomputes each chunk
    instead of keeping the map (``ops.chunks``): the memory of one chunk, for a second computation of the map. For
    high resolutions, where the map is the largest array of the model. None: the whole map at once. The same values
    up to the order of the sums, and no parameter changes.
    """

    blocks: Sequence[int] = (1, 2, 3)
    planes: Sequence[int] = (64, 192, 384)
    num_heads: Sequence[int] = (1, 3, 6)
    patch_sizes: Sequence[int] = (4, 2, 1)
    img_size: int = 224
    T: int = 4
    in_channels: int = 3
    num_classes: int = 1000
    prologue: str = "default"          # "default": 7×7/2 conv + BN + 3×3/2 max-pool; "conv3x3": 3×3/1 conv + BN
    group_size: int = 64
    activation: str = "LIF"            # "LIF" or "PLIF"
    dvs: bool = False                  # input carries its own time axis [B, T, H, W, C]
    tau: float = 2.0                   # the neuron (layers.NeuronSpec): time constant (PLIF: initial), threshold,
    v_threshold: float = 1.0           #   surrogate derivative and its α (None: the surrogate's default)
    surrogate: str = "atan"
    surrogate_alpha: float | None = None
    v_reset: float | None = 0.0        #   the reset: hard to v_reset (None: soft, V = H − V_th·S), detached or not
    detach_reset: bool = True
    neuron_fn: Callable | None = None  # a neuron of one's own (layers.NeuronSpec.fn); not stored in checkpoints
    dtype: Dtype | None = None         # computation dtype (None: the input's)
    param_dtype: Dtype = jnp.float32
    remat: str | bool = "none"         # REMAT_POLICIES: what the stem and each layer keep for the backward pass
    conv_impl: str = "xla"             # "xla" | "slices" | "events" (the factories resolve "auto")
    bn_group_size: int | None = None   # images per BatchNorm statistics group in training (None: the batch)
    axis_name: str | None = None       # the shard_map data axis the model runs under (None: none)
    attention_chunk: int | None = None  # DSSA: attention-map rows computed at a time (None: the whole map)

    def __post_init__(self):
        object.__setattr__(self, "remat", remat_policy(self.remat))
        if self.bn_group_size is not None and (isinstance(self.bn_group_size, bool) or not isinstance(
                self.bn_group_size, int) or self.bn_group_size < 1):
            raise ValueError(f"bn_group_size must be a positive int (images per BatchNorm group) or None, got "
                             f"{self.bn_group_size!r}")
        if self.conv_impl not in LOWERINGS:
            hint = (" ('auto' is resolved for the platform by create_model() and build_model(), or by "
                    "sresformer_jax.ops.resolve_conv_impl)") if self.conv_impl == "auto" else ""
            raise ValueError(f"conv_impl must be one of {LOWERINGS}, got {self.conv_impl!r}{hint}")
        super().__post_init__()

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, conv_impl: str = "auto", platform: str | None = None,
                    **kwargs) -> "SpikingResformer":
        """Builds the model from a config dict with the golden files' keys (``CONFIG_KEYS``); ``conv_impl``
        ("auto" is resolved here for ``platform``, default this process's backend, which may build the CPU
        kernels) and ``kwargs`` are the other fields."""
        unknown = sorted(set(cfg) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; expected a subset of {list(CONFIG_KEYS)}")
        fields = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in cfg.items()}
        conv_impl = resolve_conv_impl(conv_impl, kwargs.get("dtype"), platform)
        model = cls(**fields, conv_impl=conv_impl, **kwargs)
        model.validate()
        return model

    def neuron_spec(self) -> NeuronSpec:
        """The neuron of every spiking layer (``activation``, ``tau``, ``v_threshold``, ``surrogate``,
        ``surrogate_alpha``, ``v_reset``, ``detach_reset``, ``neuron_fn``)."""
        return NeuronSpec(self.activation, float(self.tau), float(self.v_threshold), self.surrogate,
                          None if self.surrogate_alpha is None else float(self.surrogate_alpha),
                          None if self.v_reset is None else float(self.v_reset), bool(self.detach_reset),
                          self.neuron_fn)

    def config(self) -> dict[str, Any]:
        """The model's config dict (the golden files' keys), e.g. for checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in ((k, getattr(self, k)) for k in CONFIG_KEYS)}

    def validate(self) -> None:
        """Checks the architecture fields; raises ValueError naming the field."""
        n = len(self.planes)
        for f in ("blocks", "num_heads", "patch_sizes"):
            if len(getattr(self, f)) != n:
                raise ValueError(f"{f} has {len(getattr(self, f))} entries but planes has {n}")
        if self.T < 1:
            raise ValueError(f"T must be >= 1, got {self.T}")
        if self.prologue not in ("default", "conv3x3"):
            raise ValueError(f"prologue must be 'default' or 'conv3x3', got {self.prologue!r}")
        if not (isinstance(self.tau, (int, float)) and self.tau > 1):
            raise ValueError(f"tau must be a number > 1 (the membrane time constant), got {self.tau!r}")
        if not (isinstance(self.v_threshold, (int, float)) and self.v_threshold > 0):
            raise ValueError(f"v_threshold must be a positive number, got {self.v_threshold!r}")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}, got {self.surrogate!r}")
        if self.surrogate_alpha is not None and not (isinstance(self.surrogate_alpha, (int, float))
                                                     and self.surrogate_alpha > 0):
            raise ValueError(f"surrogate_alpha must be a positive number or None, got {self.surrogate_alpha!r}")
        if self.v_reset is not None and not isinstance(self.v_reset, (int, float)):
            raise ValueError(f"v_reset must be a number (hard reset) or None (soft reset), got {self.v_reset!r}")
        if not isinstance(self.detach_reset, bool):
            raise ValueError(f"detach_reset must be True or False, got {self.detach_reset!r}")
        if self.activation not in ("LIF", "PLIF"):
            raise ValueError(f"activation must be 'LIF' or 'PLIF', got {self.activation!r}")
        for c, h in zip(self.planes, self.num_heads):
            if h < 1 or c % h:
                raise ValueError(f"num_heads {h} does not divide planes {c}")
            if self.group_size < 1 or (4 * c) % self.group_size:
                raise ValueError(f"group_size {self.group_size} does not divide 4×planes = {4 * c}")
        rows_per_chunk(1, self.attention_chunk)                                # a positive int or None
        self.stage_sizes(self.img_size, what="img_size")

    def stage_sizes(self, img_size: int | tuple[int, int], what: str = "input size") -> list[tuple[int, int]]:
        """Feature-map (H, W) of each stage for an input size; raises if a patch size does not divide it."""
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        if self.prologue == "default":
            for _ in range(2):  # 7×7/2 conv (pad 3), then 3×3/2 max-pool (pad 1): ceil(·/2) each
                h, w = (h + 1) // 2, (w + 1) // 2
        sizes = []
        for i, p in enumerate(self.patch_sizes):
            if i:
                h, w = (h + 1) // 2, (w + 1) // 2
            if h < p or w < p or h % p or w % p:
                raise ValueError(
                    f"{what} {img_size} gives a {h}×{w} feature map in stage {i + 1}, which its patch "
                    f"size {p} does not divide; use an input size such as {self._example_size()}")
            sizes.append((h, w))
        return sizes

    def _example_size(self) -> int:
        m = 4 if self.prologue == "default" else 1
        return m * 2 ** (len(self.patch_sizes) - 1) * max(self.patch_sizes) * 2

    def _region(self, fn):
        """``fn(module, x)`` (the stem, or one layer: a downsample, a DSSA or a GWFFN) as it is, or as a
        ``jax.checkpoint`` region of the remat policy, which keeps its input and what the policy names: the backward
        of one layer then holds only that layer's recomputed values."""
        return fn if self.remat == "none" else nn.remat(fn, policy=REMAT_POLICIES[self.remat])

    def _check_input(self, x: jax.Array) -> None:
        want = "[B, T, H, W, C] event frames" if self.dvs else "[B, H, W, C] images (NHWC)"
        if x.ndim != (5 if self.dvs else 4):
            hint = (" (a 5-D input is event frames: build the model with dvs=True for such data)" if x.ndim == 5
                    else " (a time axis is expected: the model was built with dvs=True)" if self.dvs else "")
            raise ValueError(f"expected input {want}, got shape {tuple(x.shape)}{hint}")
        if self.dvs and x.shape[1] != self.T:
            raise ValueError(f"the model was built for T = {self.T} time steps, and the input [B, T, H, W, C] "
                             f"{tuple(x.shape)} has {x.shape[1]}; build the model with T={x.shape[1]} or give it "
                             f"{self.T} frames")
        if x.shape[-1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels in the last axis (NHWC), got "
                             f"shape {tuple(x.shape)}; transpose NCHW input with x.transpose(0, 2, 3, 1)")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"expected a floating-point input, got {x.dtype}")
        self.stage_sizes(tuple(x.shape[-3:-1]))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self._check_input(x)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        # in remat regions, each parameter gradient is computed with its input's (ops.grads): XLA:TPU's scheduler
        # would otherwise hold the recomputed values of every layer to the end of the backward pass for them
        lowered = dict(kw, conv_impl=self.conv_impl, bn_group_size=self.bn_group_size, axis_name=self.axis_name,
                       early_weight_grads=self.remat != "none")
        neuron = self.neuron_spec()
        dtype = self.dtype or x.dtype
        x = x.astype(dtype)
        first, *rest = architecture.blocks(self)

        def stem(mdl, x):                                                     # image → [B, H', W', D1]
            c = first.convs[0]
            conv = ConvBN(c.cout, c.kernel, stride=c.stride, padding=c.padding, name=c.path, parent=mdl, **lowered)
            if self.dvs:
                x = conv(jnp.swapaxes(x, 0, 1), train)                       # [T, B, H, W, D1]
            else:
                x = conv(x, train, repeat=self.T)                             # [B, H, W, D1], once for all T
            return max_pool(x, 3, 2, 1) if self.prologue == "default" else x

        def layer(mdl, x, part):                       # a stage's downsample (before its first block), DSSA or GWFFN
            if x.ndim == 4:                    # direct encoding, here so that a remat region keeps [B, ...] once
                x = jnp.broadcast_to(x[None], (self.T,) + x.shape)            # [T, B, H, W, C]
            if part.kind == "downsample":
                return Downsample(part.channels, neuron, name=part.path, parent=mdl, **lowered)(x, train)
            if part.kind == "dssa":
                return DSSA(part.channels, part.heads, part.patch, neuron, name=part.path, parent=mdl,
                            attention_chunk=self.attention_chunk, **lowered)(x, train)
            return GWFFN(part.channels, group_size=self.group_size, neuron=neuron, name=part.path, parent=mdl,
                         **lowered)(x, train)

        x = self._region(stem)(self, x)
        for part in rest:                                                     # in forward order
            x = checkpoint_name(x, "block_input")                             # [T, B, H, W, C] ([B, ...] first)
            x = self._region(functools.partial(layer, part=part))(self, x)
        x = jnp.mean(x, axis=(2, 3))                                          # [T, B, D3]
        logits = nn.Dense(self.num_classes, use_bias=False, kernel_init=trunc_normal_init(0.02),
                          dot_general=_named_param_copy, name="classifier", **kw)(x)   # [T, B, classes]
        if train or self.is_initializing():
            return logits
        # evaluation with firing rates that are traced (variables passed into jit/grad/vmap) and so were not
        # checked: an uncalibrated head (rate 0) makes every logit NaN rather than a meaningless number
        rates = jax.tree.leaves(self.variables.get(FIRING_RATES, {}))
        uncalibrated = functools.reduce(jnp.logical_or, [jnp.any(r == 0) for r in rates], jnp.bool_(False))
        return jnp.where(uncalibrated, jnp.nan, logits)


def _named_param_copy(x, kernel, *args, **kwargs):
    """The classifier's product, its compute-dtype kernel named as a parameter copy (as ConvBN's)."""
    return jax.lax.dot_general(x, checkpoint_name(kernel, "param_copy"), *args, **kwargs)


def config_for(name: str, **overrides) -> dict[str, Any]:
    """The config dict of a registered variant, with overrides (e.g. ``num_classes=100, img_size=32``)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}")
    cfg = dict(VARIANTS[name], **NEURON_DEFAULTS)
    cfg.update(overrides)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def create_model(name: str, dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32,
                 remat: str | bool = "none", conv_impl: str = "auto", bn_group_size: int | None = None,
                 platform: str | None = None, attention_chunk: int | None = None,
                 **overrides) -> SpikingResformer:
    """A registered variant: ``create_model("spikingresformer_cifar", num_classes=100, img_size=32)``.
    ``conv_impl``: "auto" (the best for ``platform``, default this process's backend; resolved now, which may build
    the CPU kernels), "xla", "slices" or "events" (``ops.lowering``)."""
    return SpikingResformer.from_config(config_for(name, **overrides), dtype=dtype, param_dtype=param_dtype,
                                        remat=remat, conv_impl=conv_impl, platform=platform,
                                        bn_group_size=bn_group_size, attention_chunk=attention_chunk)


def build_model(model_config: Mapping[str, Any], precision: str = "float32", remat: str | bool = "none",
                conv_impl: str | None = None, platform: str | None = None) -> SpikingResformer:
    """The model of a config's ``model_config`` (architecture keys, and optionally ``conv_impl``,
    ``bn_group_size`` and ``attention_chunk``) computing in ``precision`` (``PRECISIONS``; parameters stay
    float32). ``remat`` (a
    ``REMAT_POLICIES`` name) is what each layer keeps for the backward pass (less memory, more compute);
    ``conv_impl`` (default: the config's, else "auto") is its lowering, resolved here for ``platform`` (default:
    this process's backend), before anything is traced."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dtype = None if PRECISIONS[precision] == jnp.float32 else PRECISIONS[precision]
    model_config = dict(model_config)
    arch = {k: v for k, v in model_config.items() if k not in TRAINING_MODEL_KEYS}
    return SpikingResformer.from_config(arch, dtype=dtype, remat=remat, platform=platform,
                                        conv_impl=conv_impl or model_config.get("conv_impl") or "auto",
                                        bn_group_size=model_config.get("bn_group_size"),
                                        attention_chunk=model_config.get("attention_chunk"))


def dummy_input(model: SpikingResformer, batch: int = 1, dtype=jnp.float32) -> jax.Array:
    """A zero input of the model's expected shape at its ``img_size``."""
    hw = (model.img_size, model.img_size, model.in_channels)
    return jnp.zeros((batch, model.T) + hw if model.dvs else (batch,) + hw, dtype)


def init_key(rng: jax.Array) -> jax.Array:
    """The key the initializers draw from: an "rbg" key (XLA's RngBitGenerator) derived from ``rng``, so the values
    are a function of ``rng``. Drawing the model's sixty-odd initial tensors from threefry compiles far more
    slowly on XLA:CPU than from rbg."""
    return jax.random.wrap_key_data(jax.random.bits(rng, (4,), jnp.uint32), impl="rbg")


def init_variables(model: SpikingResformer, rng: jax.Array, x: jax.Array | None = None) -> dict:
    """Initialised variables (params, batch_stats, firing_rates = 0), jitted; the initializers draw from
    ``init_key(rng)``. Weights as the official ``init_weight``: conv/linear kernels trunc_normal(0.02), BN γ = 1,
    β = 0, PLIF w = 0."""
    x = dummy_input(model, dtype=model.param_dtype) if x is None else x
    return _init(model, rng, x)


@functools.partial(jax.jit, static_argnums=0)
def _init(model: SpikingResformer, rng: jax.Array, x: jax.Array) -> dict:
    """Compiled once per model (equal modules hash equal) and input shape."""
    return model.init(init_key(rng), x, train=False)


def calibrate(model: SpikingResformer, variables: Mapping, x: jax.Array,
              collections: Sequence[str] = STATE_COLLECTIONS) -> dict:
    """One training-mode forward (no weight update) whose updated state replaces ``collections``.

    Sets the DSSA firing-rate statistics of a fresh model (the official model's buffers after one
    training forward), so that it can be evaluated without dividing by zero. ``x`` must make the first DSSA's
    input neurons fire (real images or frames do; an all-zero input leaves every rate at zero). The forward is
    compiled once per model and input shape.
    """
    new_state = _training_state(model, variables, x)
    out = dict(variables)
    for c in collections:
        out[c] = new_state[c]
    return out


@functools.partial(jax.jit, static_argnums=0)
def _training_state(model: SpikingResformer, variables: Mapping, x: jax.Array) -> dict:
    return model.apply(variables, x, train=True, mutable=list(STATE_COLLECTIONS))[1]


def check_calibrated(variables: Mapping) -> None:
    """Raises ``FiringRatesNotSetError`` if any DSSA firing-rate statistic is zero (evaluation would give NaN)."""
    for path, value in trees.paths(variables.get(FIRING_RATES, {})).items():
        check_firing_rates(value, path)


def count_params(params: Mapping, include_bn: bool = True) -> int:
    """Number of parameters; ``include_bn=False`` drops BN γ/β (the paper's count for Ti and M)."""
    return sum(int(v.size) for path, v in trees.flatten(params).items() if include_bn or "bn" not in path)


def by_path(collection: Mapping) -> dict[str, jax.Array]:
    """A sown collection (``spikes``, ``membranes``) as {Flax module path: array}, e.g.
    ``{"stage1_dssa1/lif_in": spikes [T, B, H, W, C], ...}`` in the model's forward order
    (``architecture.official_module(path)`` gives the official name of each path)."""
    out = {}

    def walk(node, path):
        for k, v in node.items():
            if isinstance(v, tuple):                                  # sow's tuple of values: one per call
                out[path] = v[0] if len(v) == 1 else jnp.stack(v)
            elif isinstance(v, Mapping):
                walk(v, f"{path}/{k}" if path else k)
    walk(collection, "")
    return dict(sorted(out.items(), key=lambda kv: architecture.forward_key(kv[0])))


__all__ = ["SpikingResformer", "Downsample", "VARIANTS", "CONFIG_KEYS", "TRAINING_MODEL_KEYS", "PRECISIONS",
           "BATCH_STATS", "FIRING_RATES", "STATE_COLLECTIONS", "FiringRatesNotSetError", "config_for", "create_model",
           "NEURON_DEFAULTS", "build_model", "dummy_input", "init_key", "init_variables", "calibrate", "check_calibrated", "count_params", "by_path"]
