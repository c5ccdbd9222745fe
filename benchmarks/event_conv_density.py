"""How the event-driven convolution's speed depends on the firing rate: forward and kernel gradient of three
spike-input convolutions of spikingresformer_cifar (T·B = 32 images, batch 8), event kernels vs the matmul
("slices") lowering, at firing rates from 1 % to 50 %.

    python benchmarks/event_conv_density.py [--fold 32] [--reps 5] [--dtype float32|bfloat16]

Prints a table and writes benchmarks/results/event_conv_density_<backend>.json. The kernel gradient of the
slices lowering is its custom VJP's (one im2col matmul per chunk of images, ``ops.conv._kernel_grad_chunks``;
the unused dx is dropped by XLA). The spikes are independent Bernoulli draws; SpikingResformer's measured
rates are 3–14 % per layer at initialisation and 10.6 % on average after training (README).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sresformer_jax.ops import conv2d, kernels

# name, per-image input (H, W, Cin), k, stride, padding, groups, Cout
SHAPES = [
    ("s1 gw 3x3 256 g4 @32", (32, 32, 256), 3, 1, 1, 4, 256),
    ("s3 up 1x1 384->1536 @8", (8, 8, 384), 1, 1, 0, 1, 1536),
    ("s2 downsample 3x3 s2 64->192 @32", (32, 32, 64), 3, 2, 1, 1, 192),
]
RATES = (0.01, 0.035, 0.1, 0.2, 0.3, 0.5)


def timed(fn, *args, reps):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fold", type=int, default=32, help="images per call (T·B)")
    p.add_argument("--reps", type=int, default=5, help="timed calls per point (the minimum is reported)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if jax.default_backend() != "cpu" or kernels.unavailable():
        sys.exit(f"the event kernels are not available here: {kernels.unavailable() or 'they run on the CPU'}")
    dtype = jnp.dtype(a.dtype)
    rng = np.random.default_rng(0)
    rows = []
    for name, (h, w, c), k, s, pad, g, cout in SHAPES:
        kernel = jnp.asarray(rng.standard_normal((k, k, c // g, cout)) * 0.05, dtype)
        ho, wo = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
        dy = jnp.asarray(rng.standard_normal((a.fold, ho, wo, cout)), jnp.float32)
        fns = {}
        for impl in ("events", "slices"):
            fwd = jax.jit(lambda x, kk, impl=impl: conv2d(x, kk, s, pad, g, impl=impl))
            dk = jax.jit(lambda x, d, impl=impl: jax.vjp(
                lambda kk: conv2d(x, kk, s, pad, g, impl=impl), kernel)[1](d)[0])
            fns[impl] = (fwd, dk)
        for rate in RATES:
            x = jnp.asarray(rng.random((a.fold, h, w, c)) < rate, dtype)
            row = {"layer": name, "rate": rate}
            for impl, (fwd, dk) in fns.items():
                row[f"{impl}_fwd_ms"] = 1e3 * timed(fwd, x, kernel, reps=a.reps)
                row[f"{impl}_dk_ms"] = 1e3 * timed(dk, x, dy, reps=a.reps)
            rows.append(row)
            print(f"{name:34s} rate {100 * rate:4.1f} %  forward {row['events_fwd_ms']:7.1f} vs "
                  f"{row['slices_fwd_ms']:7.1f} ms ({row['slices_fwd_ms'] / row['events_fwd_ms']:4.1f}×)   "
                  f"kernel grad {row['events_dk_ms']:7.1f} vs {row['slices_dk_ms']:7.1f} ms "
                  f"({row['slices_dk_ms'] / row['events_dk_ms']:4.1f}×)", flush=True)
    out = Path(a.out or Path(__file__).parent / "results" / f"event_conv_density_{jax.default_backend()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"platform": platform.platform(), "processor": platform.processor(),
                                           "jax": jax.__version__, "devices": str(jax.devices())},
                               "fold": a.fold, "dtype": a.dtype, "columns": "events vs slices (ms)",
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
