"""Training-step time and peak memory of our process on each host allocator (``sresformer_jax.runtime``).

    python benchmarks/host_allocator.py [--allocators system huge jemalloc tcmalloc] [--rounds 2] [--steps 6]
        [--model spikingresformer_cifar --img-size 32 --T 4 --batch 32] [--out PATH]

Each (round, allocator) is a fresh process started with ``runtime.allocator_env(name)`` (``bench.py --worker
--train-only``: the trainer's own state, optimizer and step), rounds interleaved so that a drift of the machine
shows up as a spread, not as a difference. Reported per allocator: the median training step of every round, peak
RSS and the process's minor page faults. Prints a table and writes ``benchmarks/results/host_allocator_cpu.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import bench

from sresformer_jax import runtime


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--allocators", nargs="+", default=["system", "huge", "jemalloc", "tcmalloc"],
                   choices=runtime.ALLOCATORS)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--model", default="spikingresformer_cifar")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--T", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--conv-impl", default="auto", choices=["auto", "xla", "slices", "events"])
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    a.remat, a.matmul_size = "none", 2048
    runs = []
    for r in range(a.rounds):
        for name in a.allocators:
            try:
                env = runtime.allocator_env(name)
            except FileNotFoundError as err:                     # a preload that is not installed
                print(f"{name}: skipped ({err})")
                continue
            res = bench._launch(bench.worker_cmd(a) + ["--train-only"], env, None, echo=False)
            if "error" in res:
                raise SystemExit(f"{name}: {res['error']}\n{res.get('stderr_tail', '')}")
            res.update(round=r, allocator=name)
            runs.append(res)
            print(f"round {r + 1} {name:9s} step {res['train_step_s']:6.2f} s  peak RSS "
                  f"{res['peak_rss_bytes'] / 2**30:5.2f} GiB  minor faults {res['minor_page_faults']:,}", flush=True)
    summary = {}
    for name in a.allocators:
        mine = [r for r in runs if r["allocator"] == name]
        if mine:
            summary[name] = {"train_step_s": [r["train_step_s"] for r in mine],
                             "peak_rss_gib": [r["peak_rss_bytes"] / 2**30 for r in mine],
                             "minor_page_faults": [r["minor_page_faults"] for r in mine]}
    base = statistics.median(summary["system"]["train_step_s"]) if "system" in summary else None
    print(f"\n{'allocator':10s} | train step s (each round) | system / this | peak RSS GiB")
    for name, s in summary.items():
        ratio = f"{base / statistics.median(s['train_step_s']):.2f}×" if base else "—"
        print(f"{name:10s} | {', '.join(f'{t:.2f}' for t in s['train_step_s']):25s} | {ratio:13s} | "
              f"{max(s['peak_rss_gib']):.2f}")
    result = {"settings": {k: getattr(a, k) for k in ("model", "img_size", "T", "batch", "precision", "conv_impl",
                                                       "steps", "warmup", "rounds")},
              "commit": bench._commit(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": runs[0]["machine"] if runs else None, "summary": summary, "runs": runs}
    out = Path(a.out) if a.out else Path(__file__).parent / "results" / "host_allocator_cpu.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
