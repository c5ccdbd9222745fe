"""Synaptic operations (SOPs), energy, dense MACs and firing rates (docs/model.md, "Energy"), counted exactly like the
official ``utils.SOPMonitor`` / ``main.test``.

Usage::

    logits, st = model.apply(variables, x, train=False, mutable=["spike_counts"])
    report = energy_report(model, st, batch_size=x.shape[0])          # one batch

    counter = SOPCounter(model)                                        # a whole evaluation set
    for x, _ in batches:
        _, st = eval_fn(variables, x)          # jitted apply(..., mutable=["spike_counts"])
        counter.update(st, x.shape[0])
    report = counter.report()

Inputs: every ``Neuron`` sows into the ``spike_counts`` collection (when the caller makes it mutable)
``total`` (number of spikes), ``numel`` (elements of its spike tensor) and, for a [T, B, H, W, C] spike
tensor s, ``map`` M[y, x] = Σ_{t,b,c} s[t, b, y, x, c] (shape [H, W]); the DSSA attention-map neuron
``lif_attn`` sows no map. Everything below is integer arithmetic on the host (Python ints / numpy int64).

SOPs (official rules; the stem conv — analog input — and the classifier are excluded):

* Conv whose input is spikes (kernel k, stride σ, padding π, groups g, C_out outputs). The official
  count is Σ conv(s, all-ones kernel) over the output, i.e. every input spike times the number of outputs
  it reaches. Along one axis of length L, input index i is covered by

      cov_L[i] = #{o ∈ [0, L_out) : oσ − π ≤ i ≤ oσ − π + k − 1},   L_out = ⌊(L + 2π − k)/σ⌋ + 1

  output positions, and each input channel feeds C_out/g output channels, so

      SOP_conv = (C_out / g) · Σ_{y,x} M[y, x] · cov_H[y] · cov_W[x]

  1×1 conv: SOP = C_out · #spikes.  p×p stride-p conv (DSSA ``W``, p | H, W): SOP = 2C · #spikes.
  3×3 pad-1 group-wise conv (GWFFN ``conv.0.1``): C_out/g = G (channels per group); borders count less.
  3×3 stride-2 pad-1 conv (``DownsampleLayer.conv``): C_out/g = C_out of the next stage.
* DSSA ``matmul1`` (per head [N′, d] @ [d, HW], right operand = input spikes s, left operand → ones):
  SOP = N′ · #spikes(s)   (all heads), N′ = (H/p)(W/p).
* DSSA ``matmul2`` (per head [d, N′] @ [N′, HW], right operand = attention map A):
  SOP = d · #spikes(A),   d = C / heads.
* Everything is summed over T and the batch and divided by the number of images ⇒ SOPs per image for
  the whole T-step inference.  Energy = E_AC · SOPs, E_AC = 0.9 pJ (1 pJ = 1e-9 mJ).

Dense MACs per time step (``dense_macs``; pure shape arithmetic, batch 1 — main.py's thop custom counters):

* conv: H_out·W_out·C_out·(C_in/g)·k²      (stem ``prologue.0`` included here, and reported separately)
* linear (classifier): D_3 · classes
* each DSSA matmul: left.numel · right.shape[-1] = C · N′ · HW
* ``total`` = stem + spiking part + classifier; the dense-compute convention of the paper's tables (BN excluded), e.g. Ti at 224:
  stem 0.118 G, rest 3.909 G (2 DSSA matmuls: 0.285 G), total 4.03 G.
* ``thop_total`` = ``total`` + thop 0.1.1's default BatchNorm rule, 2·numel ×2 (affine) = 4·numel of every
  BN input. Max-pool, avg-pool and neurons count 0 (SpikingJelly's subclasses are not in thop's exact-type
  table). ``thop_total`` per step is what main.py prints as "MACs" (thop ops / T).
* Per image = T × per step (the official model runs the stem at every step on the repeated image).

A/S power ratio (main.py): E_MAC · MACs / (E_AC · SOPs) with E_MAC = 4.6 pJ, where main.py's MACs are
``thop_total`` **per step** (one dense ANN forward) and SOPs are per image over all T steps
(``as_power_ratio``). ``as_power_ratio_per_image`` uses T × ``total`` instead (a dense network run for T steps).

Firing rate of a neuron layer = #spikes / #elements of its spike tensor, keyed by official module name
(e.g. ``layers.0.0.activation_in``, ``layers.0.1.up.0``, ``layers.1.0.activation``).

Differences from the official averaging (main.py): it averages per-batch sums over batches and divides by
the nominal ``--batch-size`` (a smaller last batch gets equal weight), and thop's one-image profiling pass
adds one extra record. ``SOPCounter`` divides by the true number of images; ``report(official_averaging=True)``
reproduces the batch-mean convention (without the thop record).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping

import numpy as np

from . import architecture
from .architecture import official_module
from .model import SpikingResformer
from .neurons import SPIKE_COUNTS

E_AC_PJ = 0.9   # energy of one accumulate (synaptic operation), 45 nm
E_MAC_PJ = 4.6  # energy of one multiply-accumulate, 45 nm
PJ_TO_MJ = 1e-9


# ----------------------------------------------------------------------------------------- layer table

@dataclasses.dataclass(frozen=True)
class SynapticLayer:
    """One SOP-counted layer: an official module fed by the spikes of one neuron.

    ``kind``: ``"conv"`` (``features`` outputs, ``kernel``/``stride``/``padding``/``groups``), ``"matmul1"``
    (SOP = N′ · #spikes, N′ from the patch size ``kernel`` and the neuron's map) or ``"matmul2"``
    (SOP = ``features`` (= d) · #spikes).
    """

    name: str                    # official module name, e.g. "layers.0.1.conv.0.1"
    neuron: tuple[str, ...]      # Flax path of the neuron whose spikes are the input
    kind: str
    features: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1


def neuron_name(path: Iterable[str]) -> str:
    """Official module name of a neuron's Flax path, e.g. ("stage1_dssa1", "lif_in") → layers.0.0.activation_in."""
    return official_module("/".join(path))


def synaptic_layers(model: SpikingResformer) -> list[SynapticLayer]:
    """The SOP-counted layers of ``model`` in forward order (official ``SOPMonitor`` set: every conv, linear
    and matmul except ``prologue.0`` and ``classifier``; ``architecture.synapses``)."""
    out = []
    for x in architecture.synapses(model):
        neuron = tuple(x.spikes_from.split("/"))
        if isinstance(x, architecture.Product):
            out.append(SynapticLayer(x.official, neuron, "matmul1", features=x.heads, kernel=x.patch)
                       if x.path.endswith("matmul1") else
                       SynapticLayer(x.official, neuron, "matmul2", features=x.head_dim))
        else:
            out.append(SynapticLayer(x.official, neuron, "conv", features=x.cout, kernel=x.kernel, stride=x.stride,
                                     padding=x.padding, groups=x.groups))
    return out


# ----------------------------------------------------------------------------------------- counting

def coverage_1d(length: int, kernel: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """cov[i] = number of output positions whose window contains input index i (int64, shape [length])."""
    n_out = (length + 2 * padding - kernel) // stride + 1
    cov = np.zeros(length, np.int64)
    for o in range(max(n_out, 0)):
        lo = o * stride - padding
        cov[max(lo, 0):max(min(lo + kernel, length), 0)] += 1
    return cov


def coverage(shape: tuple[int, int], kernel: int, stride: int = 1, padding: int = 0) -> np.ndarray:
    """[H, W] int64 map: how many output windows of the conv include each input pixel."""
    return np.outer(coverage_1d(shape[0], kernel, stride, padding), coverage_1d(shape[1], kernel, stride, padding))


def conv_sops(count_map: np.ndarray, features: int, kernel: int, stride: int = 1, padding: int = 0,
              groups: int = 1) -> int:
    """Exact SOPs of a conv from its input's per-pixel spike counts ``count_map`` [H, W] (summed over T, B, C)."""
    m = np.asarray(count_map, np.int64)
    if features % groups:
        raise ValueError(f"groups {groups} does not divide {features} output channels")
    return int((m * coverage(m.shape, kernel, stride, padding)).sum()) * (features // groups)


def _leaf_sum(v: Any) -> Any:
    """A sown value: a tuple of arrays (one per call) → their sum on the host (int64 / Python int)."""
    parts = v if isinstance(v, (tuple, list)) else (v,)
    arrs = [np.asarray(p) for p in parts]
    for a in arrs:
        if np.issubdtype(a.dtype, np.signedinteger) and (a < 0).any():
            raise OverflowError("negative spike count: the int32 counter overflowed (use a smaller batch)")
    if arrs[0].ndim == 0:
        return sum(int(round(float(a))) if np.issubdtype(a.dtype, np.floating) else int(a) for a in arrs)
    return sum(a.astype(np.int64) for a in arrs)


def host_counts(spike_counts: Mapping) -> dict[tuple[str, ...], dict[str, Any]]:
    """``spike_counts`` (the collection, or the whole mutable-state dict holding it) → {neuron Flax path:
    {"total": int, "numel": int, "map": int64 [H, W] (if sown)}} on the host."""
    if _is_host(spike_counts):
        return dict(spike_counts)
    if SPIKE_COUNTS in spike_counts:
        spike_counts = spike_counts[SPIKE_COUNTS]
    out: dict[tuple[str, ...], dict[str, Any]] = {}

    def walk(node: Mapping, path: tuple[str, ...]):
        if "total" in node and not isinstance(node["total"], Mapping):
            out[path] = {k: _leaf_sum(v) for k, v in node.items()}
            return
        for k, v in node.items():
            walk(v, path + (str(k),))

    walk(spike_counts, ())
    if not out:
        raise ValueError("no spike counts found: apply the model with mutable=['spike_counts']")
    return out


def _get(counts: Mapping, path: tuple[str, ...], layer: str) -> dict[str, Any]:
    if path not in counts:
        raise KeyError(f"no spike counts for neuron {'/'.join(path)} (input of {layer}); was the model "
                       "applied with mutable=['spike_counts']?")
    return counts[path]


def layer_sops(layer: SynapticLayer, counts: Mapping) -> int:
    """Exact SOPs of one layer over everything ``counts`` holds (all T steps, all images)."""
    c = _get(counts, layer.neuron, layer.name)
    if layer.kind == "matmul2":
        return layer.features * c["total"]
    if layer.kind == "matmul1":
        if "map" not in c:
            raise KeyError(f"{layer.name}: neuron {'/'.join(layer.neuron)} sowed no count map")
        h, w = c["map"].shape
        p = layer.kernel
        return ((h - p) // p + 1) * ((w - p) // p + 1) * c["total"]
    if layer.kernel == 1 and layer.stride == 1 and layer.padding == 0:
        return (layer.features // layer.groups) * c["total"]
    if "map" not in c:
        raise KeyError(f"{layer.name}: neuron {'/'.join(layer.neuron)} sowed no count map, which a "
                       f"{layer.kernel}×{layer.kernel} conv needs")
    return conv_sops(c["map"], layer.features, layer.kernel, layer.stride, layer.padding, layer.groups)


def sop_totals(model: SpikingResformer, spike_counts: Mapping) -> dict[str, int]:
    """Exact integer SOPs per layer (official names, forward order) summed over the batch, plus ``total``."""
    counts = spike_counts if _is_host(spike_counts) else host_counts(spike_counts)
    out = {layer.name: layer_sops(layer, counts) for layer in synaptic_layers(model)}
    out["total"] = sum(out.values())
    return out


def _is_host(d: Mapping) -> bool:
    return bool(d) and all(isinstance(k, tuple) for k in d)


def count_sops(model: SpikingResformer, spike_counts: Mapping, batch_size: int) -> dict[str, float]:
    """SOPs per image for each layer (official names exactly as ``official_sops.json``) and ``total``.

    Integer totals divided by ``batch_size`` (Python's correctly rounded int / int; exact when divisible).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return {k: v / batch_size for k, v in sop_totals(model, spike_counts).items()}


def spike_totals(spike_counts: Mapping, keys: str = "official") -> dict[str, tuple[int, int]]:
    """{neuron: (#spikes, #elements)} in forward order, keyed by official module name (``keys="official"``,
    e.g. ``layers.0.0.activation_in``) or by Flax module path (``keys="path"``, e.g. ``stage1_dssa1/lif_in``);
    ``architecture.official_module`` maps the second to the first."""
    if keys not in ("official", "path"):
        raise ValueError(f"keys={keys!r}: choose 'official' or 'path'")
    counts = spike_counts if _is_host(spike_counts) else host_counts(spike_counts)
    name = neuron_name if keys == "official" else "/".join
    return {name(p): (counts[p]["total"], counts[p]["numel"])
            for p in sorted(counts, key=lambda p: architecture.forward_key("/".join(p)))}


def firing_rates(spike_counts: Mapping, keys: str = "official") -> dict[str, float]:
    """Firing rate (#spikes / #elements) of every neuron layer, keyed as ``spike_totals`` keys them."""
    return {k: t / n for k, (t, n) in spike_totals(spike_counts, keys).items()}


# ----------------------------------------------------------------------------------------- dense MACs

def _hw(img_size) -> tuple[int, int]:
    return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)


def dense_macs(model: SpikingResformer, img_size: int | tuple[int, int] | None = None) -> dict[str, Any]:
    """Dense MACs of one image (batch 1), by pure shape arithmetic (see the module docstring).

    Returns ``per_step`` and ``per_image`` (= T × per step) dicts with ``stem``, ``spiking`` (every conv and
    matmul after the stem), ``matmul`` (the DSSA matmuls, part of ``spiking``), ``classifier``, ``total``
    (stem + spiking + classifier, BN excluded), ``bn_thop`` (4 · BN input elements) and ``thop_total``
    (total + bn_thop: main.py's printed MACs), plus ``per_layer_step`` (official name → MACs per step,
    ``prologue.0`` and ``classifier`` included).
    """
    h, w = _hw(model.img_size if img_size is None else img_size)
    sizes = [(h, w)] + model.stage_sizes((h, w))    # the input, then each stage (raises if a patch does not divide)
    layers: dict[str, int] = {}
    bn = matmul = 0
    for x in architecture.blocks(model):
        for layer in x.layers:
            if isinstance(layer, architecture.Conv):  # output size, MACs (the stem's max-pool: 0), BN inputs
                ih, iw = sizes[layer.stage]           # the input, or the stage whose feature map it reads
                oh = (ih + 2 * layer.padding - layer.kernel) // layer.stride + 1
                ow = (iw + 2 * layer.padding - layer.kernel) // layer.stride + 1
                layers[layer.official] = oh * ow * layer.cout * (layer.cin // layer.groups) * layer.kernel ** 2
                bn += oh * ow * layer.cout
            elif isinstance(layer, architecture.Product):   # [h, N', d] @ [h, d, HW] and [h, d, N'] @ [h, N', HW]
                ih, iw = sizes[layer.stage]
                n_kv = (ih // layer.patch) * (iw // layer.patch)
                layers[layer.official] = layer.heads * layer.head_dim * n_kv * ih * iw
                matmul += layers[layer.official]
    layers["classifier"] = model.planes[-1] * model.num_classes
    stem, cls = layers["prologue.0"], layers["classifier"]
    total = sum(layers.values())
    step = {"stem": stem, "spiking": total - stem - cls, "matmul": matmul, "classifier": cls,
            "total": total, "bn_thop": 4 * bn, "thop_total": total + 4 * bn}
    return {"img_size": (h, w), "T": model.T, "per_step": step,
            "per_image": {k: model.T * v for k, v in step.items()}, "per_layer_step": layers}


# ----------------------------------------------------------------------------------------- reports

class SOPCounter:
    """Accumulates spike counts over evaluation batches on the host and reports SOPs per image.

    ``update(spike_counts, batch_size)`` converts one batch's counts to exact per-layer SOP integers
    (so no count maps are kept); ``report()`` divides the sums by the total number of images.
    """

    def __init__(self, model: SpikingResformer):
        self.model = model
        self.layers = synaptic_layers(model)
        self.reset()

    def reset(self) -> None:
        self.num_images = 0
        self.sops = {layer.name: 0 for layer in self.layers}
        self.spikes: dict[str, list[int]] = {}       # official neuron name → [#spikes, #elements]
        self.batch_records: list[tuple[int, int]] = []  # (batch size, total SOPs) per update
        self.stage1_map_shape: tuple[int, int] | None = None

    def update(self, spike_counts: Mapping, batch_size: int) -> "SOPCounter":
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        counts = host_counts(spike_counts)
        batch = sop_totals(self.model, counts)
        for name in self.sops:
            self.sops[name] += batch[name]
        for name, (t, n) in spike_totals(counts).items():
            acc = self.spikes.setdefault(name, [0, 0])
            acc[0] += t
            acc[1] += n
        self.num_images += batch_size
        self.batch_records.append((batch_size, batch["total"]))
        first = counts.get(self.layers[0].neuron, {})
        if "map" in first:
            shape = tuple(first["map"].shape)
            if self.stage1_map_shape not in (None, shape):
                raise ValueError(f"batches at different resolutions ({self.stage1_map_shape} vs {shape})")
            self.stage1_map_shape = shape
        return self

    def report(self, img_size: int | tuple[int, int] | None = None,
               official_averaging: bool = False) -> dict[str, Any]:
        """The energy report (see ``energy_report``). ``img_size`` (default: the model's) is only used for
        the dense MACs and is checked against the resolution the spike maps were taken at.
        ``official_averaging``: total SOPs as main.py averages them (mean of per-batch sums divided by the
        largest batch size seen) instead of the exact per-image mean."""
        if not self.num_images:
            raise ValueError("no batches: call update() first")
        per_layer = {k: v / self.num_images for k, v in self.sops.items()}
        total_int = sum(self.sops.values())
        sops = total_int / self.num_images
        if official_averaging:
            nominal = max(b for b, _ in self.batch_records)
            sops = sum(s for _, s in self.batch_records) / len(self.batch_records) / nominal
        macs = dense_macs(self.model, img_size)
        if self.stage1_map_shape is not None:
            expect = self.model.stage_sizes(macs["img_size"])[0]
            if tuple(expect) != self.stage1_map_shape:
                raise ValueError(f"spike counts were taken at stage-1 size {self.stage1_map_shape}, but "
                                 f"img_size {macs['img_size']} gives {tuple(expect)}: pass the input size")
        ratio = lambda m: E_MAC_PJ * m / (E_AC_PJ * sops) if sops else math.inf  # noqa: E731
        return {
            "num_images": self.num_images,
            "sops_per_image": sops,
            "sops_total": total_int,
            "energy_mj": E_AC_PJ * sops * PJ_TO_MJ,
            "per_layer_sops": per_layer,
            "per_layer_sops_total": dict(self.sops),
            "firing_rates": {k: t / n for k, (t, n) in self.spikes.items()},
            "macs_per_step": macs["per_step"]["total"],
            "macs_per_image": macs["per_image"]["total"],
            "thop_macs_per_step": macs["per_step"]["thop_total"],
            "macs": macs,
            "as_power_ratio": ratio(macs["per_step"]["thop_total"]),
            "as_power_ratio_per_image": ratio(macs["per_image"]["total"]),
            "e_ac_pj": E_AC_PJ,
            "e_mac_pj": E_MAC_PJ,
        }


def energy_report(model: SpikingResformer, spike_counts: Mapping, batch_size: int,
                  img_size: int | tuple[int, int] | None = None) -> dict[str, Any]:
    """SOPs, energy, per-layer SOPs, firing rates, dense MACs and A/S power ratio of one batch.

    Keys: ``sops_per_image``, ``sops_total`` (int, whole batch), ``energy_mj`` (= 0.9 pJ · SOPs, per image),
    ``per_layer_sops`` (per image; ``per_layer_sops_total``: ints), ``firing_rates``, ``macs_per_step`` /
    ``macs_per_image`` (stem and classifier included, BN excluded), ``thop_macs_per_step``
    (main.py's printed MACs), ``macs`` (``dense_macs`` in full), ``as_power_ratio`` (main.py:
    4.6 · thop MACs per step / (0.9 · SOPs per image)), ``as_power_ratio_per_image`` (4.6 · T · MACs per
    step / (0.9 · SOPs)), ``num_images``, ``e_ac_pj``, ``e_mac_pj``.
    """
    return SOPCounter(model).update(spike_counts, batch_size).report(img_size)


__all__ = ["E_AC_PJ", "E_MAC_PJ", "SynapticLayer", "synaptic_layers", "coverage_1d", "coverage", "conv_sops",
           "host_counts", "layer_sops", "sop_totals", "count_sops", "spike_totals", "firing_rates",
           "neuron_name", "dense_macs", "SOPCounter", "energy_report"]
