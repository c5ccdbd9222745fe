"""The spike-driven deploy form: BatchNorm folded into the convolution before it, the DSSA scales folded into
per-head thresholds, and every product after the stem taking a binary operand. Exported without Flax.

    fn = deploy.fold(model, variables)          # fn(x) -> logits [T, B, classes], the same x as model.apply
    deploy.export(fn, "model.deploy")           # weights.safetensors + graph.json: no pickle
    fn2 = deploy.load("model.deploy")           # the same kind of callable; needs JAX only (no Flax)

    python -m sresformer_jax.deploy export --checkpoint W/best --out model.deploy

The algebra is exact in real arithmetic (docs/model.md):

    BN(conv(s)) = conv(s; K·γ/σ) + (β − γ·μ/σ),   σ = √(running_var + ε)        per output channel
    LIF(c·z; threshold 1) = LIF(z; threshold 1/c)  for c > 0 (the charge is linear, the reset is to 0)

so ``lif_attn`` takes the raw product y1ᵀq with per-head threshold √(r_x·d), and ``lif_out`` the raw a·y2 with
√(r_A·N′). What remains: the stem convolution (analog input) and the classifier (on the real-valued residual
stream), as in the paper's SOP count; every other convolution reads spikes, ``y1ᵀq`` has binary queries and
``a·y2`` a binary attention map. Spikes are ``bool`` arrays in this form, and every product after the stem checks,
when traced, that its operand is one (``NotSpikeDrivenError`` names the layer otherwise).

The thresholds hold for the resolution the model was folded at (N′ enters √(r_A·N′)); ``fn`` refuses other sizes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from . import architecture, trees
from .neurons import SPIKE_COUNTS, fire
from .ops import conv2d, conv_lowering, dot, kernels, resolve_conv_impl
from .ops.conv import max_pool

FORMAT = "sresformer_jax.deploy/1"
GRAPH, WEIGHTS = "graph.json", "weights.safetensors"
BN_EPS = 1e-5                                     # layers.BatchNorm's epsilon (PyTorch's)


class NotSpikeDrivenError(TypeError):
    """A product after the stem got an operand that is not a spike (bool) tensor."""


class DeployFileError(trees.MismatchError):
    """A deploy directory whose files are missing, of another format, or hold missing or mis-shaped tensors."""

    def __init__(self, message: str, lines: list[str] | None = None):
        super().__init__(message, lines or [])


# ------------------------------------------------------------------------------------------------- structure
def _reads_spikes(c: architecture.Conv) -> bool:
    return c.spikes_from is not None


def weight_shapes(arch: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor of the deploy form of the architecture ``arch`` (the model config keys)."""
    shapes = {}
    for c in architecture.convs(arch):
        shapes[f"{c.path}/kernel"] = c.kernel_shape
        shapes[f"{c.path}/bias"] = (c.cout,)
    if arch["activation"] == "PLIF":
        shapes.update({f"{n.path}/w": () for n in architecture.neurons(arch)})
    shapes["classifier/kernel"] = (arch["planes"][-1], arch["num_classes"])
    return shapes


# ------------------------------------------------------------------------------------------------- the form
@dataclasses.dataclass(frozen=True, eq=False)
class DeployedModel:
    """The deploy form: ``graph`` (JSON-able: the architecture, lowering, resolution and per-head thresholds)
    and ``weights`` (flat name → array). ``fn(x)`` returns per-step logits [T, B, classes];
    ``fn(x, count_spikes=True)`` also the per-layer spike counts, in the ``spike_counts`` layout that
    ``energy.SOPCounter`` reads. A pytree (weights are its leaves), so it can be passed into ``jax.jit``."""
    graph: dict
    weights: dict

    def __call__(self, x: jax.Array, count_spikes: bool = False):
        return _jitted(_GraphKey(self.graph), count_spikes)(self.weights, x)

    def apply(self, weights: Mapping[str, jax.Array], x: jax.Array, train: bool = False, count_spikes: bool = False):
        """The forward as a pure function of ``weights`` and ``x`` (traceable; ``graph`` is static), called as a
        Flax model's ``apply``; the deploy form is inference only (``train=False``)."""
        if train:
            raise ValueError("the deploy form is inference only: train it as a Flax model (sresformer_jax.load "
                             "a training or model checkpoint), then fold it again")
        return forward(self.graph, weights, x, count_spikes)


