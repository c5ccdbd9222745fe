"""Does each device compute only its shard? The training loop's steps compiled on one device and on all of them.

    python benchmarks/census.py                                   # the quickstart model on every local device
    python benchmarks/census.py --config imagenet.py:ti --batch-per-device 8 --conv-impl xla
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python benchmarks/census.py     # 4 CPU devices

For the train step and the spike-counting eval step (``sresformer_jax.training.aot.division_of_work``): the
per-device FLOPs on one device and on all at the same per-device batch, and the compiled program's collectives. It
prints a table, writes JSON (``--out``), and exits 1 when a device computes more than 1.05× one device's work or a
collective other than an all-reduce (one that would move activations) appears.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="quickstart.py", help="a shipped config spec or a config file")
    p.add_argument("--batch-per-device", type=int, default=8)
    p.add_argument("--conv-impl", default=None, help="the model's lowering (default: the config's)")
    p.add_argument("--tiny", action="store_true", help="planes 8/16/32, one block per stage, 16², T = 2")
    p.add_argument("--out", default=None, help="JSON path")
    a = p.parse_args(argv)
    import jax

    from sresformer_jax import configs
    from sresformer_jax.training.aot import division_of_work
    config = configs.load(a.config)
    if a.conv_impl:
        config.model.conv_impl = a.conv_impl
    if a.tiny:
        config.model.update(blocks=(1, 1, 1), planes=(8, 16, 32), num_heads=(1, 2, 4), group_size=8, img_size=16,
                            T=2)
        config.dataset.img_size = 16
    devices = jax.devices()
    r = division_of_work(config, devices, a.batch_per_device)
    print(f"{a.config}, {a.batch_per_device} per device, {len(devices)} {devices[0].platform} device(s)")
    ok = True
    for step in ("train", "eval"):
        s = r[step]
        reduce = s["census"].get("all-reduce", {"count": 0, "bytes": 0})
        others = sorted({c["op"] for c in s["other_collectives"]})
        print(f"  {step:5s} per-device FLOPs {s['flops_all'] / 1e9:.3f} G ({s['flops_ratio']:.4f}× one device); "
              f"{reduce['count']} all-reduces, {reduce['bytes'] / 1e6:.2f} MB; other collectives: "
              f"{', '.join(others) or 'none'}")
        ok &= s["flops_ratio"] <= 1.05 and not others
    print(f"  parameters {r['bytes']['params'] / 1e6:.2f} MB, BatchNorm statistics "
          f"{r['bytes']['batch_stats'] / 1e6:.3f} MB: {'each device computes its shard' if ok else 'FAILED'}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(r, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
