"""Training- and evaluation-step benchmark of a SpikingResformer variant, optionally side by side with the
official PyTorch implementation (a checkout the user supplies).

    python benchmarks/bench.py --model spikingresformer_cifar --img-size 32 --T 4 --batch 32 [--num-classes 10]
        [--steps 3] [--warmup 1] [--precision float32|bfloat16|float16] [--conv-impl auto|xla|slices|events]
        [--remat none|block|convs]
        [--host-memory huge|system|retain|jemalloc|tcmalloc|mimalloc] [--out PATH]
        [--official-dir DIR --official-python PYTHON [--official-host-memory same|...] [--official-amp]]
        [--max-batch CAP]

Each side runs in a process of its own, started with the host-allocator environment its flag names
(``sresformer_jax.runtime.ALLOCATORS``; ``--official-host-memory same``, the default, gives the official process
ours), so that both sides can run on the same allocator and neither inherits the other's memory. Ours is this
file run with ``--worker``; the official side is ``benchmarks/official_step.py``, run by path with
``--official-python`` and the checkout on ``PYTHONPATH``.

Ours uses the trainer's own construction: the optimizer and loss of ``configs.common.base_config()``,
``training.state.create_train_state``, and ``training.steps.train_step`` / ``eval_step`` jitted with the state
donated. Reported: images/s (median over the timed steps after warm-up, each ended by ``block_until_ready``),
compile time, FLOPs per step (XLA's cost analysis of the same step on native convolutions) and the achieved
dense-equivalent FLOP/s as a fraction of a dense fp32 matmul peak measured in the same process, peak memory
(CPU: process peak RSS and XLA's ``memory_analysis``; GPU/TPU: ``device.memory_stats()``), the lowering, and
the mean firing rate of the benchmarked batch (the event kernels' speed depends on it).

Prints a table and writes JSON to ``--out`` (default ``benchmarks/results/train_eval_step_<device>.json``).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from timing import BENCH_JSON_PREFIX, peak_rss_bytes, timed    # benchmarks/timing.py, shared with the official side

from sresformer_jax import runtime

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    import jax
    import jaxlib
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": getattr(dev, "device_kind", "unknown"),
            "device_count": jax.device_count(), "cpu_model": cpu_model(), "nproc": os.cpu_count(),
            "os": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__}


def device_tag(machine: dict | None) -> str:
    """"cpu", or the platform and device kind (e.g. "gpu_nvidia_h200") of a ``machine_info``."""
    if not machine or machine["platform"] == "cpu":
        return "cpu"
    kind = "".join(c if c.isalnum() else "_" for c in machine["device_kind"]).strip("_")
    return f"{machine['platform']}_{kind}".lower()


# ------------------------------------------------------------------------------------------------ helpers
def _block(tree):
    import jax
    return jax.block_until_ready(tree)


def _cost_flops(compiled) -> float | None:
    try:
        ca = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca or "flops" not in ca:
        return None
    return float(ca["flops"])


def model_flops(step_fn, model, *args) -> float | None:
    """FLOPs of one call of ``step_fn(..., model=model)`` from XLA's cost analysis of the same step of the same
    model lowered with native convolutions (``conv_impl="xla"``, grouped ones counted exactly) before
    optimisation, so that the count is the model's arithmetic whatever lowering runs it (a scan over conv taps
    would otherwise be counted once instead of k² times; the neurons' elementwise work inside their scans is
    still counted once per scan, a small part of the total)."""
    import jax
    dense = model.clone(conv_impl="xla")
    return _cost_flops(jax.jit(functools.partial(step_fn, model=dense)).lower(*args))


def _memory_analysis(compiled) -> dict[str, int] | None:
    try:
        ma = compiled.memory_analysis()
    except Exception:  # noqa: BLE001
        return None
    if ma is None:
        return None
    out = {}
    for k in ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes",
              "generated_code_size_in_bytes"):
        v = getattr(ma, k, None)
        if v is not None:
            out[k] = int(v)
    if {"argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes"} <= set(out):
        out["total_estimate_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                       - out.get("alias_size_in_bytes", 0) + out["temp_size_in_bytes"])
    return out


def _device_memory() -> dict[str, int] | None:
    import jax
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    if not stats:
        return None
    return {k: int(v) for k, v in stats.items() if k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")}


def matmul_peak(n: int = 2048, reps: int = 5, dtype: str = "float32") -> dict[str, Any]:
    """Dense n×n @ n×n matmul FLOP/s on the default device (median of ``reps`` after one warm-up)."""
    import jax
    import jax.numpy as jnp
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    f = jax.jit(jnp.matmul)
    _block(f(a, b))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        _block(f(a, b))
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"n": n, "dtype": dtype, "reps": reps, "median_s": t, "flops_per_s": 2.0 * n ** 3 / t}


def calibrated_batch_stats(model, variables: dict, images) -> dict:
    """``variables`` with every BatchNorm's running statistics set to those of a training-mode forward on
    ``images`` (each layer's batch statistics, recovered exactly from one running update r' = (1 − m)·r +
    m·s). Evaluation then fires like the training step. An untrained model's running statistics make it
    nearly silent in evaluation, and the event kernels' work scales with the spikes: timing that would
    flatter the evaluation step."""
    import jax

    from sresformer_jax.layers import BatchNorm

    momentum = BatchNorm.momentum                     # the model's BatchNorms use the default
    _, new = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats", "firing_rates"]))(
        variables, images)
    stats = jax.tree.map(lambda r1, r0: (r1 - (1 - momentum) * r0) / momentum, new["batch_stats"],
                         variables["batch_stats"])
    return {**variables, "batch_stats": stats}


# ---------------------------------------------------------------------------------------------- ours (JAX)
def bench_ours(model_name: str, img_size: int, T: int, batch: int, num_classes: int = 10, steps: int = 3,
               warmup: int = 1, precision: str = "float32", model_overrides: dict | None = None,
               peak_flops: float | None = None, log=print, remat: str = "none", conv_impl: str = "auto",
               train_only: bool = False) -> dict[str, Any]:
    """Times our jitted train and eval steps, built as the trainer builds them; returns a JSON-able dict."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sresformer_jax.configs.common import base_config, model_config
    from sresformer_jax.energy import spike_totals
    from sresformer_jax.model import count_params
    from sresformer_jax.training.optim import make_optimizer
    from sresformer_jax.training.loss_scale import make_loss_scale
    from sresformer_jax.training.state import create_train_state
    from sresformer_jax.training.steps import eval_step, train_step
    from sresformer_jax.model import build_model
    from sresformer_jax.ops import describe

    config = base_config()
    config.precision = precision
    config.model = model_config(model_name, conv_impl=conv_impl, num_classes=num_classes, img_size=img_size, T=T,
                                **(model_overrides or {}))
    model = build_model(config.model.to_dict(), precision, remat)
    tx, schedule = make_optimizer(config.optim, steps_per_epoch=1000)
    input_shape = (img_size, img_size, model.in_channels)

    t0 = time.perf_counter()
    scale = make_loss_scale(precision)                  # float16: GradScaler's dynamic scaling, as in training
    state = _block(jax.jit(lambda r: create_train_state(model, tx, r, input_shape, loss_scale=scale))(
        jax.random.PRNGKey(0)))
    init_s = time.perf_counter() - t0
    log(f"[ours] init {init_s:.1f}s, {count_params(state.params):,} params, conv_impl {describe(model.conv_impl)}")

    data_rng = jax.random.PRNGKey(1)
    images = jax.random.normal(data_rng, (batch,) + input_shape, jnp.float32)
    labels = jnp.asarray(np.arange(batch) % num_classes, jnp.int32)
    train_batch = {"image": images, "label": labels}
    eval_batch = {"image": images, "label": labels, "mask": jnp.ones((batch,), jnp.float32)}

    step = functools.partial(train_step, tx=tx, schedule=schedule, config=config)
    train_fn = jax.jit(functools.partial(step, model=model), donate_argnums=0)
    t0 = time.perf_counter()
    train_c = train_fn.lower(state, train_batch).compile()
    train_compile_s = time.perf_counter() - t0
    log(f"[ours] train step compiled in {train_compile_s:.1f}s")

    holder = {"state": state}

    def run_train():
        holder["state"], m = train_c(holder["state"], train_batch)
        holder["metrics"] = _block(m)

    warm_train = timed(run_train, warmup)
    train_times = timed(run_train, steps)
    log(f"[ours] train step median {statistics.median(train_times):.2f}s ({train_times})")
    if train_only:
        return {"train_step_s": statistics.median(train_times), "train_step_s_all": train_times,
                "compile_s": train_compile_s, "peak_rss_bytes": peak_rss_bytes(), "device_memory": _device_memory(),
                "minor_page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt,
                "host_allocator": runtime.describe()}

    eval_fn = jax.jit(functools.partial(eval_step, model=model))
    variables = calibrated_batch_stats(model, holder["state"].variables(), images)
    t0 = time.perf_counter()
    eval_c = eval_fn.lower(variables, eval_batch).compile()
    eval_compile_s = time.perf_counter() - t0
    log(f"[ours] eval step compiled in {eval_compile_s:.1f}s")
    run_eval = lambda: _block(eval_c(variables, eval_batch))  # noqa: E731
    warm_eval = timed(run_eval, warmup)
    eval_times = timed(run_eval, steps)
    log(f"[ours] eval step median {statistics.median(eval_times):.2f}s ({eval_times})")

    if precision == "float32":
        deploy_res, latency = bench_deploy(model, variables, images, max(steps, 3), log)
    else:                                  # the deploy form is a float32 inference program
        deploy_res, latency = None, None

    # The event kernels' speed depends on how many neurons fire: the rate of the benchmarked batch.
    _, counts = jax.jit(functools.partial(eval_step, model=model, count_spikes=True))(variables, eval_batch)
    totals = spike_totals(counts)
    firing_rate = sum(t for t, _ in totals.values()) / max(1, sum(n for _, n in totals.values()))
    log(f"[ours] mean firing rate of the benchmarked batch {100 * firing_rate:.2f} %")

    train_flops = model_flops(step, model, holder["state"], train_batch)
    eval_flops = model_flops(eval_step, model, variables, eval_batch)

    def summary(times, warm, compile_s, compiled, flops):
        med = statistics.median(times)
        out = {"step_s_median": med, "step_s_all": times, "warmup_s": warm, "images_per_s": batch / med,
               "compile_s": compile_s, "flops_per_step": flops,
               "flops_per_s": flops / med if flops else None,
               "memory_analysis": _memory_analysis(compiled)}
        if flops and peak_flops:
            out["fraction_of_matmul_peak"] = flops / med / peak_flops
        return out

    return {"model": model_name, "model_config": model.config(), "precision": precision,
            "conv_impl": model.conv_impl, "mean_firing_rate": firing_rate, "num_params": count_params(state.params),
            "init_s": init_s, "host_allocator": runtime.describe(),
            "train": summary(train_times, warm_train, train_compile_s, train_c, train_flops),
            "eval": summary(eval_times, warm_eval, eval_compile_s, eval_c, eval_flops),
            "deploy": deploy_res,
            "batch1_latency_s": latency,
            "peak_rss_bytes": peak_rss_bytes(), "device_memory": _device_memory(),
            "last_train_metrics": {k: float(v) for k, v in holder["metrics"].items()}}