jax.tree_util.register_pytree_node(
    DeployedModel, lambda m: ((m.weights,), json.dumps(m.graph, sort_keys=True)),
    lambda graph, leaves: DeployedModel(json.loads(graph), leaves[0]))


class _GraphKey:
    """A hashable stand-in for a graph dict (its canonical JSON), for the compile cache below."""

    def __init__(self, graph: dict):
        self.graph, self.key = graph, json.dumps(graph, sort_keys=True)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _GraphKey) and other.key == self.key


_COMPILED: dict = {}


def _jitted(graph: _GraphKey, count_spikes: bool):
    key = (graph, count_spikes)
    if key not in _COMPILED:
        _COMPILED[key] = jax.jit(lambda w, x: forward(graph.graph, w, x, count_spikes))
    return _COMPILED[key]


def _spike_operand(name: str, s: jax.Array) -> jax.Array:
    if s.dtype != jnp.bool_:
        raise NotSpikeDrivenError(f"deploy form: {name} got a {s.dtype} operand; every product after the stem must "
                                  "take spikes (bool)")
    return s


def _lif(x: jax.Array, threshold, w: jax.Array | None, tau: float = 2.0, v_reset=0.0) -> jax.Array:
    """Spikes (bool) of a LIF (``w`` None, time constant ``tau``) or PLIF (k = sigmoid(w)) with ``threshold`` and
    a hard reset to ``v_reset`` (None: soft)."""
    return fire(x, threshold, tau=tau, k=None if w is None else jax.nn.sigmoid(w).astype(x.dtype), v_reset=v_reset,
                unroll=True)


