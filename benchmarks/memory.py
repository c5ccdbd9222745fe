"""What the training step keeps for its backward pass, per image and per neuron-step, by kind, on XLA's lowering.

    python benchmarks/memory.py --model spikingresformer_ti --img-size 224 --T 4 --batch 2 \
        [--precision float32 bfloat16 float16] [--remat none block convs] [--no-compile]
        [--compile-precisions bfloat16] [--out PATH]

For every (precision, remat) pair: the residuals of the training loss's linearization (``jax.vjp``'s saved
values, listed by ``jax.ad_checkpoint``'s residual analysis) minus the parameters, summed by kind. The model
names its values where it makes them (``jax.ad_checkpoint.checkpoint_name``): ``spike_bytes`` (the int8 spikes a
convolution keeps) and ``spikes``, ``membrane`` (and PLIF's ``neuron_input``), ``bn_input``, ``conv_input``,
``attention_operand``, ``block_input``; anything unnamed is "other". The compute-dtype copies of the kernels
(``param_copy``; bf16 runs keep them) are parameter-sized whatever the batch, and reported apart. A neuron-step
is one element of one spiking layer's output (all layers, all T, the whole batch). Unless ``--no-compile``, it
also compiles the jitted train step and reports XLA's argument, output and temp bytes (``memory_analysis``) and
the FLOPs of the optimised program's cost analysis, from which the cost of each remat policy follows.

Nothing here runs the model: the residuals come from tracing, the rest from compilation, so a 224² model is
measured on any CPU. Prints a table and writes JSON (default ``benchmarks/results/backward_memory_cpu.json``, one
entry per model: a rerun replaces that model's).
"""
from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# checkpoint_name → kind in the report
KINDS = {"spike_bytes": "spikes", "spikes": "spikes", "membrane": "membranes", "neuron_input": "membranes",
         "bn_input": "BatchNorm inputs", "conv_input": "conv inputs", "attention_operand": "attention operands",
         "block_input": "block inputs", "bn_stats": "other", "param_copy": None}
ORDER = ("spikes", "membranes", "BatchNorm inputs", "conv inputs", "attention operands", "block inputs", "other")


DESCRIPTION = ("benchmarks/memory.py: bytes the training step keeps for its backward pass (jax.vjp residuals minus "
               "the parameters) by kind, per image and per neuron-step, on conv_impl='xla'; with 'compiled', XLA's "
               "memory_analysis and the FLOPs of the optimised program; one entry per model")


def kind_of(description: str) -> str | None:
    """The report's kind of one residual from its description (None: a parameter or its compute-dtype copy,
    which do not grow with the batch and are reported apart)."""
    if description.startswith("from the argument"):
        return None
    if description.startswith("named '"):
        name = description.split("'")[1]
        return KINDS[name] if name in KINDS else "other"
    return "other"


def neuron_steps(model, variables, images) -> int:
    """Elements of every spiking layer's output in a training forward (all T, all images), from shapes only."""
    import jax
    from flax import linen as nn

    from sresformer_jax.layers import Neuron
    from sresformer_jax.model import STATE_COLLECTIONS

    total = []

    def count(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, Neuron) and context.method_name == "__call__":
            total.append(out.size)
        return out

    def fwd(v, x):
        with nn.intercept_methods(count):
            return model.apply(v, x, train=True, mutable=list(STATE_COLLECTIONS))
    jax.eval_shape(fwd, variables, images)
    return int(sum(total))


def loss_fn(model, variables, images, labels, loss_config):
    """The train step's loss (``training.steps.training_loss``; the config's label smoothing, no mixup) as a
    function of the parameters."""
    from sresformer_jax.training.losses import smooth_targets
    from sresformer_jax.training.steps import training_loss
    state = {k: v for k, v in variables.items() if k != "params"}
    f = training_loss(model, state, images, smooth_targets(labels, model.num_classes, loss_config.label_smoothing),
                      loss_config)
    return lambda params: f(params)[0]


def residuals(f, params) -> list[tuple[int, str]]:
    """(bytes, description) of every value ``jax.vjp(f, params)`` keeps for the backward pass."""
    from jax._src.ad_checkpoint import saved_residuals   # the analysis behind jax.ad_checkpoint.print_saved_residuals
    return [(int(a.size) * a.dtype.itemsize, d) for a, d in saved_residuals(f, params)]