def bench_deploy(model, variables, images, steps: int, log) -> tuple[dict | None, dict]:
    """The deploy form (BatchNorm and the DSSA scales folded, spikes as bool) at the benchmark's batch, and the
    batch-1 latency of both forms. The deploy form needs set firing rates; without them it is skipped, said why."""
    import jax

    from sresformer_jax import deploy
    from sresformer_jax.attention import FiringRatesNotSetError

    one = images[:1]
    eval_one = jax.jit(lambda v, x: model.apply(v, x, train=False))
    try:
        fn = deploy.fold(model, variables)
    except FiringRatesNotSetError as e:
        log(f"[ours] deploy form skipped: {e}")
        _block(eval_one(variables, one))
        return None, {"eval": statistics.median(timed(lambda: _block(eval_one(variables, one)), 10))}
    run_deploy = lambda x: (lambda: _block(fn(x)))  # noqa: E731
    t0 = time.perf_counter()
    _block(fn(images))
    compile_s = time.perf_counter() - t0
    times = timed(run_deploy(images), steps)
    _block(eval_one(variables, one))
    _block(fn(one))
    latency = {"eval": statistics.median(timed(lambda: _block(eval_one(variables, one)), 10)),
               "deploy": statistics.median(timed(run_deploy(one), 10))}
    log(f"[ours] deploy form median {statistics.median(times):.2f}s ({times}); batch-1 latency "
        f"{1e3 * latency['eval']:.0f} ms (training form) / {1e3 * latency['deploy']:.0f} ms (deploy form)")
    return {"step_s_median": statistics.median(times), "step_s_all": times,
            "images_per_s": images.shape[0] / statistics.median(times), "compile_s": compile_s}, latency


