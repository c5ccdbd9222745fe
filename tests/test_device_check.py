"""The accelerator check's dry run: the same script on the CPU at tiny sizes, so that its steps and its test
selection cannot rot (the selected tests themselves run in the suite)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import FAST_COMPILE, ROOT


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_device_check_dry_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OFFICIAL_DIR", "OFFICIAL_PYTHON")}
    env.update(OUT_DIR=str(tmp_path), PYTHONUNBUFFERED="1", XLA_FLAGS=FAST_COMPILE)   # tiny programs: compile fast
    p = subprocess.run(["bash", "benchmarks/device_check.sh", "--dry-run"], cwd=ROOT, env=env, text=True,
                       capture_output=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert "our side only" in p.stdout
    selected = (tmp_path / "golden_cpu.txt").read_text()
    assert "test_float32_path_is_the_same_computation" in selected and "test_sops_match_official_exactly" in selected
    census = json.loads((tmp_path / "census_cpu.json").read_text())
    assert census["train"]["flops_ratio"] <= 1.05 and not census["train"]["other_collectives"]
    mem = json.loads((tmp_path / "backward_memory_cpu.json").read_text())["spikingresformer_cifar"]
    assert {(r["precision"], r["remat"]) for r in mem["rows"]} == {("bfloat16", "none"), ("bfloat16", "block")}
    assert all(r["backward_bytes_per_neuron_step"] > 0 for r in mem["rows"])
    for prec in ("bf16", "fp16"):
        race = json.loads((tmp_path / f"device_race_{prec}_cpu.json").read_text())
        assert race["ours"]["train"]["images_per_s"] > 0
    assert json.loads((tmp_path / "device_race_bf16_cpu.json").read_text())["ours_largest_batch"]["largest_fitting"] >= 2
