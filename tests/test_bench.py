"""Smoke test of bench.py's measurement on a tiny model (our side only; no official checkout)."""
from __future__ import annotations

import json

import pytest

import bench

# one stage, 4×4 input, T = 1: compilation dominates; the test takes ~17 s on 2 cores
TINY = dict(planes=(8,), num_heads=(1,), blocks=(1,), patch_sizes=(2,), group_size=8)


@pytest.mark.slow
def test_bench_ours_tiny(tmp_path):
    res = bench.bench_ours("spikingresformer_cifar", img_size=4, T=1, batch=2, num_classes=4, steps=1,
                           warmup=0, model_overrides=TINY, peak_flops=1e9, log=lambda *a: None)
    for part in ("train", "eval"):
        r = res[part]
        assert {"step_s_median", "images_per_s", "compile_s", "flops_per_step", "memory_analysis"} <= set(r)
        assert r["images_per_s"] > 0 and r["compile_s"] > 0
    assert res["peak_rss_bytes"] > 0 and res["num_params"] > 0
    assert res["model_config"]["planes"] == [8]
    json.dumps(res)  # JSON-able
    peak = bench.matmul_peak(128, reps=1)
    assert peak["flops_per_s"] > 0
    table = bench.table({"ours": res})
    assert "train images/s" in table and "eval images/s" in table


def test_largest_batch_doubles_until_out_of_memory():
    assert bench.largest_batch(lambda b: b <= 96, 8, 1024, log=lambda *a: None) == {
        "largest_fitting": 64, "first_failing": 128, "cap": 1024}
    assert bench.largest_batch(lambda b: True, 8, 40, log=lambda *a: None)["largest_fitting"] == 32
    assert bench.largest_batch(lambda b: False, 8, 40, log=lambda *a: None)["largest_fitting"] is None


def test_oom_texts_are_recognised_and_other_errors_are_not():
    assert bench.is_oom("jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying")
    assert bench.is_oom("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not bench.is_oom("ValueError: config.model: heads must divide channels")
