"""The training loop's steps lowered for any mesh without running anything (ahead-of-time compilation).

    from sresformer_jax.training import lower_steps
    train_lowered, eval_lowered = lower_steps(config, mesh, batch_per_device=32)
    compiled = train_lowered.compile()          # compiled.memory_analysis(), .cost_analysis(), .as_text()

``mesh`` may hold this machine's devices, real accelerators, or devices of a TPU topology that is not here
(``jax.experimental.topologies.get_topology_desc("v5e:2x2", "tpu").devices``, with ``jax[tpu]`` installed): the
programs are the ones ``train.py`` runs, built from the config's shapes alone, so a pod's per-chip memory and FLOPs
can be read on a laptop (``benchmarks/tpu_aot.py``).
"""
from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp

from ..model import build_model
from .config import validate_config
from .loss_scale import make_loss_scale
from .optim import make_optimizer
from .state import create_train_state
from .steps import jit_eval_step, jit_train_step, shardings


def input_shape(model) -> tuple[int, ...]:
    """One example's shape for ``model``: ``(H, W, C)``, or ``(T, H, W, C)`` for event frames."""
    hw = (model.img_size, model.img_size, model.in_channels)
    return (model.T, *hw) if model.dvs else hw


def lower_steps(config, mesh: jax.sharding.Mesh, batch_per_device: int, *, count_spikes: bool = False,
                steps_per_epoch: int = 1000) -> tuple[jax.stages.Lowered, jax.stages.Lowered]:
    """``(train_lowered, eval_lowered)``: the training loop's train step and eval step for ``config`` (a
    ``configs/*.py`` ``get_config()`` ConfigDict, overrides applied) on ``mesh`` (one data axis; any devices), at
    ``batch_per_device`` images per device, lowered from shapes alone (no data is read, nothing runs).

    The model's lowering is resolved for the mesh's platform ("auto" on TPU or GPU devices is "xla"); the global
    batch is ``batch_per_device`` × the mesh's devices, whatever ``config.batch_size`` says. ``count_spikes``: the
    evaluation step that also counts spikes (what ``eval.py`` runs); ``steps_per_epoch`` only sets the learning-rate
    schedule's constants."""
    if batch_per_device < 1:
        raise ValueError(f"batch_per_device must be >= 1, got {batch_per_device}")
    n = mesh.devices.size
    config = config.copy_and_resolve_references()
    config.batch_size = config.eval_batch_size = batch_per_device * n
    validate_config(config, device_count=n)
    platform = mesh.devices.flat[0].platform
    model = build_model(config.model.to_dict(), config.precision, config.get("remat", "none"), platform=platform)
    tx, schedule = make_optimizer(config.optim, steps_per_epoch)
    scale = make_loss_scale(config.precision, config.get("loss_scale"))
    replicated, data = shardings(mesh)
    shape = input_shape(model)
    state = jax.eval_shape(lambda r: create_train_state(model, tx, r, shape, loss_scale=scale),
                           jax.random.PRNGKey(config.seed))
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state)
    b = batch_per_device * n
    batch = {"image": jax.ShapeDtypeStruct((b, *shape), jnp.float32, sharding=data),
             "label": jax.ShapeDtypeStruct((b,), jnp.int32, sharding=data)}
    train = jit_train_step(model, tx, schedule, config, mesh).lower(state, batch)
    eval_step = jit_eval_step(model, mesh, count_spikes=count_spikes).sharded
    evaluate = eval_step.lower(state.variables(), {**batch, "mask": jax.ShapeDtypeStruct((b,), jnp.float32,
                                                                                          sharding=data)})
    return train, evaluate


COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8}
_OP = re.compile(r"=\s*(?P<shape>.*?)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\(")


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective of a compiled program: its kind, the bytes of its result, its shape and where it came from."""
    op: str
    bytes: int
    shape: str
    source: str


def collectives(compiled: jax.stages.Compiled) -> list[Collective]:
    """Every collective in ``compiled``'s optimised HLO (an asynchronous pair counted once, at its start)."""
    out = []
    for line in compiled.as_text().splitlines():
        m = _OP.search(line)
        if m is None:
            continue
        shape = m["shape"]
        if m["start"]:            # (operands, results[, context]): the results are the second element
            shape = _tuple_items(shape)[1] if shape.startswith("(") and len(_tuple_items(shape)) > 1 else shape
        nbytes = sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
                     for t, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape) if t in _BYTES)
        source = re.search(r'op_name="([^"]*)"', line)
        out.append(Collective(m["op"], nbytes, shape, source[1] if source else ""))
    return out


def _tuple_items(shape: str) -> list[str]:
    """The top-level items of an HLO tuple shape "(a, (b, c), d)"."""
    items, depth, start = [], 0, 1
    for i, ch in enumerate(shape):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if (ch == "," and depth == 1) or (ch == ")" and depth == 0):
            items.append(shape[start:i].strip())
            start = i + 1
    return items


def division_of_work(config, devices, batch_per_device: int) -> dict:
    """Whether each of ``devices`` computes only its shard: the train step and the spike-counting eval step lowered
    (``lower_steps``) and compiled on one of them and on all of them at the same per-device batch.

    Returns, per step ("train", "eval"): the per-device FLOPs on one device and on all, their ratio, the collective
    census of the program on all devices, and the collectives other than all-reduces (which would move activations);
    and the bytes of the parameters and statistics (what the all-reduces should move)."""
    from ..model import build_model
    from ..neurons import SPIKE_COUNTS
    from .steps import make_mesh
    devices = list(devices)
    out: dict = {"devices": len(devices), "batch_per_device": batch_per_device}
    for name, mesh in (("one", make_mesh(devices[:1])), ("all", make_mesh(devices))):
        train, evaluate = lower_steps(config, mesh, batch_per_device, count_spikes=True)
        for step, lowered in (("train", train), ("eval", evaluate)):
            compiled = lowered.compile()
            entry = out.setdefault(step, {})
            entry[f"flops_{name}"] = float(compiled.cost_analysis()["flops"])
            if name == "all":
                entry["census"] = census(compiled)
                entry["other_collectives"] = [dataclasses.asdict(c) for c in collectives(compiled)
                                              if c.op != "all-reduce"]
        state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), train.args_info[0][0])
    for step in ("train", "eval"):
        out[step]["flops_ratio"] = out[step]["flops_all"] / out[step]["flops_one"]
    variables = state.variables()
    model = build_model(config.model.to_dict(), conv_impl="xla")
    x = jax.ShapeDtypeStruct((batch_per_device, *input_shape(model)), jnp.float32)
    counts = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=[SPIKE_COUNTS])[1], variables, x)
    out["bytes"] = {k: _nbytes(v) for k, v in {**variables, "spike_counts": counts}.items()}
    return out


def _nbytes(tree) -> int:
    return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def census(compiled: jax.stages.Compiled) -> dict[str, dict[str, int]]:
    """``{op: {"count": n, "bytes": b}}`` of the collectives in ``compiled``."""
    out: dict[str, dict[str, int]] = {}
    for c in collectives(compiled):
        entry = out.setdefault(c.op, {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += c.bytes
    return out
