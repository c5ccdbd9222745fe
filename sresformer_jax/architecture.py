"""The one description of SpikingResformer's layers: a pure function of the model config.

    stem ─ stage1: [DSSA, GWFFN] × n1 ─ stage2: downsample, [DSSA, GWFFN] × n2 ─ stage3: … ─ classifier

``blocks(cfg)`` lists the blocks in forward order, each with its Flax module path, official module name, channels,
and its layers (convolutions, neurons and DSSA products) with their paths, official names, shapes and the neuron
whose spikes they read. The model builds its modules from it (``model.SpikingResformer``), and the deploy form
(``deploy``), the SOP and MAC counts (``energy``) and the official names (``interop``) all read it; a test checks
that the Flax parameter tree, the deploy form, the SOP layer list and the official state-dict manifest agree with it.

``cfg`` is a model config (``model.CONFIG_KEYS``: blocks, planes, num_heads, patch_sizes, prologue, group_size,
in_channels, num_classes, activation; a mapping or a ``SpikingResformer``).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

RATIO = 4                                   # GWFFN expansion


@dataclasses.dataclass(frozen=True)
class Conv:
    """A convolution and its BatchNorm: ``kernel`` × ``kernel``, ``stride``, symmetric ``padding``, ``groups``;
    ``spikes_from``: the path of the neuron whose spikes it reads (None: the stem, on the analog input)."""
    path: str                   # Flax module path, e.g. "stage1_gwffn1/conv" (its BatchNorm: path + "/bn")
    official: str               # official module name, e.g. "layers.0.1.conv.0.1"
    bn_official: str            # official name of its BatchNorm, e.g. "layers.0.1.conv.0.2"
    cin: int
    cout: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    spikes_from: str | None = None
    stage: int = 0              # 0: the stem; the stage whose feature map it reads otherwise

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        return (self.kernel, self.kernel, self.cin // self.groups, self.cout)


@dataclasses.dataclass(frozen=True)
class Neuron:
    """A spiking neuron layer (LIF, or PLIF with a parameter ``w``)."""
    path: str                   # e.g. "stage1_dssa1/lif_in"
    official: str               # e.g. "layers.0.0.activation_in"
    count_map: bool = True      # whether it sows the per-pixel spike-count map (not the attention map's)


@dataclasses.dataclass(frozen=True)
class Product:
    """One of DSSA's two products of spikes: ``matmul1`` = y1ᵀ·s (per head, [N′, d] · [d, HW], the spikes s of
    ``lif_in``), ``matmul2`` = a·y2 (per head, [d, N′] · [N′, HW], the attention map a of ``lif_attn``)."""
    path: str                   # e.g. "stage1_dssa1/matmul1"
    official: str               # e.g. "layers.0.0.matmul1"
    spikes_from: str
    heads: int
    head_dim: int               # d = C / heads
    patch: int                  # N′ = (H/p)(W/p) key/value tokens
    stage: int


@dataclasses.dataclass(frozen=True)
class Block:
    """The stem, a stage's downsample, a DSSA or a GWFFN block, with its layers in forward order."""
    path: str                   # Flax module name, e.g. "stage2_dssa1" ("stem" for the stem)
    official: str               # official module name, e.g. "layers.1.1" ("prologue" for the stem)
    kind: str                   # "stem" | "downsample" | "dssa" | "gwffn"
    stage: int                  # 0 for the stem
    index: int                  # the block's number within its stage (1-based; 0 for stem and downsample)
    channels: int
    heads: int = 0
    patch: int = 0
    layers: tuple = ()

    @property
    def convs(self) -> tuple[Conv, ...]:
        return tuple(x for x in self.layers if isinstance(x, Conv))

    @property
    def neurons(self) -> tuple[Neuron, ...]:
        return tuple(x for x in self.layers if isinstance(x, Neuron))


# Flax sub-module names inside a block → official sub-module names (the official classes' attribute names)
_SUBMODULES = {
    "dssa": {"lif_in": "activation_in", "kv": "W", "kv/bn": "norm", "lif_attn": "activation_attn",
             "lif_out": "activation_out", "proj": "Wproj", "proj/bn": "norm_proj"},
    "gwffn": {"up_lif": "up.0", "up": "up.1", "up/bn": "up.2", "conv_lif": "conv.0.0", "conv": "conv.0.1",
              "conv/bn": "conv.0.2", "down_lif": "down.0", "down": "down.1", "down/bn": "down.2"},
    "downsample": {"lif": "activation", "conv": "conv", "conv/bn": "norm"},
}
_BLOCK = re.compile(r"stage(\d+)_(dssa|gwffn|downsample)(\d*)")


def official_module(path: str) -> str:
    """The official module name of a Flax module path: "stem" → "prologue.0", "stem/bn" → "prologue.1",
    "stage1_dssa1" → "layers.0.0", "stage2_gwffn1/conv/bn" → "layers.1.2.conv.0.2", "classifier". Official
    ``layers[s - 1]`` holds stage s's blocks in order, its downsample first (stages 2 and 3)."""
    top, _, sub = path.partition("/")
    if top in ("stem", "classifier"):
        return {"stem": "prologue.0", "stem/bn": "prologue.1", "classifier": "classifier"}[path]
    m = _BLOCK.fullmatch(top)
    if not m:
        raise KeyError(f"no official name for the Flax module {path}")
    stage, kind, k = int(m[1]), m[2], int(m[3] or 0)
    first = 0 if stage == 1 else 1
    index = 0 if kind == "downsample" else first + 2 * (k - 1) + (0 if kind == "dssa" else 1)
    block = f"layers.{stage - 1}.{index}"
    return f"{block}.{_SUBMODULES[kind][sub]}" if sub else block


