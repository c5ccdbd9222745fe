"""Training- and evaluation-step benchmark of a SpikingResformer variant, optionally side by side with the
official PyTorch implementation (run from a checkout the user supplies, in a separate Python process).

    python bench.py --model spikingresformer_cifar --img-size 32 --T 4 --batch 32 [--num-classes 10]
                    [--steps 3] [--warmup 1] [--precision float32|bfloat16] [--out PATH]
                    [--official-dir /path/to/SpikingResformer --official-python /path/offenv/bin/python]

Ours: the project's ``train_step`` (forward, backward, AdamW update, state donated) and ``eval_step``, jitted
on the default device. Reported: images/s (median over the timed steps after warm-up, each ended by
``block_until_ready``), compile time, FLOPs per step (``compiled.cost_analysis()``) and achieved FLOP/s as a
fraction of a dense fp32 matmul peak measured in the same run, peak memory (CPU: process peak RSS and XLA's
``compiled.memory_analysis()``; GPU/TPU: ``device.memory_stats()``).

Official (``--official-dir``): a subprocess with ``--official-python`` (default: this interpreter) imports
``models.spikingresformer`` from the checkout, switches every SpikingJelly neuron to the ``torch`` backend
(the official code hard-codes ``cupy``), and times the same step: AdamW, cross-entropy (label smoothing 0.1)
on ``output.mean(0)``, ``functional.reset_net`` after each step; evaluation under ``torch.no_grad`` in
``eval()`` mode. It prints one JSON line. See docs/performance.md for setting up that environment.

Both sides run on the same allocator settings: ``bench.py`` restarts itself with glibc's huge pages on, as
``train.py`` does (``sresformer_jax/runtime.py``), and the official process inherits ``GLIBC_TUNABLES``.
``--official-host-memory system`` runs the official side on glibc's defaults instead, the way it ships;
``retain`` gives it glibc settings that keep freed memory in the process (its fastest; ``runtime.RETAIN_ENV``).

Writes JSON to ``--out`` (default ``benchmarks/results/bench_<device>.json``) and prints a table.
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

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from sresformer_jax import runtime  # noqa: E402  (light: imports no JAX)
BENCH_JSON_PREFIX = "BENCH_JSON:"


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


def peak_rss_bytes() -> int:
    """Peak resident set size of this process: ``VmHWM`` from /proc/self/status where there is one, else
    ``ru_maxrss`` (KiB on Linux, bytes on macOS). On Linux a child started by fork+exec inherits its parent's
    ``ru_maxrss``, so the official subprocess reads ``VmHWM`` (its own address space's high-water mark)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def machine_info() -> dict[str, Any]:
    import jax
    import jaxlib
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": getattr(dev, "device_kind", "unknown"),
            "device_count": jax.device_count(), "cpu_model": cpu_model(), "nproc": os.cpu_count(),
            "os": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__}


def device_tag() -> str:
    import jax
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return "cpu"
    kind = "".join(c if c.isalnum() else "_" for c in getattr(dev, "device_kind", dev.platform)).strip("_")
    return f"{dev.platform}_{kind}".lower()


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


def model_flops(step_fn, *args) -> float | None:
    """FLOPs of one call of ``step_fn`` (a function to jit) from XLA's cost analysis of the program lowered
    with native convolutions (``lax.conv``, grouped ones counted exactly) before optimisation, so the count
    is the model's arithmetic whatever lowering runs it: the CPU lowering's scans over conv taps would
    otherwise be counted once instead of k² times. (Elementwise work inside the neurons' scans is counted
    once per scan, not per time step: a small part of the total.)"""
    import jax

    from sresformer_jax import layers
    saved, layers.CONV_IMPL = layers.CONV_IMPL, "xla"
    try:
        return _cost_flops(jax.jit(step_fn).lower(*args))       # a fresh jit: CONV_IMPL is read at trace time
    finally:
        layers.CONV_IMPL = saved


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


# ---------------------------------------------------------------------------------------------- ours (JAX)
def bench_config(precision: str = "float32"):
    """The smallest training config ``train_step`` reads (official AdamW / loss defaults, no mixup)."""
    import ml_collections
    return ml_collections.ConfigDict(dict(
        precision=precision,
        optim=dict(lr=1e-3, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, epochs=300, warmup_epochs=3,
                   warmup_lr=1e-5, min_lr=1e-5, schedule_per_step=False),
        loss=dict(label_smoothing=0.1, tet=False, tet_phi=1.0, tet_lambda=0.0),
        mixup=dict(enabled=False, mixup_alpha=0.0, cutmix_alpha=0.0, prob=1.0, switch_prob=0.5)))


