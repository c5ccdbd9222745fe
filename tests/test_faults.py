"""Faults done for real, in subprocesses as a user would meet them: kill -9 mid-run, corrupt checkpoints,
a non-finite loss, two trainers on one workdir, bad configs. Each checks that nothing is lost."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_train_e2e import ROOT, TINY, final_params, run, straight  # noqa: F401  (shared 4-step run)


pytestmark = pytest.mark.slow         # every test here runs train.py/eval.py as a subprocess

def _steps(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _assert_same_params(a_dir: Path, b_dir: Path) -> None:
    a, sa = final_params(a_dir)
    b, sb = final_params(b_dir)
    assert sa == sb
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _popen(args, workdir):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS="--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0")
    return subprocess.Popen([sys.executable, "train.py", f"--workdir={workdir}", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_then_resume_is_bitwise_identical(straight, tmp_path):
    wd, _ = straight
    p = _popen(["--config.total_steps=4", *TINY], tmp_path)
    deadline = time.time() + 400
    while time.time() < deadline and not _steps(tmp_path):
        time.sleep(0.2)
        assert p.poll() is None, p.communicate()[1][-3000:]
    p.send_signal(signal.SIGKILL)   # right after the first checkpoint: mid-run, maybe mid-save of the next
    p.wait()
    # a half-written checkpoint such as a killed save leaves behind: orbax's temporary directory
    junk = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234567"
    junk.mkdir(parents=True, exist_ok=True)
    (junk / "garbage").write_bytes(os.urandom(64))
    out = run(["train.py", f"--workdir={tmp_path}", "--config.total_steps=4", *TINY])
    assert "resuming at step" in out.stderr
    _assert_same_params(wd, tmp_path)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "delete"])
def test_corrupt_latest_checkpoint_falls_back_to_previous(straight, tmp_path, damage):
    wd, _ = straight
    work = tmp_path / "run"
    shutil.copytree(wd, work)
    latest = work / "checkpoints" / "4"
    files = sorted(p for p in (latest / "state").rglob("*") if p.is_file() and p.stat().st_size > 0)
    for f in files:                 # damage every data file of the newest checkpoint
        if damage == "garbage":
            f.write_bytes(os.urandom(max(8, f.stat().st_size // 2)))
        elif damage == "truncate":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
        else:
            f.unlink()
    out = run(["train.py", f"--workdir={work}", "--config.total_steps=4", *TINY])
    assert f"{latest}" in out.stderr and "unreadable" in out.stderr
    assert "resuming at step 2" in out.stderr
    assert any((work / "corrupt_checkpoints").iterdir())       # kept for inspection, never loaded
    _assert_same_params(wd, work)                               # steps 3–4 re-trained identically


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(straight, tmp_path):
    wd, _ = straight
    work = tmp_path / "run"
    shutil.copytree(wd, work)
    for step in _steps(work):
        shutil.rmtree(work / "checkpoints" / str(step) / "state")
    before = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    out = run(["train.py", f"--workdir={work}", "--config.total_steps=6", *TINY], check=False)
    assert out.returncode != 0
    assert "no readable checkpoint" in out.stderr and "Refusing to start from scratch" in out.stderr
    after = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    assert after == before                                      # nothing touched


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    out = run(["train.py", f"--workdir={tmp_path}", "--config.total_steps=6", *TINY,
               "--config.checkpoint_every_steps=1", "--config.log_every_steps=3", "--config.optim.lr=1e30",
               "--config.optim.warmup_epochs=0"], check=False)
    assert out.returncode != 0
    assert "NonFiniteLossError" in out.stderr and "step " in out.stderr
    steps = _steps(tmp_path)
    bad = int(out.stderr.split("NonFiniteLossError: step ")[1].split(":")[0])
    assert all(s < bad for s in steps)                          # nothing saved at or after the bad step


def test_second_trainer_on_same_workdir_refuses(tmp_path):
    a = _popen(["--config.total_steps=400", *TINY], tmp_path)
    lock = tmp_path / ".train.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().startswith("pid")):
        time.sleep(0.1)
    try:
        b = run(["train.py", f"--workdir={tmp_path}", "--config.total_steps=400", *TINY], check=False)
        assert b.returncode != 0 and "another trainer" in b.stderr and f"pid {a.pid}" in b.stderr
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()
    # a killed trainer leaves no stale lock behind
    c = run(["train.py", f"--workdir={tmp_path}", "--config.total_steps=1", *TINY], check=False)
    assert "another trainer" not in c.stderr and c.returncode == 0, c.stderr[-2000:]


@pytest.mark.parametrize("override,field", [
    ("--config.batch_size=15", "batch_size"),                 # not divisible by the 2 devices below
    ("--config.model.group_size=24", "group_size"),
    ("--config.model.num_heads=(1,3,4)", "num_heads"),
    ("--config.model.T=0", "T must be >= 1"),
    ("--config.model.img_size=10", "img_size"),
    ("--config.no_such_field=1", "no_such_field"),
])
def test_bad_config_fails_fast_naming_the_field(tmp_path, override, field):
    t0 = time.time()
    out = run(["train.py", f"--workdir={tmp_path}", *TINY, override], devices=2, check=False)
    assert out.returncode != 0 and field in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr or "no_such_field" in override   # (flag parsing's own error)
    assert not (tmp_path / "checkpoints").exists()
    assert time.time() - t0 < 60                               # before any compilation


def test_own_formats_hold_no_pickles(straight):
    """Training checkpoints (orbax: tensorstore + JSON), metrics and reports contain no pickle stream."""
    wd, _ = straight
    files = [p for p in wd.rglob("*") if p.is_file()]
    assert files
    for f in files:
        head = f.read_bytes()[:2]
        assert not (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5), f"{f} looks like a pickle"