def worker(a) -> dict[str, Any]:
    """``--worker``: our side, in the process the launcher started (its allocator environment)."""
    info = machine_info()
    if a.probe_train_step:                 # one step for --max-batch; the exit status says whether it fit
        bench_ours(a.model, a.img_size, a.T, a.batch, a.num_classes, 1, 0, a.precision, overrides(a), remat=a.remat,
                   conv_impl=a.conv_impl, train_only=True, log=lambda *_: None)
        return {}
    if a.train_only:                       # benchmarks/host_allocator.py: training steps only
        return {**bench_ours(a.model, a.img_size, a.T, a.batch, a.num_classes, a.steps, a.warmup, a.precision,
                             overrides(a), remat=a.remat, conv_impl=a.conv_impl, train_only=True,
                             log=lambda *_: None),
                "machine": info}
    peak = matmul_peak(a.matmul_size)
    print(f"[ours] matmul peak ({a.matmul_size}² fp32): {peak['flops_per_s'] / 1e9:.1f} GFLOP/s", flush=True)
    res = bench_ours(a.model, a.img_size, a.T, a.batch, a.num_classes, a.steps, a.warmup, a.precision,
                     overrides(a), peak_flops=peak["flops_per_s"], remat=a.remat, conv_impl=a.conv_impl,
                     log=lambda m: print(m, flush=True))
    return {**res, "machine": info, "matmul_peak": peak}


