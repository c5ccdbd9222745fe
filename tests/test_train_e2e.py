"""train.py / eval.py as a user runs them (subprocesses): quickstart steps + eval, exact resume,
4 devices vs 1, and two processes through jax.distributed vs one."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.slow         # every test here runs train.py/eval.py as a subprocess

ROOT = Path(__file__).resolve().parent.parent
# XLA's backend optimisation level 0 halves compile time; every comparison below is between runs that
# use the same flags, so it changes no assertion.
FAST_COMPILE = "--xla_backend_optimization_level=0"
# A tiny quickstart: batch 16, a few steps.
TINY = ["--config.batch_size=16",
        "--config.eval_batch_size=64", "--config.log_every_steps=2", "--config.checkpoint_every_steps=2",
        "--config.progress_bar=false", "--config.optim.epochs=2"]


def run(args, devices=1, env=None, check=True, timeout=600):
    e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
    e.update(env or {})
    p = subprocess.run([sys.executable, *args], cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{args} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def final_params(workdir: Path) -> dict:
    """Parameters of the newest checkpoint in ``workdir`` (flat name → array)."""
    from sresformer_jax import checkpoint
    step_dir = checkpoint.find_train_checkpoint(workdir, "latest")
    _, variables = checkpoint.load_variables(step_dir)
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}, int(step_dir.name)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """4 uninterrupted steps on one device."""
    wd = tmp_path_factory.mktemp("straight")
    p = run(["train.py", f"--workdir={wd}", "--config.total_steps=4", *TINY])
    return wd, p


def test_quickstart_steps_then_eval(straight):
    wd, p = straight
    assert "python eval.py --workdir=" in p.stdout
    recs = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["split"] == "train"] == [2, 4]
    assert all(np.isfinite(r["loss"]) for r in recs)
    assert (wd / "curves.png").stat().st_size > 0 and any((wd / "tensorboard").iterdir())
    assert sorted(int(d.name) for d in (wd / "checkpoints").iterdir() if d.name.isdigit()) == [2, 4]
    e = run(["eval.py", f"--workdir={wd}"])
    report = json.loads((wd / "eval.json").read_text())
    for key in ("top1", "top5", "sops_per_image", "energy_mj", "firing_rates"):
        assert key in report
    assert report["num_images"] == 359 and len(report["firing_rates"]) == 38
    assert report["energy_mj"] == pytest.approx(0.9e-9 * report["sops_per_image"])
    assert "SOPs / image" in e.stdout and (wd / "firing_rates.png").stat().st_size > 0


def test_resume_is_exact(straight, tmp_path):
    wd, _ = straight
    run(["train.py", f"--workdir={tmp_path}", "--config.total_steps=2", *TINY])
    p = run(["train.py", f"--workdir={tmp_path}", "--config.total_steps=4", *TINY])
    assert "resuming at step 2" in p.stderr
    a, sa = final_params(wd)
    b, sb = final_params(tmp_path)
    assert sa == sb == 4
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_four_devices_match_one(straight, tmp_path):
    wd, _ = straight
    run(["train.py", f"--workdir={tmp_path}", "--config.total_steps=4", *TINY], devices=4)
    a, _ = final_params(wd)
    b, _ = final_params(tmp_path)
    worst = max(float(np.abs(a[k] - b[k]).max() / (np.abs(a[k]).max() + 1e-12)) for k in a)
    assert worst < 1e-3, worst


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(straight, tmp_path):
    wd, _ = straight
    port = _free_port()
    e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count=2 {FAST_COMPILE}")
    procs = [subprocess.Popen(
        [sys.executable, "train.py", f"--workdir={tmp_path}", "--config.total_steps=4", *TINY, "--distributed",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-6000:]
    assert "4 cpu device(s), 2 process(es)" in outs[0][1]
    a, _ = final_params(wd)
    b, _ = final_params(tmp_path)
    worst = max(float(np.abs(a[k] - b[k]).max() / (np.abs(a[k]).max() + 1e-12)) for k in a)
    assert worst < 1e-3, worst


def test_config_overrides_and_unknown_keys(tmp_path):
    p = run(["train.py", f"--workdir={tmp_path}", "--config.no_such_key=1"], check=False)
    assert p.returncode != 0 and "no_such_key" in p.stderr
    p = run(["train.py", f"--workdir={tmp_path}", "--config.batch_size=abc"], check=False)
    assert p.returncode != 0 and "batch_size" in p.stderr


def test_init_from_transfers_everything_but_the_classifier(straight):
    """config.init_from = the official transfer(): all tensors but classifier.*, BN stats and firing rates too."""
    import optax
    from sresformer_jax.training.state import create_train_state
    from sresformer_jax.training.trainer import _transfer
    from sresformer_jax.configs import quickstart
    from sresformer_jax.model import build_model
    wd, _ = straight
    cfg = quickstart.get_config()
    model = build_model(cfg.model.to_dict())
    fresh = jax.jit(lambda r: create_train_state(model, optax.sgd(0.1), r, (8, 8, 1)))(jax.random.PRNGKey(7))
    moved = _transfer(fresh, wd)
    src, _ = final_params(wd)
    for coll in ("params", "batch_stats", "firing_rates"):
        flat = {f"['{coll}']" + jax.tree_util.keystr(k): np.asarray(v)
                for k, v in jax.tree_util.tree_flatten_with_path(getattr(moved, coll))[0]}
        for k, v in flat.items():
            if "classifier" in k:
                np.testing.assert_array_equal(v, np.asarray(fresh.params["classifier"]["kernel"]))
            else:
                np.testing.assert_array_equal(v, src[k], err_msg=k)
    assert float(np.abs(src["['firing_rates']['stage1_dssa1']['firing_rate_x']"]).min()) > 0