def _timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


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


def bench_ours(model_name: str, img_size: int, T: int, batch: int, num_classes: int = 10, steps: int = 3,
               warmup: int = 1, precision: str = "float32", model_overrides: dict | None = None,
               peak_flops: float | None = None, log=print, remat: bool = False,
               train_only: bool = False) -> dict[str, Any]:
    """Times our jitted train and eval steps; returns the measurements as a JSON-able dict."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sresformer_jax.energy import spike_totals
    from sresformer_jax.layers import resolve_conv_impl
    from sresformer_jax.model import count_params, create_model, init_variables
    from sresformer_jax.training.optim import make_optimizer
    from sresformer_jax.training.state import TrainState
    from sresformer_jax.training.steps import eval_step, train_step

    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if precision not in dtypes:
        raise ValueError(f"--precision must be one of {sorted(dtypes)}, got {precision!r}")
    overrides = dict(num_classes=num_classes, img_size=img_size, T=T, **(model_overrides or {}))
    model = create_model(model_name, dtype=None if precision == "float32" else dtypes[precision], remat=remat,
                         **overrides)
    config = bench_config(precision)
    tx, schedule = make_optimizer(config.optim, steps_per_epoch=1000)

    rng = jax.random.PRNGKey(0)
    init_rng, state_rng, data_rng = jax.random.split(rng, 3)
    t0 = time.perf_counter()
    variables = init_variables(model, init_rng)
    params = variables["params"]
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables["batch_stats"],
                       firing_rates=variables["firing_rates"], opt_state=jax.jit(tx.init)(params),
                       rng=state_rng)
    _block(state)
    init_s = time.perf_counter() - t0
    conv_impl = {"spikes": resolve_conv_impl(events=True, dtype=model.dtype or jnp.float32),
                 "other": resolve_conv_impl()}
    log(f"[ours] init {init_s:.1f}s, {count_params(params):,} params, conv impl {conv_impl['spikes']} "
        f"(spike inputs) / {conv_impl['other']} (image stem)")

    images = jax.random.normal(data_rng, (batch, img_size, img_size, model.in_channels), jnp.float32)
    labels = jnp.asarray(np.arange(batch) % num_classes, jnp.int32)
    train_batch = {"image": images, "label": labels}
    eval_batch = {"image": images, "label": labels, "mask": jnp.ones((batch,), jnp.float32)}

    train_fn = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config),
                       donate_argnums=0)
    t0 = time.perf_counter()
    train_c = train_fn.lower(state, train_batch).compile()
    train_compile_s = time.perf_counter() - t0
    log(f"[ours] train step compiled in {train_compile_s:.1f}s")

    holder = {"state": state}

    def run_train():
        holder["state"], m = train_c(holder["state"], train_batch)
        holder["metrics"] = _block(m)

    warm_train = _timed(run_train, warmup)
    train_times = _timed(run_train, steps)
    log(f"[ours] train step median {statistics.median(train_times):.2f}s ({train_times})")
    if train_only:
        return {"train_step_s": statistics.median(train_times), "device_memory": _device_memory()}

    eval_fn = jax.jit(functools.partial(eval_step, model=model))
    variables = calibrated_batch_stats(model, holder["state"].variables(), images)
    t0 = time.perf_counter()
    eval_c = eval_fn.lower(variables, eval_batch).compile()
    eval_compile_s = time.perf_counter() - t0
    log(f"[ours] eval step compiled in {eval_compile_s:.1f}s")
    run_eval = lambda: _block(eval_c(variables, eval_batch))  # noqa: E731
    warm_eval = _timed(run_eval, warmup)
    eval_times = _timed(run_eval, steps)
    log(f"[ours] eval step median {statistics.median(eval_times):.2f}s ({eval_times})")

    # The event kernels' speed depends on how many neurons fire: the rate of the benchmarked batch.
    _, counts = jax.jit(functools.partial(eval_step, model=model, count_spikes=True))(variables, eval_batch)
    totals = spike_totals(counts)
    firing_rate = sum(t for t, _ in totals.values()) / max(1, sum(n for _, n in totals.values()))
    log(f"[ours] mean firing rate of the benchmarked batch {100 * firing_rate:.2f} %")

    train_flops = model_flops(functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config),
                              holder["state"], train_batch)
    eval_flops = model_flops(functools.partial(eval_step, model=model), variables, eval_batch)

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
            "conv_impl": conv_impl, "mean_firing_rate": firing_rate, "num_params": count_params(params),
            "init_s": init_s,
            "train": summary(train_times, warm_train, train_compile_s, train_c, train_flops),
            "eval": summary(eval_times, warm_eval, eval_compile_s, eval_c, eval_flops),
            "peak_rss_bytes": peak_rss_bytes(), "device_memory": _device_memory(),
            "last_train_metrics": {k: float(v) for k, v in holder["metrics"].items()}}


# -------------------------------------------------------------------------------- official (PyTorch, subprocess)
# Our own driver, run by a separate interpreter; it only imports the user's checkout by path.
OFFICIAL_SCRIPT = r'''
import json, os, resource, statistics, sys, time, types
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["official_dir"])
import torch
timm_note = "timm"
try:
    import timm.models.registry  # noqa: F401  (the official model file imports register_model from here)
    import timm
    timm_note = "timm " + timm.__version__
except Exception as e:  # timm missing or broken (e.g. a torchvision that does not match torch)
    if not cfg["allow_timm_stub"]:
        raise
    timm_note = "stub register_model (timm import failed: %s: %s)" % (type(e).__name__, e)
    for name in ("timm", "timm.models", "timm.models.registry"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["timm.models.registry"].register_model = lambda f: f
from spikingjelly.activation_based import base as sj_base, functional
# The official neurons are built with backend='cupy'; construction checks that CuPy is importable. Allow
# that check to pass while building, then switch every module that has a backend to 'torch' (same math).
_check = sj_base.check_backend_library
sj_base.check_backend_library = lambda backend: None
try:
    import models.spikingresformer as official
    model = getattr(official, cfg["model"])(num_classes=cfg["num_classes"], img_size=cfg["img_size"],
                                            T=cfg["T"])
finally:
    sj_base.check_backend_library = _check
device = cfg.get("device", "cpu")
backend = "torch"
if device == "cuda":
    try:
        import cupy  # noqa: F401  (the official GPU runs use SpikingJelly's cupy neurons)
        backend = "cupy"
    except Exception:
        pass
n_backend = 0
for m in model.modules():
    if hasattr(m, "backend"):
        m.backend = backend
        n_backend += 1
model = model.to(device)
torch.manual_seed(0)
B, S = cfg["batch"], cfg["img_size"]
x = torch.randn(B, 3, S, S, device=device)
y = torch.arange(B, device=device) % cfg["num_classes"]
amp = bool(cfg.get("amp"))      # cuda: the official recipe, fp16 autocast + GradScaler; cpu: bf16 autocast
amp_dtype = torch.float16 if device == "cuda" else torch.bfloat16
scaler = torch.cuda.amp.GradScaler(enabled=amp) if device == "cuda" else None
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
def train():
    model.train()
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp):
        out = model(x)
        loss = crit(out.mean(0), y)
    if scaler is not None and amp:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    functional.reset_net(model)
    return float(loss)
def evaluate():
    model.eval()
    with torch.no_grad(), torch.autocast(device_type=device, dtype=amp_dtype, enabled=amp):
        out = model(x)
    functional.reset_net(model)
    sync()
    return out
def peak_rss():
    # VmHWM: this address space's high-water mark; ru_maxrss would include the parent's (fork+exec)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
def timed(fn, n):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return ts
rss_before = peak_rss()
wt = timed(train, cfg["warmup"]); tt = timed(train, cfg["steps"])
we = timed(evaluate, cfg["warmup"]); te = timed(evaluate, cfg["steps"])
res = {"torch": torch.__version__, "num_threads": torch.get_num_threads(), "timm": timm_note,
       "neurons_switched_to_torch_backend": n_backend if backend == "torch" else 0,
       "device": device, "neuron_backend": backend, "amp": amp,
       "device_peak_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None,
       "num_params": sum(p.numel() for p in model.parameters()),
       "train": {"step_s_median": statistics.median(tt), "step_s_all": tt, "warmup_s": wt,
                 "images_per_s": B / statistics.median(tt)},
       "eval": {"step_s_median": statistics.median(te), "step_s_all": te, "warmup_s": we,
                "images_per_s": B / statistics.median(te)},
       "peak_rss_bytes": peak_rss(),
       "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
       "rss_before_steps_bytes": rss_before}
print("''' + BENCH_JSON_PREFIX + r'''" + json.dumps(res), flush=True)
'''


def bench_official(official_dir: str, python: str, model_name: str, img_size: int, T: int, batch: int,
                   num_classes: int, steps: int, warmup: int, timeout: float | None = None,
                   allow_timm_stub: bool = True, log=print, device: str = "cpu", amp: bool = False,
                   huge_pages: bool | None = None, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs OFFICIAL_SCRIPT with ``python`` and returns its JSON (``{"error": ...}`` on failure).

    ``huge_pages``: glibc's huge pages on or off in its environment (default: as in this process);
    ``extra_env``: more environment variables for it (e.g. ``runtime.RETAIN_ENV``)."""
    d = Path(official_dir).expanduser().resolve()
    if not (d / "models" / "spikingresformer.py").is_file():
        raise FileNotFoundError(f"--official-dir {official_dir}: no models/spikingresformer.py there; pass the "
                                "root of a clone of https://github.com/xyshi2000/SpikingResformer")
    cfg = dict(official_dir=str(d), model=model_name, img_size=img_size, T=T, batch=batch,
               num_classes=num_classes, steps=steps, warmup=warmup, allow_timm_stub=allow_timm_stub,
               device=device, amp=amp)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)          # keep our repository off the official side's path
    if huge_pages is not None:
        env = runtime.with_huge_pages(env, huge_pages)
    env.update(extra_env or {})
    log(f"[official] running {python} (cwd {d}) ...")
    t0 = time.perf_counter()
    try:
        p = subprocess.run([python, "-c", OFFICIAL_SCRIPT, json.dumps(cfg)], cwd=d, env=env, text=True,
                           capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout}s"}
    wall = time.perf_counter() - t0
    for line in p.stdout.splitlines():
        if line.startswith(BENCH_JSON_PREFIX):
            res = json.loads(line[len(BENCH_JSON_PREFIX):])
            res["python"] = python
            res["official_dir"] = str(d)
            res["wall_s"] = wall
            res["huge_pages"] = runtime.huge_pages_active(env)
            res["allocator_env"] = {k: env[k] for k in sorted(env) if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
            try:
                res["official_commit"] = subprocess.run(["git", "-C", str(d), "rev-parse", "HEAD"], text=True,
                                                        capture_output=True, timeout=10).stdout.strip() or None
            except Exception:  # noqa: BLE001
                res["official_commit"] = None
            return res
    return {"error": f"exit {p.returncode}", "stderr_tail": p.stderr[-3000:], "stdout_tail": p.stdout[-1000:]}


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
    cmd = [sys.executable, str(ROOT / "bench.py"), "--probe-train-step", "--model", a.model, "--img-size",
           str(a.img_size), "--T", str(a.T), "--batch", str(batch), "--num-classes", str(a.num_classes),
           "--precision", a.precision] + (["--remat"] if a.remat else [])
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode == 0:
        return True
    if is_oom(p.stdout + p.stderr):
        return False
    raise RuntimeError(f"ours at batch {batch} failed without running out of memory:\n{p.stderr[-2000:]}")


def official_allocator(a) -> dict:
    """--official-host-memory as ``bench_official`` keywords: huge pages as here (same), off (system), or off
    with glibc keeping freed memory (retain)."""
    return {"same": {}, "system": {"huge_pages": False},
            "retain": {"huge_pages": False, "extra_env": runtime.RETAIN_ENV}}[a.official_host_memory]


def probe_official(a, batch: int) -> bool:
    r = bench_official(a.official_dir, a.official_python, a.model, a.img_size, a.T, batch, a.num_classes, 1, 0,
                       a.official_timeout, not a.no_timm_stub, log=lambda *_: None, device=a.official_device,
                       amp=a.official_amp, **official_allocator(a))
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
    alloc = lambda huge, env: ("huge pages" if huge else "retain" if "MALLOC_MMAP_MAX_" in (env or {})  # noqa: E731
                               else "glibc default")
    rows.append(("host allocator", alloc(result.get("huge_pages"), None) if ours else "—",
                 alloc(off["huge_pages"], off.get("allocator_env")) if off and "huge_pages" in off else "—", ""))
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
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--remat", action="store_true", help="jax.checkpoint per DSSA/GWFFN block (config.remat)")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n×n fp32 matmul peak reference")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/bench_<device>.json)")
    p.add_argument("--official-dir", default=None, help="root of a clone of xyshi2000/SpikingResformer")
    p.add_argument("--official-python", default=sys.executable,
                   help="interpreter with torch, spikingjelly==0.0.0.0.14 (and timm) for the official side")
    p.add_argument("--official-timeout", type=float, default=None, help="seconds; default no limit")
    p.add_argument("--no-timm-stub", action="store_true",
                   help="fail instead of stubbing timm's register_model when timm cannot be imported")
    p.add_argument("--skip-ours", action="store_true", help="only run the official side")
    p.add_argument("--official-device", default="cpu", choices=["cpu", "cuda"],
                   help="where the official side runs (cuda: SpikingJelly's cupy neurons if CuPy imports)")
    p.add_argument("--official-host-memory", default="same", choices=["same", "system", "retain"],
                   help="same: the official process gets this process's allocator settings (glibc huge pages, "
                        "see sresformer_jax/runtime.py); system: glibc's defaults, the way it ships; retain: "
                        "glibc keeps freed memory (runtime.RETAIN_ENV), the official side's fastest setting")
    p.add_argument("--official-amp", action="store_true",
                   help="official side under autocast: fp16 + GradScaler on cuda (its recipe), bf16 on cpu")
    p.add_argument("--max-batch", type=int, default=0,
                   help="also find the largest training batch that fits, doubling from --batch up to this cap "
                        "(each probe a fresh process)")
    p.add_argument("--probe-train-step", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.probe_train_step:                     # internal: one step for --max-batch, exit status says if it fit
        bench_ours(a.model, a.img_size, a.T, a.batch, a.num_classes, 1, 0, a.precision, remat=a.remat,
                   train_only=True, log=lambda *_: None)
        return {}

    import jax
    info = machine_info()
    result: dict[str, Any] = {
        "machine": dict(info, loadavg_start=loadavg()),
        "settings": {k: getattr(a, k) for k in ("model", "img_size", "T", "batch", "num_classes", "steps",
                                                "warmup", "precision", "remat")} | {"statistic": "median"},
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "huge_pages": runtime.huge_pages_active()}
    print(f"device: {info['platform']} / {info['device_kind']} ({info['cpu_model']}, {info['nproc']} cores), "
          f"jax {info['jax']}, load {result['machine']['loadavg_start']}")
    peak = matmul_peak(a.matmul_size)
    result["matmul_peak"] = peak
    print(f"matmul peak ({a.matmul_size}² fp32): {peak['flops_per_s'] / 1e9:.1f} GFLOP/s")
    # Order: the official side and every batch probe (each its own process) before ours runs in this process,
    # so that nothing ours allocates here shrinks what they can use on an accelerator.
    if a.official_dir:
        if a.precision != "float32":
            print("[official] note: the official side runs float32" + (
                " with autocast" if a.official_amp else " (--official-amp: under autocast)"))
        result["official"] = bench_official(a.official_dir, a.official_python, a.model, a.img_size, a.T,
                                            a.batch, a.num_classes, a.steps, a.warmup, a.official_timeout,
                                            not a.no_timm_stub, device=a.official_device, amp=a.official_amp,
                                            **official_allocator(a))
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
        result["ours"] = bench_ours(a.model, a.img_size, a.T, a.batch, a.num_classes, a.steps, a.warmup,
                                    a.precision, peak_flops=peak["flops_per_s"], remat=a.remat)
    ours, off = result.get("ours"), result.get("official")
    ratio = {}
    if ours and off and "error" not in off:
        ratio = {"train_images_per_s": ours["train"]["images_per_s"] / off["train"]["images_per_s"],
                 "eval_images_per_s": ours["eval"]["images_per_s"] / off["eval"]["images_per_s"],
                 "peak_rss": ours["peak_rss_bytes"] / off["peak_rss_bytes"]}
    mine, theirs = ((result.get(k) or {}).get("largest_fitting") for k in ("ours_largest_batch",
                                                                            "official_largest_batch"))
    if mine and theirs:
        ratio["largest_batch"] = mine / theirs
    if ratio:
        result["ratio_ours_over_official"] = ratio
    result["machine"]["loadavg_end"] = loadavg()
    print(table(result))
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / f"bench_{device_tag()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    del jax
    return result


if __name__ == "__main__":
    runtime.reexec_with_huge_pages()   # XLA:CPU's per-step buffers on huge pages (restarts once)
    main()
