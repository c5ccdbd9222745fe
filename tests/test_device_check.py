"""The accelerator check's dry run: the same steps on the CPU at tiny sizes, so that the script cannot rot."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_device_check_dry_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OFFICIAL_DIR", "OFFICIAL_PYTHON")}
    env.update(OUT_DIR=str(tmp_path), PYTHONUNBUFFERED="1")
    p = subprocess.run(["bash", "benchmarks/device_check.sh", "--dry-run"], cwd=ROOT, env=env, text=True,
                       capture_output=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert "our side only" in p.stdout
    mem = json.loads((tmp_path / "backward_memory_cpu.json").read_text())["spikingresformer_cifar"]
    assert {(r["precision"], r["remat"]) for r in mem["rows"]} == {("bfloat16", "none"), ("bfloat16", "block")}
    assert all(r["backward_bytes_per_neuron_step"] > 0 for r in mem["rows"])
    for prec in ("bf16", "fp16"):
        race = json.loads((tmp_path / f"device_race_{prec}_cpu.json").read_text())
        assert race["ours"]["train"]["images_per_s"] > 0
        assert race["ours_largest_batch"]["largest_fitting"] >= 2
    assert "passed" in p.stdout and "failed" not in p.stdout