def forward_key(path: str) -> tuple:
    """A sort key that puts Flax module paths in forward order (by stage, block, then place within the block),
    without a config: e.g. for spike counts whose dict order a pytree flatten has sorted."""
    top, _, sub = path.partition("/")
    if top in ("stem", "classifier"):
        return (0 if top == "stem" else 99, 0, 0, sub)
    m = _BLOCK.fullmatch(top)
    stage, kind, k = int(m[1]), m[2], int(m[3] or 0)
    order = list(_SUBMODULES[kind])
    return (stage, 0 if kind == "downsample" else 2 * k - (kind == "dssa"), order.index(sub) if sub in order else 99,
            sub)


def _get(cfg: Any, key: str):
    return cfg[key] if isinstance(cfg, Mapping) else getattr(cfg, key)


def _conv(path: str, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1,
          spikes_from: str | None = None, stage: int = 0) -> Conv:
    return Conv(path, official_module(path), official_module(path + "/bn"), cin, cout, kernel, stride, padding,
                groups, spikes_from, stage)


def _neuron(path: str, count_map: bool = True) -> Neuron:
    return Neuron(path, official_module(path), count_map)


def blocks(cfg: Any) -> tuple[Block, ...]:
    """Every block of the architecture of ``cfg``, in forward order (the stem first; the classifier follows)."""
    planes, heads, patches, counts = (tuple(_get(cfg, k)) for k in ("planes", "num_heads", "patch_sizes", "blocks"))
    group_size = _get(cfg, "group_size")
    k0 = 7 if _get(cfg, "prologue") == "default" else 3
    out = [Block("stem", "prologue", "stem", 0, 0, planes[0], layers=(
        _conv("stem", _get(cfg, "in_channels"), planes[0], k0, 2 if k0 == 7 else 1, k0 // 2),))]
    for i, (n, c, h, p) in enumerate(zip(counts, planes, heads, patches)):
        s = i + 1
        if i:
            name = f"stage{s}_downsample"
            out.append(Block(name, official_module(name), "downsample", s, 0, c, layers=(
                _neuron(f"{name}/lif"),
                _conv(f"{name}/conv", planes[i - 1], c, 3, 2, 1, spikes_from=f"{name}/lif", stage=s - 1))))
        for k in range(1, n + 1):
            name = f"stage{s}_dssa{k}"
            sub = lambda x: f"{name}/{x}"                                          # noqa: E731
            out.append(Block(name, official_module(name), "dssa", s, k, c, h, p, (
                _neuron(sub("lif_in")),
                _conv(sub("kv"), c, 2 * c, p, p, spikes_from=sub("lif_in"), stage=s),
                Product(sub("matmul1"), official_module(name) + ".matmul1", sub("lif_in"), h, c // h, p, s),
                _neuron(sub("lif_attn"), count_map=False),
                Product(sub("matmul2"), official_module(name) + ".matmul2", sub("lif_attn"), h, c // h, p, s),
                _neuron(sub("lif_out")),
                _conv(sub("proj"), c, c, 1, spikes_from=sub("lif_out"), stage=s))))
            name = f"stage{s}_gwffn{k}"
            inner = RATIO * c
            out.append(Block(name, official_module(name), "gwffn", s, k, c, layers=(
                _neuron(sub("up_lif")),
                _conv(sub("up"), c, inner, 1, spikes_from=sub("up_lif"), stage=s),
                _neuron(sub("conv_lif")),
                _conv(sub("conv"), inner, inner, 3, 1, 1, inner // group_size, spikes_from=sub("conv_lif"), stage=s),
                _neuron(sub("down_lif")),
                _conv(sub("down"), inner, c, 1, spikes_from=sub("down_lif"), stage=s))))
    return tuple(out)


def convs(cfg: Any) -> tuple[Conv, ...]:
    """Every convolution, in forward order (the stem first)."""
    return tuple(c for b in blocks(cfg) for c in b.convs)


def neurons(cfg: Any) -> tuple[Neuron, ...]:
    """Every spiking neuron layer, in forward order."""
    return tuple(n for b in blocks(cfg) for n in b.neurons)


def synapses(cfg: Any) -> tuple[Conv | Product, ...]:
    """Every layer that reads spikes (the paper's SOP-counted set: every convolution but the stem, and DSSA's two
    products), in forward order."""
    return tuple(x for b in blocks(cfg) for x in b.layers
                 if isinstance(x, Product) or (isinstance(x, Conv) and x.spikes_from is not None))


def classifier(cfg: Any) -> tuple[int, int]:
    """(inputs, classes) of the classifier (official ``classifier``), after the average pool over H, W."""
    return tuple(_get(cfg, "planes"))[-1], _get(cfg, "num_classes")
