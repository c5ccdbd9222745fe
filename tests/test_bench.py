"""Smoke test of bench.py's measurement on a tiny model (our side only; no official checkout)."""
from __future__ import annotations

import json

import bench
import pytest
from conftest import ROOT

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


def test_the_pod_reports_batch_search_extrapolates_and_confirms():
    import tpu_aot
    gib = 2**30
    needs = lambda b: (1 + 0.25 * b) * gib
    compiled = []

    def compile_fn(setting, b):
        compiled.append(b)
        return {"batch_per_chip": b, "hbm_bytes": needs(b)} if needs(b) <= 20 * gib else \
            {"batch_per_chip": b, "oom": {"temp_gib": needs(b) / gib, "available_gib": 20}}

    # fits at 32 (9 GiB): 64 (17 GiB) is over, the line through both gives 59 (15.75 GiB), confirmed at once
    r = tpu_aot.largest_batch({}, compile_fn({}, 32), 15.75 * gib, compile_fn=compile_fn)
    assert (r["from"], r["extrapolated"], r["largest_fitting"], compiled) == ([32, 64], 59, 59, [32, 64, 59])
    # does not fit at 128 (not even compiled: its temporaries alone exceed the HBM), so 64 is next, then 59
    compiled.clear()
    r = tpu_aot.largest_batch({}, compile_fn({}, 128), 15.75 * gib, compile_fn=compile_fn)
    assert (r["from"], r["largest_fitting"], compiled) == ([128, 64], 59, [128, 64, 59])
    # near the cap the compiler rematerialises on its own (here: fits to 50, then 15.9 GiB flat): bisection
    compiled.clear()

    def flat(s, b):
        if b <= 50:
            return compile_fn(s, b)
        compiled.append(b)
        return {"batch_per_chip": b, "oom": {"temp_gib": 15.9}}

    r = tpu_aot.largest_batch({}, compile_fn({}, 32), 15.75 * gib, tries=4, compile_fn=flat)
    assert [c["batch_per_chip"] for c in r["confirmed"]] == [63, 47, 55, 51, 49]
    assert (r["largest_fitting"], r["smallest_failing"]) == (49, 51)
    # a recorded search with a gap goes on from its compiles (phase 2 only)
    row = {"at_official_batch": {**compile_fn({}, 32), "device_kind": "TPU v5 lite"}, "topology": "v5e:2x2",
           "largest_batch": {**r, "confirmed": r["confirmed"][:2]}}
    assert tpu_aot.search_open(row) and not tpu_aot.search_open({**row, "largest_batch": r})
    compiled.clear()
    r2 = tpu_aot.largest_batch({}, row["at_official_batch"], 15.75 * gib, tries=4, compile_fn=flat,
                               previous=row["largest_batch"])
    assert r2["confirmed"] == r["confirmed"] and compiled == [55, 51, 49]
    # a compiler error at the second batch is reported, not taken for a fit
    r = tpu_aot.largest_batch({}, compile_fn({}, 32), 15.75 * gib,
                              compile_fn=lambda s, b: {"batch_per_chip": b, "error": "E1001: CompileTimeScopedVmemOom"})
    assert r["largest_fitting"] == 32 and "VmemOom" in r["error"]
    # a batch of one that does not fit: nothing smaller to try
    assert tpu_aot.largest_batch({}, {"batch_per_chip": 1, "oom": {"temp_gib": 30}}, 15.75 * gib,
                                 compile_fn=compile_fn)["largest_fitting"] is None


def test_the_pod_report_prints_its_json_as_the_readmes_table(tmp_path, capsys):
    import tpu_aot
    first = {"batch_per_chip": 32, "hbm_bytes": 9 * 2**30, "compile_s": 200.0, "device_kind": "TPU v5 lite"}
    row = {"config": "imagenet.py:ti", "img_size": 224, "T": 4, "precision": "bfloat16", "remat": "none",
           "topology": "v5e:2x2", "model": "spikingresformer_ti", "batch": 32, "at_official_batch": first,
           "fits_official_batch": True, "flops_per_image": 95e9, "collective_bytes_per_step": 45e6,
           "roofline_bound_img_per_s_per_chip": 171.0, "commit": "abc1234",
           "largest_batch": {"from": [32, 64], "confirmed": [], "largest_fitting": 47, "smallest_failing": 51}}
    oom = {k: v for k, v in row.items() if k not in ("flops_per_image", "collective_bytes_per_step",
                                                     "roofline_bound_img_per_s_per_chip", "largest_batch")}
    oom.update(remat="block", img_size=288, batch=16, at_official_batch={"batch_per_chip": 16, "compile_s": 30.0},
               oom={"temp_gib": 16.33, "available_gib": 15.75}, fits_official_batch=False)
    del row["commit"]
    (tmp_path / "r.json").write_text(json.dumps({"compiles": [oom], "rows": [row]}))
    tpu_aot.main(["--show", "--out", str(tmp_path / "r.json")])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| ti | 224 | 4 | bfloat16 | none | v5e | 32 | 9.00 | yes | 47 (not 51) | 95.0 | 45.0 | 171 | 200 |  |"
    assert lines[3] == "| ti | 288 | 4 | bfloat16 | block | v5e | 16 | 16.33 (temporaries) | no |  |  |  |  | 30 | abc1234 |"


def test_the_readmes_pod_table_is_the_recorded_report(capsys):
    """The README's pod-report table is ``tpu_aot.py --show`` of benchmarks/results/tpu_aot.json, row for row."""
    import tpu_aot
    tpu_aot.main(["--show"])
    shown = capsys.readouterr().out.strip()
    readme = (ROOT / "README.md").read_text()
    start = readme.index(shown.splitlines()[0])
    assert readme[start:].split("\n\n", 1)[0] == shown, "regenerate the table: python benchmarks/tpu_aot.py --show"
