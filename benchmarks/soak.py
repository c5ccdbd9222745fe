"""Long-run soak of the training loop: the quickstart model for 2,000 steps, memory and step time every 100 steps.

    python benchmarks/soak.py [--steps 2000] [--every 100] [--out benchmarks/results/soak_cpu.json]

Runs ``train_and_evaluate`` in this process (the real loop: data, steps, metrics, checkpoints) on the quickstart
config with evaluation off, and reads ``host_rss_mib`` and ``img_per_s`` from the ``metrics.jsonl`` records the loop
writes every ``--every`` steps. Reports the RSS at each record against the one at step 200 (targets: ≤ 1.05× at
the end, step time flat) and writes JSON. Start it with the host allocator you train with (e.g.
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``); the JSON names it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from sresformer_jax import runtime
from sresformer_jax.configs import quickstart
from sresformer_jax.training import train_and_evaluate
from sresformer_jax.training.logging import read_metrics


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "soak_cpu.json"))
    a = p.parse_args(argv)
    config = quickstart.get_config()
    config.total_steps, config.log_every_steps = a.steps, a.every
    config.eval_every_epochs, config.checkpoint_every_steps = 10**6, 1000
    config.progress_bar = False
    t0 = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        train_and_evaluate(config, workdir)
        recs = [r for r in read_metrics(workdir) if r["split"] == "train"]
    wall = time.time() - t0
    base = next(r for r in recs if r["step"] >= 2 * a.every)
    rows = [{"step": r["step"], "host_rss_mib": r["host_rss_mib"], "img_per_s": r["img_per_s"],
             "step_ms": 1e3 * config.batch_size / r["img_per_s"],
             "rss_over_step_200": r["host_rss_mib"] / base["host_rss_mib"]} for r in recs]
    print(f"{'step':>6} | {'RSS MiB':>8} | {'× step 200':>10} | {'step ms':>8}")
    for r in rows:
        print(f"{r['step']:6d} | {r['host_rss_mib']:8.1f} | {r['rss_over_step_200']:10.3f} | {r['step_ms']:8.1f}")
    later = [r["step_ms"] for r in rows if r["step"] > 2 * a.every]
    result = {"settings": vars(a) | {"model": "quickstart", "batch_size": config.batch_size},
              "commit": subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip() or None,
              "host_allocator": runtime.describe(), "wall_s": wall, "rows": rows,
              "rss_end_over_step_200": rows[-1]["rss_over_step_200"],
              "step_ms_median_after_200": statistics.median(later),
              "step_ms_spread_after_200": [min(later), max(later)]}
    print(f"RSS at step {rows[-1]['step']}: {result['rss_end_over_step_200']:.3f}× step 200; step time after 200: "
          f"median {result['step_ms_median_after_200']:.1f} ms, {min(later):.1f}–{max(later):.1f}")
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
