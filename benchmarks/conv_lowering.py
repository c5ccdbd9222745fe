"""Times conv2d's two lowerings ("xla": lax.conv_general_dilated, "slices": matmuls) on the conv shapes
of spikingresformer_cifar (32×32 input, T = 4; T is folded into the batch), forward and forward+backward.

    python benchmarks/conv_lowering.py [--batch 8] [--reps 3] [--no-variants]

Writes benchmarks/results/conv_lowering_cpu.json (…_<backend>.json elsewhere). The default batch is 8
(fold T·B = 32) rather than the training batch of 32 so that the run stays near 3 minutes on 2 cores;
per-sample costs are close to linear in the batch. XLA's grouped-conv gradient is so slow on CPU
(tens of seconds per call) that its fwd+bwd is timed once at fold --xla-grouped-fold and scaled
linearly to the table's fold (marked "~"). Besides the two lowerings, --variants (default on) times two
alternatives that were considered for conv2d: "blockdiag" (a grouped conv as a dense conv with a
block-diagonal kernel, g× the FLOPs) and "hybrid" (XLA's forward with the slices gradient, custom_vjp).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sresformer_jax.ops import conv2d

# name, per-image input (H, W, Cin), k, stride, padding, groups, Cout, uses per forward, batch kind
# ("B": run once per image, the static-image stem; "TB": per time step) — spikingresformer_cifar.
SHAPES = [
    ("stem 3x3 s1 3->64 @32", (32, 32, 3), 3, 1, 1, 1, 64, 1, "B"),
    ("s1 kv patch 4x4 s4 64->128 @32", (32, 32, 64), 4, 4, 0, 1, 128, 1, "TB"),
    ("s1 up 1x1 64->256 @32", (32, 32, 64), 1, 1, 0, 1, 256, 1, "TB"),
    ("s1 gw 3x3 256 g4 @32", (32, 32, 256), 3, 1, 1, 4, 256, 1, "TB"),
    ("s1 down 1x1 256->64 @32", (32, 32, 256), 1, 1, 0, 1, 64, 1, "TB"),
    ("ds1 3x3 s2 64->192 @32", (32, 32, 64), 3, 2, 1, 1, 192, 1, "TB"),
    ("s2 kv patch 2x2 s2 192->384 @16", (16, 16, 192), 2, 2, 0, 1, 384, 2, "TB"),
    ("s2 up 1x1 192->768 @16", (16, 16, 192), 1, 1, 0, 1, 768, 2, "TB"),
    ("s2 gw 3x3 768 g12 @16", (16, 16, 768), 3, 1, 1, 12, 768, 2, "TB"),
    ("s2 down 1x1 768->192 @16", (16, 16, 768), 1, 1, 0, 1, 192, 2, "TB"),
    ("ds2 3x3 s2 192->384 @16", (16, 16, 192), 3, 2, 1, 1, 384, 1, "TB"),
    ("s3 up 1x1 384->1536 @8", (8, 8, 384), 1, 1, 0, 1, 1536, 3, "TB"),
    ("s3 gw 3x3 1536 g24 @8", (8, 8, 1536), 3, 1, 1, 24, 1536, 3, "TB"),
    ("s3 down 1x1 1536->384 @8", (8, 8, 1536), 1, 1, 0, 1, 384, 3, "TB"),
]


def blockdiag_conv(x, kernel, stride, padding, groups):
    """Grouped conv as a dense one: K_dense[i, j, g·C/g + c, o] = K[i, j, c, o] if g(o) == g else 0."""
    k, _, cg, cout = kernel.shape
    kg = kernel.reshape(k, k, cg, groups, cout // groups)
    dense = jnp.einsum("ijcgo,hg->ijhcgo", kg, jnp.eye(groups, dtype=kernel.dtype))
    return conv2d(x, dense.reshape(k, k, groups * cg, cout), stride, padding, 1, impl="slices")


def hybrid_conv(x, kernel, stride, padding, groups):
    """XLA's forward, the slices lowering's gradient (custom_vjp; no forward-mode AD)."""
    @jax.custom_vjp
    def f(x, kernel):
        return conv2d(x, kernel, stride, padding, groups, impl="xla")

    def bwd(res, dy):
        return jax.vjp(lambda x, w: conv2d(x, w, stride, padding, groups, impl="slices"), *res)[1](dy)

    f.defvjp(lambda x, kernel: (f(x, kernel), (x, kernel)), bwd)
    return f(x, kernel)


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(nproc=os.cpu_count(), cpu_model=model, platform=platform.platform(),
                python=platform.python_version(), jax=jax.__version__, backend=jax.default_backend(),
                loadavg_start=os.getloadavg())


def _time(fn, args, reps):
    jax.block_until_ready(fn(*args))                       # compile + warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return ts


def _programs(conv, stride, padding, groups, wrt):
    """jitted forward, and forward + backward: y and the gradients of ⟨y, ct⟩ w.r.t. the ``wrt`` args."""
    f = functools.partial(conv, stride=stride, padding=padding, groups=groups)

    def fwd_bwd(x, w, ct):
        y, vjp = jax.vjp(f, x, w)
        grads = vjp(ct)
        return y, tuple(grads[i] for i in wrt)

    return jax.jit(f), jax.jit(fwd_bwd)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="images per batch B (training uses 32)")
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3, help="timed runs after one warm-up; median reported")
    ap.add_argument("--xla-grouped-fold", type=int, default=4)
    ap.add_argument("--no-variants", dest="variants", action="store_false")
    ap.add_argument("--only", default="", help="substring filter on shape names")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    info = machine()
    fold = args.T * args.batch
    print(f"machine: {info['nproc']} × {info['cpu_model']}, jax {info['jax']} ({info['backend']}), "
          f"load average {info['loadavg_start'][0]:.2f}")
    print(f"batch B={args.batch}, T={args.T}: fold T·B={fold} (stem: B={args.batch}); training uses B=32 "
          f"(fold 128): batch reduced to keep the run short. fwd+bwd = both gradients (stem: kernel only, "
          f"its input is the image); median of {args.reps} after a warm-up; GFLOP/s counts 1× (fwd) / 3× "
          f"(fwd+bwd; 2× for the stem) the forward FLOPs.")
    rng = np.random.default_rng(0)
    rows = []
    hdr = f"{'shape':34s} {'impl':9s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'GF/s fwd':>9s} {'GF/s f+b':>9s} " \
          f"{'speedup fwd':>11s} {'speedup f+b':>11s}"
    print(hdr + "\n" + "-" * len(hdr), flush=True)
    t_start = time.perf_counter()
    for name, (h, w, cin), k, s, p, g, cout, uses, kind in SHAPES:
        if args.only not in name:
            continue
        n = args.batch if kind == "B" else fold
        x = jnp.asarray(rng.standard_normal((n, h, w, cin)), jnp.float32)
        kern = jnp.asarray(rng.standard_normal((k, k, cin // g, cout)) * 0.05, jnp.float32)
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        ct = jnp.asarray(rng.standard_normal((n, ho, wo, cout)), jnp.float32)
        wrt = (1,) if kind == "B" else (0, 1)
        flops = 2 * n * ho * wo * cout * (cin // g) * k * k
        impls = {"xla": functools.partial(conv2d, impl="xla"), "slices": functools.partial(conv2d, impl="slices")}
        if args.variants and g > 1 and g <= 4:
            impls["blockdiag"] = blockdiag_conv
        if args.variants and g == 1 and k > 1 and k != s:
            impls["hybrid"] = hybrid_conv
        res = {}
        for impl, conv in impls.items():
            fwd, fwd_bwd = _programs(conv, s, p, g, wrt)
            tf = _time(fwd, (x, kern), args.reps)
            if impl == "xla" and g > 1 and args.xla_grouped_fold < n:   # scale from a small fold
                m = args.xla_grouped_fold
                sub = (x[:m], kern, ct[:m])
                tb = [t * n / m for t in _time(fwd_bwd, sub, 1)]
                est = True
            else:
                tb, est = _time(fwd_bwd, (x, kern, ct), args.reps), False
            res[impl] = dict(fwd_ms=1e3 * statistics.median(tf), fwd_bwd_ms=1e3 * statistics.median(tb),
                             fwd_min_ms=1e3 * min(tf), fwd_bwd_min_ms=1e3 * min(tb), fwd_bwd_extrapolated=est)
        for impl, r in res.items():
            bmul = 1 + len(wrt)
            r.update(shape=name, impl=impl, fold=n, uses_per_forward=uses, gflop_fwd=flops / 1e9,
                     gflops_fwd=flops / r["fwd_ms"] / 1e6, gflops_fwd_bwd=bmul * flops / r["fwd_bwd_ms"] / 1e6,
                     speedup_fwd=res["xla"]["fwd_ms"] / r["fwd_ms"],
                     speedup_fwd_bwd=res["xla"]["fwd_bwd_ms"] / r["fwd_bwd_ms"])
            mark = "~" if r["fwd_bwd_extrapolated"] else " "
            print(f"{name:34s} {impl:9s} {r['fwd_ms']:9.1f} {mark}{r['fwd_bwd_ms']:10.1f} "
                  f"{r['gflops_fwd']:9.1f} {r['gflops_fwd_bwd']:9.1f} {r['speedup_fwd']:10.2f}× "
                  f"{r['speedup_fwd_bwd']:10.2f}×", flush=True)
            rows.append(r)

    totals = {}
    for impl in ("xla", "slices"):
        sel = [r for r in rows if r["impl"] == impl]
        totals[impl] = {key: sum(r[key] * r["uses_per_forward"] for r in sel) for key in ("fwd_ms", "fwd_bwd_ms")}
    if totals["xla"]["fwd_ms"]:
        print(f"\nall convs of one model step (each shape × its uses), fold {fold}:")
        for impl, t in totals.items():
            print(f"  {impl:7s} fwd {t['fwd_ms']:8.0f} ms   fwd+bwd {t['fwd_bwd_ms']:8.0f} ms")
        print(f"  slices speedup: fwd {totals['xla']['fwd_ms'] / totals['slices']['fwd_ms']:.2f}×, "
              f"fwd+bwd {totals['xla']['fwd_bwd_ms'] / totals['slices']['fwd_bwd_ms']:.2f}×")
    info["loadavg_end"] = os.getloadavg()
    wall = time.perf_counter() - t_start
    print(f"\nwall time {wall:.0f} s; load average at end {info['loadavg_end'][0]:.2f} "
          "(other processes on this machine inflate and scatter the times)")
    out = Path(args.out) if args.out else (
        Path(__file__).parent / "results" / f"conv_lowering_{jax.default_backend()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = dict(batch=args.batch, T=args.T, fold=fold, reps=args.reps, statistic="median",
                    xla_grouped_fold=args.xla_grouped_fold, dtype="float32", wall_s=wall)
    out.write_text(json.dumps(dict(machine=info, settings=settings, rows=rows, model_totals=totals), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