def measure(model_name: str, img_size: int, T: int, batch: int, precision: str, remat: str,
            compile_step: bool = True, num_classes: int | None = None) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sresformer_jax.configs.common import base_config, model_config
    from sresformer_jax.training.loss_scale import make_loss_scale
    from sresformer_jax.training.optim import make_optimizer
    from sresformer_jax.training.state import create_train_state
    from sresformer_jax.training.steps import train_step
    from sresformer_jax.model import build_model

    config = base_config()
    overrides = {} if num_classes is None else {"num_classes": num_classes}
    config.model = model_config(model_name, conv_impl="xla", img_size=img_size, T=T, **overrides)
    config.precision = precision
    model = build_model(config.model.to_dict(), precision, remat)
    tx, schedule = make_optimizer(config.optim, steps_per_epoch=1000)
    shape = (img_size, img_size, model.in_channels)
    state = jax.eval_shape(lambda r: create_train_state(model, tx, r, shape, loss_scale=make_loss_scale(precision)),
                           jax.random.PRNGKey(0))
    images = jax.ShapeDtypeStruct((batch,) + shape, jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    variables = state.variables()

    t0 = time.perf_counter()
    concrete = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables)   # traced only, never run
    f = loss_fn(model, concrete, jnp.zeros(images.shape), jnp.zeros((batch,), jnp.int32), config.loss)
    res = residuals(f, concrete["params"])
    by_kind, param_copies = dict.fromkeys(ORDER, 0), 0
    for nbytes, desc in res:
        k = kind_of(desc)
        if k is not None:
            by_kind[k] += nbytes
        elif "param_copy" in desc:
            param_copies += nbytes
    total = sum(by_kind.values())
    steps = neuron_steps(model, variables, images)
    out = {"model": model_name, "img_size": img_size, "T": T, "batch": batch, "precision": precision,
           "remat": remat, "conv_impl": model.conv_impl, "neuron_steps": steps,
           "num_params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(state.params))),
           "backward_bytes": total, "backward_bytes_per_image": total / batch,
           "backward_bytes_per_neuron_step": total / steps,
           "by_kind_bytes": by_kind, "param_copy_bytes": param_copies,
           "by_kind_bytes_per_neuron_step": {k: v / steps for k, v in by_kind.items()},
           "trace_s": time.perf_counter() - t0}
    if compile_step:
        from bench import _cost_flops, _memory_analysis
        step = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config),
                       donate_argnums=0)
        t0 = time.perf_counter()
        compiled = step.lower(state, {"image": images, "label": labels}).compile()
        # after optimisation: what a policy keeps is not recomputed (before it, the whole block appears twice)
        out["flops_per_step"] = _cost_flops(compiled)
        out["memory_analysis"] = _memory_analysis(compiled)
        out["compile_s"] = time.perf_counter() - t0
    return out


def table(rows: list[dict]) -> str:
    head = (["precision", "remat", "B/neuron-step", "MB/image", *ORDER]
            + ["param copies MB", "XLA temp MB", "GFLOP/step", "FLOPs vs none"])
    base = {r["precision"]: r.get("flops_per_step") for r in rows if r["remat"] == "none"}
    lines = [head]
    for r in rows:
        ma = r.get("memory_analysis") or {}
        fl, b = r.get("flops_per_step"), base.get(r["precision"])
        lines.append([r["precision"], r["remat"], f"{r['backward_bytes_per_neuron_step']:.2f}",
                      f"{r['backward_bytes_per_image'] / 1e6:.1f}"]
                     + [f"{r['by_kind_bytes_per_neuron_step'][k]:.2f}" for k in ORDER]
                     + [f"{r['param_copy_bytes'] / 1e6:.1f}",
                        f"{ma['temp_size_in_bytes'] / 1e6:.0f}" if "temp_size_in_bytes" in ma else "—",
                        f"{fl / 1e9:.1f}" if fl else "—", f"{fl / b:.2f}×" if fl and b else "—"])
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    fmt = lambda row: " | ".join(str(c).rjust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(lines[0]), "-+-".join("-" * w for w in widths)] + [fmt(r) for r in lines[1:]])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="spikingresformer_cifar")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--precision", nargs="+", default=["float32", "bfloat16"],
                   choices=["float32", "bfloat16", "float16"])
    p.add_argument("--remat", nargs="+", default=["none", "block", "convs"], choices=["none", "block", "convs"])
    p.add_argument("--no-compile", action="store_true", help="residuals only (no XLA memory analysis or FLOPs)")
    p.add_argument("--compile-precisions", nargs="+", default=None, choices=["float32", "bfloat16", "float16"],
                   help="compile only these precisions' steps (default: every one given; the others are traced)")
    p.add_argument("--out", default=str(HERE / "results" / "backward_memory_cpu.json"))
    a = p.parse_args(argv)
    import jax

    from bench import _commit, machine_info
    rows = []
    compiled = [] if a.no_compile else (a.compile_precisions or a.precision)
    for prec in a.precision:
        for remat in a.remat:
            r = measure(a.model, a.img_size, a.T, a.batch, prec, remat, prec in compiled, a.num_classes)
            print(f"{prec:9s} remat={remat:6s} {r['backward_bytes_per_neuron_step']:.2f} B/neuron-step "
                  f"({r['backward_bytes_per_image'] / 1e6:.1f} MB/image)", flush=True)
            rows.append(r)
    print(f"\n{a.model}, {a.img_size}², T = {a.T}, batch {a.batch}, conv_impl xla, commit {_commit()}, "
          f"{jax.devices()[0].platform}\n")
    print(table(rows))
    result = {"commit": _commit(), "machine": machine_info(), "settings": {"img_size": a.img_size, "T": a.T,
              "batch": a.batch, "compiled": [p for p in a.precision if p in compiled]}, "rows": rows}
    if a.out:                               # one file, one entry per model (a rerun replaces that model's)
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(out.read_text()) if out.exists() else {}
        old = old if isinstance(old, dict) and "rows" not in old else {}
        old["description"] = DESCRIPTION
        old[a.model] = result
        out.write_text(json.dumps(old, indent=1))
        print(f"wrote {a.model} into {a.out}")
    return result


if __name__ == "__main__":
    main()