# -------------------------------------------------------------------------------- launching each side
def _launch(cmd: list[str], env: dict[str, str], timeout: float | None, cwd=None, echo: bool = True) -> dict:
    """Runs one side's process, echoing its progress lines; returns its BENCH_JSON record, or
    ``{"error", "stderr_tail", "stdout_tail"}``."""
    try:
        p = subprocess.run(cmd, env=env, cwd=cwd, text=True, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    for line in p.stdout.splitlines():
        if line.startswith(BENCH_JSON_PREFIX):
            return json.loads(line[len(BENCH_JSON_PREFIX):])
        if echo:
            print(line, flush=True)
    return {"error": f"exit {p.returncode}", "stderr_tail": p.stderr[-3000:], "stdout_tail": p.stdout[-1000:]}


def overrides(a) -> dict[str, Any]:
    """``--override key=value`` as model config overrides (values as Python literals: ``planes=(8,16,32)``)."""
    import ast
    out = {}
    for item in a.override:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--override {item!r}: expected key=value, e.g. planes=(8,16,32)")
        out[key] = ast.literal_eval(value)
    return out


def worker_cmd(a, batch: int | None = None, probe: bool = False) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", a.model, "--img-size",
           str(a.img_size), "--T", str(a.T), "--batch", str(batch or a.batch), "--num-classes", str(a.num_classes),
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--precision", a.precision, "--conv-impl",
           a.conv_impl, "--matmul-size", str(a.matmul_size)]
    cmd += [f"--override={o}" for o in a.override]
    return cmd + ["--remat", a.remat] + (["--probe-train-step"] if probe else [])