def forward(graph: Mapping[str, Any], w: Mapping[str, jax.Array], x: jax.Array, count_spikes: bool = False):
    """The deploy form's computation (see the module docstring); ``w``: flat name → array."""
    arch, impl = graph["model"], graph["conv_impl"]
    T, dvs = arch["T"], arch.get("dvs", False)
    want = 5 if dvs else 4
    if x.ndim != want or x.shape[-1] != arch["in_channels"]:
        raise ValueError(f"deploy form: expected {'[B, T, H, W, C] event frames' if dvs else '[B, H, W, C] images'} "
                         f"with {arch['in_channels']} channels, got shape {tuple(x.shape)}")
    if list(x.shape[-3:-1]) != list(graph["input_hw"]):
        raise ValueError(f"deploy form: folded for {graph['input_hw'][0]}×{graph['input_hw'][1]} inputs (the DSSA "
                         f"thresholds depend on the resolution), got {x.shape[-3]}×{x.shape[-2]}; fold the model again "
                         "at this size")
    dtype = jnp.dtype(graph["dtype"]) if graph.get("dtype") else x.dtype
    x = x.astype(dtype)
    plif = arch["activation"] == "PLIF"
    tau, v_threshold = arch.get("tau", 2.0), arch.get("v_threshold", 1.0)     # exports before these: the defaults
    v_reset = arch.get("v_reset", 0.0)
    counts: dict = {}
    thresholds = graph["thresholds"]

    def lif(name: str, z: jax.Array, threshold=v_threshold, count_map: bool = True) -> jax.Array:
        # a scale c folded into the threshold (V_th/c) scales the hard reset's value alike (v_reset/c)
        reset = v_reset if v_reset in (None, 0.0) else v_reset * (jnp.asarray(threshold, z.dtype) / v_threshold)
        s = _lif(z, threshold, w[f"{name}/w"] if plif else None, tau, reset)
        if count_spikes:
            module, neuron = name.split("/")
            si = s.astype(jnp.int32)
            entry = {"total": (jnp.sum(si),), "numel": (jnp.asarray(s.size, jnp.int32) if s.size < 2**31 else
                                                       jnp.asarray(s.size, jnp.float32),)}
            if count_map and s.ndim == 5:
                entry["map"] = (jnp.sum(si, axis=(0, 1, 4)),)
            counts.setdefault(module, {})[neuron] = entry
        return s

    def conv(c: architecture.Conv, s: jax.Array) -> jax.Array:
        kernel = w[f"{c.path}/kernel"].astype(dtype)
        spikes = _reads_spikes(c)
        if spikes and impl == "events":              # the event kernels visit the spikes only, read as bytes
            lead = s.shape[:-3]
            s = _spike_operand(c.path, s).astype(kernels.BYTES).reshape((-1,) + s.shape[-3:])
            y = kernels.conv(s, kernel, c.stride, c.padding)
            y = y.reshape(lead + y.shape[1:])
        else:
            if spikes:
                s = _spike_operand(c.path, s).astype(dtype)
            y = conv2d(s, kernel, c.stride, c.padding, c.groups, conv_lowering(impl, spikes))
        return (y + w[f"{c.path}/bias"].astype(y.dtype)).astype(dtype)

    stem, *blocks = architecture.blocks(arch)
    convs = {c.path: c for c in architecture.convs(arch)}
    if dvs:
        h = conv(stem.convs[0], jnp.swapaxes(x, 0, 1))                       # [T, B, H, W, D1]
    else:
        h = conv(stem.convs[0], x)                                           # [B, H, W, D1], once for all T
    if arch["prologue"] == "default":
        h = max_pool(h, 3, 2, 1)
    if not dvs:
        h = jnp.broadcast_to(h[None], (T,) + h.shape)                        # direct encoding
    for b in blocks:
        if b.kind == "downsample":
            h = conv(b.convs[0], lif(b.neurons[0].path, h))
        elif b.kind == "dssa":
            h = _dssa(b.path, h, b.heads, thresholds, lif, conv, convs, impl)
        else:
            up, inner, down = b.convs
            u = conv(up, lif(up.spikes_from, h))
            u = conv(inner, lif(inner.spikes_from, u)) + u
            h = conv(down, lif(down.spikes_from, u)) + h
    pooled = jnp.mean(h, axis=(2, 3))                                        # [T, B, D3]
    logits = dot("tbc,ck->tbk", pooled, w["classifier/kernel"].astype(dtype))
    return (logits, {SPIKE_COUNTS: counts}) if count_spikes else logits


