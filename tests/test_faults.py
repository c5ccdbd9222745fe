"""Faults done for real, in subprocesses as a user would meet them: kill -9 mid-run, corrupt checkpoints,
a non-finite loss, two trainers on one workdir, bad configs. Each checks that nothing is lost."""
from __future__ import annotations

import os
import shutil
import signal
import time

import pytest

from conftest import TINY, assert_same_params, checkpoint_steps, popen_train, run

pytestmark = pytest.mark.slow         # every test here runs train.py/eval.py as a subprocess


def test_kill_9_then_resume_is_bitwise_identical(straight, tmp_path):
    """kill -9 right after the first checkpoint (mid-run, maybe mid-save of the next): the next run resumes from the
    newest complete checkpoint, ignoring a half-written one, and ends bitwise equal to the uninterrupted run."""
    wd, _ = straight
    p = popen_train([f"--workdir={tmp_path}", "--config.total_steps=4", *TINY])
    deadline = time.time() + 400
    while time.time() < deadline and not checkpoint_steps(tmp_path):
        time.sleep(0.2)
        assert p.poll() is None, p.communicate()[1][-3000:]
    p.send_signal(signal.SIGKILL)   # right after the first checkpoint: mid-run, maybe mid-save of the next
    p.wait()
    # a half-written checkpoint such as a killed save leaves behind: orbax's temporary directory
    junk = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234567"
    junk.mkdir(parents=True, exist_ok=True)
    (junk / "garbage").write_bytes(os.urandom(64))
    complete = checkpoint_steps(tmp_path)[-1]
    out = run(["train.py", f"--workdir={tmp_path}", "--config.total_steps=4", *TINY])
    assert f"resuming at step {complete}" in out.stderr
    assert_same_params(wd, tmp_path)


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
    assert_same_params(wd, work)                               # steps 3–4 re-trained identically


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(straight, tmp_path):
    wd, _ = straight
    work = tmp_path / "run"
    shutil.copytree(wd, work)
    for step in checkpoint_steps(work):
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
    steps = checkpoint_steps(tmp_path)
    bad = int(out.stderr.split("NonFiniteLossError: step ")[1].split(":")[0])
    assert all(s < bad for s in steps)                          # nothing saved at or after the bad step


def test_second_trainer_on_same_workdir_refuses(tmp_path):
    a = popen_train([f"--workdir={tmp_path}", "--config.total_steps=400", *TINY])
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
    ("--config.model.group_size=24", "group_size"),
    ("--config.model.num_heads=(1,3,4)", "num_heads"),
    ("--config.model.T=0", "T must be >= 1"),
    ("--config.model.img_size=10", "img_size"),
    ("--config.no_such_field=1", "no_such_field"),
])
def test_bad_config_fails_fast_naming_the_field(tmp_path, capsys, override, field):
    """In-process (``cli.train(argv)``): one message naming the field, before any compilation, nothing written."""
    from sresformer_jax import cli
    t0 = time.time()
    rc = cli.train(["train.py", f"--workdir={tmp_path}", *TINY, override])
    err = capsys.readouterr().err
    assert rc != 0 and field in err, err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "checkpoints").exists()
    assert time.time() - t0 < 60                               # before any compilation


def test_a_batch_the_devices_do_not_divide_is_refused_by_train_py(tmp_path):
    """As a user meets it: train.py on 2 devices with a batch of 15, exit status 1, one line, nothing written."""
    out = run(["train.py", f"--workdir={tmp_path}", *TINY, "--config.batch_size=15"], devices=2, check=False)
    assert out.returncode == 1 and "batch_size" in out.stderr and "2 devices" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "checkpoints").exists()


def test_own_formats_hold_no_pickles(straight):
    """Training checkpoints (orbax: tensorstore + JSON), metrics and reports contain no pickle stream."""
    wd, _ = straight
    files = [p for p in wd.rglob("*") if p.is_file()]
    assert files
    for f in files:
        head = f.read_bytes()[:2]
        assert not (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5), f"{f} looks like a pickle"