def bench_official(a, batch: int | None = None, steps: int | None = None, warmup: int | None = None,
                   echo: bool = True) -> dict[str, Any]:
    """``benchmarks/official_step.py`` with ``--official-python``, the checkout on PYTHONPATH, and the host
    allocator of ``--official-host-memory``; returns its JSON (``{"error": ...}`` on failure)."""
    d = Path(a.official_dir).expanduser().resolve()
    if not (d / "models" / "spikingresformer.py").is_file():
        raise FileNotFoundError(f"--official-dir {a.official_dir}: no models/spikingresformer.py there; pass the "
                                "root of a clone of https://github.com/xyshi2000/SpikingResformer")
    cfg = dict(model=a.model, img_size=a.img_size, T=a.T, batch=batch or a.batch, num_classes=a.num_classes,
               steps=a.steps if steps is None else steps, warmup=a.warmup if warmup is None else warmup,
               allow_timm_stub=not a.no_timm_stub, device=a.official_device, amp=a.official_amp)
    allocator = a.host_memory if a.official_host_memory == "same" else a.official_host_memory
    env = runtime.allocator_env(allocator)
    env["PYTHONPATH"] = str(d)                      # the checkout, and not this repository
    if echo:
        print(f"[official] {a.official_python} {HERE / 'official_step.py'} (checkout {d}, allocator {allocator})")
    t0 = time.perf_counter()
    res = _launch([a.official_python, str(HERE / "official_step.py"), json.dumps(cfg)], env, a.official_timeout,
                  cwd=d, echo=echo)
    if "error" not in res:
        res.update(python=a.official_python, official_dir=str(d), wall_s=time.perf_counter() - t0,
                   host_allocator=runtime.describe(env))
        try:
            res["official_commit"] = subprocess.run(["git", "-C", str(d), "rev-parse", "HEAD"], text=True,
                                                    capture_output=True, timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            res["official_commit"] = None
    return res


# ------------------------------------------------------------------------------------------ largest batch
OOM_MARKERS = ("resource_exhausted", "out of memory", "outofmemory", "oom when allocating",
               "failed to allocate", "cannot allocate memory")


def is_oom(text: str) -> bool:
    """Whether an error text reports running out of (device or host) memory."""
    t = text.lower()
    return any(m in t for m in OOM_MARKERS)


def largest_batch(fits, start: int, cap: int, log=print) -> dict[str, Any]:
    """Doubles the batch from ``start`` while ``fits(batch)`` (True / False on out-of-memory) and ≤ ``cap``.
    Returns {"largest_fitting": b or None, "first_failing": b or None, "cap": cap}; ``fits`` raising means
    an error that is not out-of-memory, which is reported, not taken for a limit."""
    ok, b = None, start
    while b <= cap:
        fit = fits(b)
        log(f"  batch {b}: {'fits' if fit else 'out of memory'}")
        if not fit:
            return {"largest_fitting": ok, "first_failing": b, "cap": cap}
        ok, b = b, 2 * b
    return {"largest_fitting": ok, "first_failing": None, "cap": cap}


def probe_ours(a, batch: int) -> bool:
    """One training step of ours at ``batch`` in a fresh process (so an OOM leaves nothing behind)."""
    r = _launch(worker_cmd(a, batch, probe=True), runtime.allocator_env(a.host_memory), None, echo=False)
    if "error" not in r:
        return True
    if is_oom(r.get("stderr_tail", "") + r.get("stdout_tail", "")):
        return False
    raise RuntimeError(f"ours at batch {batch} failed without running out of memory:\n{r.get('stderr_tail')}")


def probe_official(a, batch: int) -> bool:
    r = bench_official(a, batch, steps=1, warmup=0, echo=False)
    if "error" not in r:
        return True
    if is_oom(r.get("stderr_tail", "") + r.get("stdout_tail", "")):
        return False
    raise RuntimeError(f"official at batch {batch} failed without running out of memory: {r}")


# ------------------------------------------------------------------------------------------------- report
def _fmt(v, spec=".2f", unit=""):
    return "—" if v is None else f"{v:{spec}}{unit}"


def table(result: dict) -> str:
    ours, off = result.get("ours"), result.get("official")
    if off is not None and "error" in off:
        off = None
    gb = 1 / 2 ** 30
    rows = [("", "ours (JAX)", "official (PyTorch)", "ours/official")]

    def add(name, a, b, spec=".2f", ratio=True):
        r = a / b if (ratio and a is not None and b) else None
        rows.append((name, _fmt(a, spec), _fmt(b, spec), _fmt(r, ".2f", "×")))

    g = lambda d, *ks: functools.reduce(lambda x, k: (x or {}).get(k), ks, d)  # noqa: E731
    add("train images/s", g(ours, "train", "images_per_s"), g(off, "train", "images_per_s"))
    add("train step s (median)", g(ours, "train", "step_s_median"), g(off, "train", "step_s_median"))
    add("eval images/s", g(ours, "eval", "images_per_s"), g(off, "eval", "images_per_s"))
    add("eval step s (median)", g(ours, "eval", "step_s_median"), g(off, "eval", "step_s_median"))
    add("deploy-form eval images/s", g(ours, "deploy", "images_per_s"), g(off, "eval", "images_per_s"))
    ms = lambda v: v * 1e3 if v is not None else None  # noqa: E731
    add("batch-1 eval latency ms", ms(g(ours, "batch1_latency_s", "eval")), ms(g(off, "batch1_latency_s", "eval")),
        ".1f")
    add("batch-1 deploy-form latency ms", ms(g(ours, "batch1_latency_s", "deploy")),
        ms(g(off, "batch1_latency_s", "eval")), ".1f")
    pr = lambda d: d["peak_rss_bytes"] * gb if d else None  # noqa: E731
    add("peak RSS GiB", pr(ours), pr(off))
    dm = lambda d: (d.get("device_memory") or {}).get("peak_bytes_in_use") if d else None  # noqa: E731
    od = off.get("device_peak_bytes") if off else None
    if dm(ours) or od:
        add("device peak GiB", dm(ours) * gb if dm(ours) else None, od * gb if od else None)
    lb = lambda k: (result.get(k) or {}).get("largest_fitting")  # noqa: E731
    if result.get("ours_largest_batch") or result.get("official_largest_batch"):
        add("largest train batch", lb("ours_largest_batch"), lb("official_largest_batch"), ".0f")
    ma = g(ours, "train", "memory_analysis", "total_estimate_bytes")
    add("XLA train buffers GiB", ma * gb if ma else None, None, ratio=False)
    add("train compile s", g(ours, "train", "compile_s"), None, ".1f", False)
    add("eval compile s", g(ours, "eval", "compile_s"), None, ".1f", False)
    f = g(ours, "train", "flops_per_step")
    # FLOPs of the dense model (XLA's count with native convolutions); the event kernels skip the zeros, so
    # on CPU the rates below are dense-equivalent ones.
    add("train GFLOP/step (dense model)", f / 1e9 if f else None, None, ".1f", False)
    fs = g(ours, "train", "flops_per_s")
    add("train GFLOP/s (dense-equiv.)", fs / 1e9 if fs else None, None, ".1f", False)
    add("train % of matmul peak", (g(ours, "train", "fraction_of_matmul_peak") or 0) * 100 or None, None,
        ".1f", False)
    fe = g(ours, "eval", "flops_per_s")
    add("eval GFLOP/s (dense-equiv.)", fe / 1e9 if fe else None, None, ".1f", False)
    add("eval % of matmul peak", (g(ours, "eval", "fraction_of_matmul_peak") or 0) * 100 or None, None,
        ".1f", False)
    rows.append(("host allocator", (ours or {}).get("host_allocator", "—"), (off or {}).get("host_allocator", "—"),
                 ""))
    rows.append(("conv_impl", (ours or {}).get("conv_impl", "—"), "—", ""))
    fr = g(ours, "mean_firing_rate")
    add("mean firing rate %", fr * 100 if fr is not None else None, None, ".2f", False)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="spikingresformer_cifar")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="a model config override of ours, e.g. --override planes=(8,16,32) (repeatable)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--conv-impl", default="auto", choices=["auto", "xla", "slices", "events"],
                   help="our model's lowering (config.model.conv_impl)")
    p.add_argument("--remat", nargs="?", const="block", default="none", choices=["none", "block", "convs"],
                   help="remat policy per DSSA/GWFFN block (config.remat; bare --remat: block)")
    p.add_argument("--host-memory", default="huge", choices=runtime.ALLOCATORS,
                   help="the host allocator our process starts with (sresformer_jax/runtime.py)")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n×n fp32 matmul peak reference")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/train_eval_step_<device>.json)")
    p.add_argument("--official-dir", default=None, help="root of a clone of xyshi2000/SpikingResformer")
    p.add_argument("--official-python", default=sys.executable,
                   help="interpreter with torch, spikingjelly==0.0.0.0.14 (and timm) for the official side")
    p.add_argument("--official-timeout", type=float, default=None, help="seconds; default no limit")
    p.add_argument("--no-timm-stub", action="store_true",
                   help="fail instead of stubbing timm's register_model when timm cannot be imported")
    p.add_argument("--skip-ours", action="store_true", help="only run the official side")
    p.add_argument("--official-device", default="cpu", choices=["cpu", "cuda"],
                   help="where the official side runs (cuda: SpikingJelly's cupy neurons if CuPy imports)")
    p.add_argument("--official-host-memory", default="same", choices=("same", *runtime.ALLOCATORS),
                   help="the official process's host allocator: the same as ours (default), glibc's defaults "
                        "(system, the way it ships), or another; retain is its fastest on CPU")
    p.add_argument("--official-amp", action="store_true",
                   help="official side under autocast: fp16 + GradScaler on cuda (its recipe), bf16 on cpu")
    p.add_argument("--max-batch", type=int, default=0,
                   help="also find the largest training batch that fits, doubling from --batch up to this cap "
                        "(each probe a fresh process)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--probe-train-step", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(BENCH_JSON_PREFIX + json.dumps(worker(a)), flush=True)
        return {}

    result: dict[str, Any] = {
        "settings": {k: getattr(a, k) for k in ("model", "img_size", "T", "batch", "num_classes", "steps",
                                                "warmup", "precision", "conv_impl", "remat", "host_memory",
                                                "official_host_memory")} | {"statistic": "median"},
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg_start": loadavg(),
        "commit": _commit()}
    print(f"commit {result['commit']}, {cpu_model()}, {os.cpu_count()} cores, load {result['loadavg_start']}")
    # Order: the official side and every batch probe (each its own process) before ours, so that nothing ours
    # holds on an accelerator shrinks what they can use.
    if a.official_dir:
        if a.precision != "float32":
            print("[official] note: the official side runs float32" + (
                " with autocast" if a.official_amp else " (--official-amp: under autocast)"))
        result["official"] = bench_official(a)
        if "error" in result["official"]:
            print(f"[official] FAILED: {result['official']['error']}\n{result['official'].get('stderr_tail', '')}")
    if a.max_batch:
        if a.official_dir:
            print(f"[official] largest training batch (doubling from {a.batch}, cap {a.max_batch}):")
            result["official_largest_batch"] = largest_batch(lambda b: probe_official(a, b), a.batch, a.max_batch)
        if not a.skip_ours:
            print(f"[ours] largest training batch (doubling from {a.batch}, cap {a.max_batch}):")
            result["ours_largest_batch"] = largest_batch(lambda b: probe_ours(a, b), a.batch, a.max_batch)
    if not a.skip_ours:
        result["ours"] = _launch(worker_cmd(a), runtime.allocator_env(a.host_memory), None)
        if "error" in result["ours"]:
            print(f"[ours] FAILED: {result['ours']['error']}\n{result['ours'].get('stderr_tail', '')}")
            result["ours"] = None
        else:
            result["machine"] = result["ours"].pop("machine")
            result["matmul_peak"] = result["ours"].pop("matmul_peak")
    ours, off = result.get("ours"), result.get("official")
    ratio = {}
    if ours and off and "error" not in off:
        ratio = {"train_images_per_s": ours["train"]["images_per_s"] / off["train"]["images_per_s"],
                 "eval_images_per_s": ours["eval"]["images_per_s"] / off["eval"]["images_per_s"],
                 "peak_rss": ours["peak_rss_bytes"] / off["peak_rss_bytes"]}
        if ours.get("deploy"):
            ratio["deploy_eval_images_per_s"] = ours["deploy"]["images_per_s"] / off["eval"]["images_per_s"]
    mine, theirs = ((result.get(k) or {}).get("largest_fitting") for k in ("ours_largest_batch",
                                                                            "official_largest_batch"))
    if mine and theirs:
        ratio["largest_batch"] = mine / theirs
    if ratio:
        result["ratio_ours_over_official"] = ratio
    result["loadavg_end"] = loadavg()
    print(table(result))
    tag = device_tag(result.get("machine"))
    out = Path(a.out) if a.out else HERE / "results" / f"train_eval_step_{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], text=True,
                              capture_output=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    main()