def _dssa(name, x, heads, thresholds, lif, conv, convs, impl):
    """DSSA with the scales as thresholds: a = LIF(y1ᵀq; √(r_x·d)), o = LIF(a·y2; √(r_A·N′)) per head. The
    attention map is computed query-major, [.., HW, N'] (its transpose): the same neurons, elementwise."""
    T, B, H, W, C = x.shape
    d = C // heads
    s = lif(f"{name}/lif_in", x)                                             # [T, B, H, W, C] bool
    y = conv(convs[f"{name}/kv"], s)                                         # [T, B, H/p, W/p, 2C]
    n_kv = y.shape[2] * y.shape[3]
    y = jnp.moveaxis(y.reshape(T, B, n_kv, heads, 2 * d), 3, 2)              # [T, B, h, N', 2d]
    y1, y2 = y[..., :d], y[..., d:]
    q = _spike_operand(f"{name}/matmul1", jnp.moveaxis(s.reshape(T, B, H * W, heads, d), 3, 2))   # [T, B, h, HW, d]
    per_head = lambda v: jnp.asarray(v, y.dtype)[:, None, None]              # noqa: E731  [h, 1, 1]
    events = impl == "events" and y.dtype in kernels.STATS_DTYPES           # float32/float64: the event matmul
    if events:                                          # y1ᵀq and a·y2 over the spikes of q and a only
        flat = lambda v: v.reshape((-1,) + v.shape[3:])                      # noqa: E731  [T·B·h, ...]
        attn = kernels.binary_matmul(flat(q).astype(kernels.BYTES), flat(jnp.swapaxes(y1, -1, -2)))
        attn = attn.reshape(T, B, heads, H * W, n_kv)                        # [T, B, h, HW, N']
    else:
        attn = jnp.swapaxes(dot("tbhnd,tbhmd->tbhnm", y1, q.astype(y.dtype)).astype(y.dtype), -1, -2)
    a = lif(f"{name}/lif_attn", attn, per_head(thresholds[name]["lif_attn"]), count_map=False)
    a = _spike_operand(f"{name}/matmul2", a)                                 # [T, B, h, HW, N'] bool
    if events:
        out = kernels.binary_matmul(flat(a).astype(kernels.BYTES), flat(y2)).reshape(T, B, heads, H * W, d)
    else:
        out = dot("tbhmn,tbhnd->tbhmd", a.astype(y.dtype), y2).astype(y.dtype)    # [T, B, h, HW, d]
    out = jnp.moveaxis(out, 2, 3).reshape(T, B, H, W, C)
    o = lif(f"{name}/lif_out", out, jnp.repeat(jnp.asarray(thresholds[name]["lif_out"], y.dtype), d))  # per channel
    return conv(convs[f"{name}/proj"], o) + x


