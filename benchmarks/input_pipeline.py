"""Input-pipeline throughput, to size the CPU hosts that feed the accelerators.

    python benchmarks/input_pipeline.py                       # synthetic data in the real formats
    python benchmarks/input_pipeline.py --imagenet_dir=DIR    # your ImageNet (class folders or TFDS)

Reports, per CPU core (one loader thread) and with every core (``--workers``, default all):
* ImageNet train pipeline (decode JPEG → RandomResizedCrop 224 bicubic → flip → RandAugment
  rand-m7-mstd0.5-inc1 → normalise), images/s; and the eval pipeline (resize 235, crop 224);
* DVS: building the frame cache (read a raw CIFAR10-DVS AEDAT file → 16 frames), samples/s; and the
  training transform from the cache (load → resize 128→64 antialiased → DVSAugment → ON+OFF), frames/s.
Synthetic JPEGs are 500×375 (ImageNet's typical size), synthetic event files hold 200,000 events (about a
CIFAR10-DVS sample). Prints a table and writes JSON (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import synthetic                                # benchmarks/synthetic.py: tiny datasets in the real formats

from sresformer_jax.data import dvs, get_dataset


def rate(fn, batches: int, per_batch: int) -> float:
    fn(0)                                                          # warm-up
    t = time.perf_counter()
    for i in range(1, batches + 1):
        fn(i)
    return batches * per_batch / (time.perf_counter() - t)


def iterate_rate(it, batches: int, per_batch: int, workers: int) -> float:
    for _ in range(2 * workers + 1):                               # fill the read-ahead buffer first
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * per_batch / (time.perf_counter() - t)


def imagenet(data_dir: str | None, tmp: Path, batch: int, batches: int, workers: int) -> dict:
    from sresformer_jax.configs import imagenet as cfgmod
    if data_dir is None:
        data_dir = str(synthetic.write_image_folder(tmp / "imagenet", classes=4, per_class=(64, 16),
                                                     size=(500, 375)))
    c = cfgmod.get_config("ti")
    c.dataset.data_dir = data_dir
    c.batch_size = c.eval_batch_size = batch
    c.dataset.workers = 0
    d = get_dataset(c)
    train_1 = rate(d.train_batch, batches, batch)
    eval_1 = rate(lambda i: d.load_eval(np.arange(batch) % d.num_test), batches, batch)
    c.dataset.workers = workers
    train_n = iterate_rate(get_dataset(c).train_iterator(0), batches * workers, batch, workers)
    return {"train_img_s_per_core": train_1, "eval_img_s_per_core": eval_1,
            f"train_img_s_{workers}_workers": train_n}


def events(tmp: Path, batch: int, batches: int, workers: int, T: int = 16) -> dict:
    from sresformer_jax.configs import cifar10_dvs as cfgmod
    raw = tmp / "cifar10_dvs"
    n = max(batch * (batches * (1 + (os.cpu_count() or 1)) + 8) // 10 + 1, 2)
    synthetic.write_cifar10_dvs(raw, per_class=n + 1, events=200_000)
    split = {"train": {c: [f"cifar10_{c}_{i}" for i in range(n)] for c in dvs.CIFAR10_DVS_CLASSES},
             "test": {c: [f"cifar10_{c}_{n}"] for c in dvs.CIFAR10_DVS_CLASSES}}
    (tmp / "split.json").write_text(json.dumps(split))
    samples = dvs.cifar10_dvs_samples(str(raw), str(tmp / "split.json"))
    t = time.perf_counter()
    dvs.build_frame_cache("cifar10_dvs", str(raw), T, samples, workers=1, log=lambda *_: None)
    cache_rate = sum(len(v) for v in samples.values()) / (time.perf_counter() - t)
    c = cfgmod.get_config()
    c.dataset.update(data_dir=str(raw), split_file=str(tmp / "split.json"), workers=0)
    c.batch_size = c.eval_batch_size = batch
    d = get_dataset(c)
    train_1 = rate(d.train_batch, batches, batch) * T
    c.dataset.workers = workers
    train_n = iterate_rate(get_dataset(c).train_iterator(0), batches * workers, batch, workers) * T
    return {"cache_samples_s_per_core": cache_rate, "train_frames_s_per_core": train_1,
            f"train_frames_s_{workers}_workers": train_n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--imagenet_dir", default=None)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/input_pipeline_cpu.json)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        res = {"machine": f"{platform.node()} ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
               "imagenet": imagenet(a.imagenet_dir, Path(tmp), a.batch, a.batches, a.workers),
               "dvs_cifar10_T16": events(Path(tmp), a.batch, a.batches, a.workers)}
    print(f"input pipeline on {res['machine']}")
    print(f"{'pipeline':<44}{'per core':>12}{f'{a.workers} workers':>14}")
    im, ev = res["imagenet"], res["dvs_cifar10_T16"]
    print(f"{'ImageNet train (img/s)':<44}{im['train_img_s_per_core']:>12.1f}"
          f"{im[f'train_img_s_{a.workers}_workers']:>14.1f}")
    print(f"{'ImageNet eval (img/s)':<44}{im['eval_img_s_per_core']:>12.1f}{'':>14}")
    print(f"{'CIFAR10-DVS frame cache build (samples/s)':<44}{ev['cache_samples_s_per_core']:>12.1f}{'':>14}")
    print(f"{'CIFAR10-DVS train, 64², T=16 (frames/s)':<44}{ev['train_frames_s_per_core']:>12.1f}"
          f"{ev[f'train_frames_s_{a.workers}_workers']:>14.1f}")
    out = Path(a.out or Path(__file__).parent / "results" / "input_pipeline_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