# ----------------------------------------------------------------------------------------------------- fold
def fold(model, variables: Mapping[str, Any], conv_impl: str | None = None) -> DeployedModel:
    """The deploy form of ``model`` with ``variables`` (calibrated: BatchNorm running statistics and DSSA firing
    rates set, as after training or ``calibrate``). Folds in the parameters' dtype; computes in the model's
    dtype (None: the input's). ``conv_impl``: its lowering (default: the model's)."""
    from .model import check_calibrated
    if getattr(model, "neuron_fn", None) is not None:
        raise ValueError("deploy.fold folds the model's LIF/PLIF neurons (its tau, v_threshold); a model with a "
                         "neuron of its own (neuron_fn) has no deploy form")
    check_calibrated(variables)
    arch = model.config()
    params, stats, rates = variables["params"], variables["batch_stats"], variables["firing_rates"]
    weights = {}
    for c in architecture.convs(arch):
        p, st = _at(params, c.path), _at(stats, c.path)
        scale = p["bn"]["scale"] * jax.lax.rsqrt(st["bn"]["var"] + BN_EPS)                 # γ/σ per channel
        weights[f"{c.path}/kernel"] = p["kernel"] * scale
        weights[f"{c.path}/bias"] = p["bn"]["bias"] - st["bn"]["mean"] * scale
    if arch["activation"] == "PLIF":
        for n in architecture.neurons(arch):
            weights[f"{n.path}/w"] = _at(params, n.path)["w"]
    weights["classifier/kernel"] = params["classifier"]["kernel"]
    hw = model.stage_sizes(model.img_size)
    thresholds = {}
    for b in architecture.blocks(arch):
        if b.kind == "dssa":
            r, (h, w) = rates[b.path], hw[b.stage - 1]
            n_kv = (h // b.patch) * (w // b.patch)
            v_th = float(model.v_threshold)
            thresholds[b.path] = {"lif_attn": _thresholds(r["firing_rate_x"], b.channels // b.heads, v_th),
                                  "lif_out": _thresholds(r["firing_rate_attn"], n_kv, v_th)}
    size = (model.img_size, model.img_size)
    graph = {"format": FORMAT, "model": arch, "conv_impl": conv_impl or model.conv_impl,
             "dtype": jnp.dtype(model.dtype).name if model.dtype is not None else None,
             "input_hw": list(size), "thresholds": thresholds}
    return DeployedModel(graph, weights)


def _thresholds(rates, n: int, v_threshold: float = 1.0) -> list[float]:
    """The threshold V_th·√(r·n) per head that replaces the product scale c = 1/√(r·n) before a neuron of threshold
    V_th (c·y ≥ V_th ⇔ y ≥ V_th/c); a head whose rate is 0 (c = 0: nothing passes) never fires, an infinite
    threshold."""
    return [v_threshold * math.sqrt(float(v) * n) if v > 0 else math.inf for v in np.asarray(rates, np.float64)]


def _at(tree: Mapping, path: str):
    for part in path.split("/"):
        tree = tree[part]
    return tree


# --------------------------------------------------------------------------------------------- export / load
def export(fn: DeployedModel, path: str | os.PathLike) -> Path:
    """Writes ``fn`` as ``path/weights.safetensors`` (the tensors) and ``path/graph.json`` (architecture,
    thresholds, tensor manifest); atomically (a temporary directory renamed into place). No pickle."""
    from safetensors.numpy import save_file
    path = Path(path).absolute()
    if path.exists():
        raise FileExistsError(f"{path} already exists; remove it or choose another --out")
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        arrays = {k: np.asarray(v) for k, v in fn.weights.items()}
        save_file(arrays, str(tmp / WEIGHTS))
        graph = dict(fn.graph, tensors={k: {"shape": list(a.shape), "dtype": a.dtype.name} for k, a in arrays.items()})
        (tmp / GRAPH).write_text(json.dumps(graph, indent=1) + "\n")
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def load(path: str | os.PathLike, conv_impl: str = "auto") -> DeployedModel:
    """The deploy form written by ``export``. Every tensor the architecture needs must be there with its shape, and
    nothing else: otherwise ``DeployFileError`` lists the names. ``conv_impl``: the lowering on this machine
    ("auto": the platform's best; the exported one is not assumed to run here). Needs JAX only."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    path = Path(path)
    if not (path / GRAPH).is_file() or not (path / WEIGHTS).is_file():
        raise DeployFileError(f"{path}: expected a directory written by sresformer_jax.deploy.export ({GRAPH} and "
                              f"{WEIGHTS})")
    try:
        graph = json.loads((path / GRAPH).read_text())
    except json.JSONDecodeError as e:
        raise DeployFileError(f"{path / GRAPH}: not valid JSON ({e})") from None
    if graph.get("format") != FORMAT:
        raise DeployFileError(f"{path / GRAPH}: format {graph.get('format')!r}, expected {FORMAT!r}")
    try:
        weights = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError) as e:
        raise DeployFileError(f"{path / WEIGHTS}: not a readable safetensors file ({e})") from None
    trees.check_fits(weight_shapes(graph["model"]), weights, f"{path / WEIGHTS} does not match its graph",
                     DeployFileError)
    graph.pop("tensors", None)
    dtype = graph.get("dtype") and jnp.dtype(graph["dtype"])
    graph["conv_impl"] = resolve_conv_impl(conv_impl, dtype)
    return DeployedModel(graph, {k: jnp.asarray(v) for k, v in weights.items()})


# ------------------------------------------------------------------------------------------------------ CLI
def main(argv=None) -> int:
    """``python -m sresformer_jax.deploy export --checkpoint CKPT --out DIR``."""
    ap = argparse.ArgumentParser(prog="python -m sresformer_jax.deploy", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="fold a checkpoint and write its deploy form")
    ex.add_argument("--checkpoint", required=True, help="a training workdir, one of its step directories, or a model "
                                                        "checkpoint (sresformer_jax.convert)")
    ex.add_argument("--out", required=True, help="the directory to write (must not exist)")
    a = ap.parse_args(argv)
    from . import checkpoint
    from .model import build_model
    try:
        model_cfg, variables = checkpoint.load_variables(a.checkpoint)
        model = build_model(model_cfg, conv_impl="auto")
        out = export(fold(model, variables), a.out)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"deploy export: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}/{GRAPH} and {out}/{WEIGHTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
