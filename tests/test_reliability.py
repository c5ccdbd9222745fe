"""Faults pod users meet, done for real in subprocesses: preemption signals (one process and two), a changed config on
an old workdir, error exits without traceback floods, damaged data files, a full disk, and evaluation while a run
is saving. Each checks that nothing is lost."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import synthetic
from conftest import (LONG, ROOT, STEPS, TINY, assert_same_params, checkpoint_steps, cli_env, free_port,
                      popen_train, run)

pytestmark = pytest.mark.slow         # every test here runs train.py/eval.py as a subprocess


def _train_records(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    return sum('"split": "train"' in line for line in path.read_text().splitlines()) if path.exists() else 0


def _wait_for(predicate, proc, timeout=400):
    deadline = time.time() + timeout
    while time.time() < deadline and not predicate():
        time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert predicate(), "timed out"


@pytest.mark.parametrize("sig,seed", [(signal.SIGTERM, 0), (signal.SIGINT, 1)])
def test_a_signal_at_a_random_step_saves_that_step_and_resumes_bitwise(straight_long, tmp_path, sig, seed):
    """SIGTERM (a pod's or SLURM's preemption) or SIGINT (Ctrl-C) at a random step: the step in flight finishes,
    is saved with its data position, the writers close, the exit names the step and the command that resumes;
    a second signal during the save changes nothing; the resumed run ends bitwise equal to an uninterrupted one."""
    at = random.Random(seed).randint(1, STEPS // 2)
    p = popen_train([f"--workdir={tmp_path}", *LONG])
    _wait_for(lambda: _train_records(tmp_path) >= at, p)
    p.send_signal(sig)
    time.sleep(0.05)
    p.send_signal(sig)                                     # a second one while it saves
    out, err = p.communicate(timeout=300)
    assert p.returncode == 128 + sig, err[-3000:]
    saved = checkpoint_steps(tmp_path)
    assert len(saved) == 1 and at <= saved[0] < STEPS, (saved, err[-2000:])
    assert f"stopped by {sig.name} after saving step {saved[0]}" in err and "Resume with the same command" in err
    assert f"--workdir={tmp_path}" in err.split("Resume with the same command")[1]
    assert "Traceback" not in err
    again = run(["train.py", f"--workdir={tmp_path}", *LONG])
    assert f"resuming at step {saved[0]}" in again.stderr
    assert_same_params(straight_long, tmp_path)


def test_sigterm_to_one_of_two_processes_saves_the_same_step_on_both_and_resumes_exactly(two_processes_long,
                                                                                          tmp_path):
    """JAX's preemption sync point: SIGTERM to process 1 only; both processes save the same step and stop; the
    resumed two-process run ends bitwise equal to an uninterrupted two-process run."""
    def launch(workdir):
        port = free_port()
        return [popen_train([f"--workdir={workdir}", *LONG, "--distributed", f"--coordinator_address=127.0.0.1:{port}",
                             "--num_processes=2", f"--process_id={i}"], env=cli_env(2)) for i in range(2)]

    ref, _ = two_processes_long
    work = tmp_path / "work"
    procs = launch(work)
    _wait_for(lambda: _train_records(work) >= 2, procs[0])
    procs[1].send_signal(signal.SIGTERM)
    errs = []
    for q in procs:
        _, err = q.communicate(timeout=600)
        errs.append(err)
        assert q.returncode == 128 + signal.SIGTERM, err[-3000:]
    saved = checkpoint_steps(work)
    assert len(saved) == 1 and saved[0] < STEPS, (saved, errs[0][-2000:])
    for err in errs:
        assert f"after saving step {saved[0]}" in err
    for q in launch(work):
        _, err = q.communicate(timeout=600)
        assert q.returncode == 0, err[-3000:]
    assert_same_params(ref, work)


def test_resuming_with_another_model_config_is_refused_naming_the_fields(straight, tmp_path):
    """Not "unreadable", not "corrupt": the differing fields, old → new, the two ways out, nothing moved, no
    traceback and no flood of the checkpointer's teardown."""
    wd, _ = straight
    work = tmp_path / "run"
    shutil.copytree(wd, work)
    before = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    out = run(["train.py", f"--workdir={work}", "--config.total_steps=8", *TINY, "--config.model.planes=(8,16,32)",
               "--config.optim.lr=0.001"], check=False)
    assert out.returncode == 1
    err = out.stderr
    assert "config.model.planes: [16, 32, 64] → [8, 16, 32]" in err and "config.optim.lr: 0.002 → 0.001" in err
    assert "--workdir" in err and "--config.model.planes='(16,32,64)'" in err
    assert "unreadable" not in err and "corrupt_checkpoints" not in err and "Traceback" not in err
    assert len(err.splitlines()) < 20, err
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == before        # nothing moved or written
    # the fields that may change on resume, may
    ok = run(["train.py", f"--workdir={work}", "--config.total_steps=6", *TINY, "--config.log_every_steps=1",
              "--config.model.conv_impl=slices"])
    assert "resuming at step 4" in ok.stderr and "resuming with a changed config.log_every_steps: 2 → 1" in ok.stderr
    assert json.loads((work / "config.json").read_text())["log_every_steps"] == 1


# tensorstore's callbacks into the failed restore's closed event loop (train.py/eval.py drop them:
# checkpoint.quiet_closed_loop_callbacks)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_shape_mismatch_on_restore_is_not_called_corruption(straight, tmp_path):
    """Restoring a workdir's checkpoints into a model of other shapes (what a changed config would do, were it not
    caught first) names the mismatch and moves nothing aside."""
    import jax

    from sresformer_jax import checkpoint
    from sresformer_jax.configs import quickstart
    from sresformer_jax.training.optim import make_optimizer
    from sresformer_jax.training.state import create_train_state
    from sresformer_jax.model import build_model
    wd, _ = straight
    work = tmp_path / "run"
    shutil.copytree(wd, work)
    cfg = quickstart.get_config()
    cfg.model.update(blocks=(1, 1, 1), planes=(8, 16, 32))                       # TINY's model, other widths
    model = build_model(cfg.model.to_dict(), conv_impl="xla")
    tx, _ = make_optimizer(cfg.optim, steps_per_epoch=89)
    abstract = jax.eval_shape(lambda: create_train_state(model, tx, jax.random.PRNGKey(0), (8, 8, 1)))
    ckpts = checkpoint.TrainCheckpoints(work)
    try:
        with pytest.raises(checkpoint.CheckpointMismatchError, match="other shapes"):
            ckpts.restore_latest(abstract)
    finally:
        ckpts.close()
    assert not (work / "corrupt_checkpoints").exists() and checkpoint_steps(work) == [2, 4]


def test_an_unknown_override_is_one_line_with_the_nearest_field(tmp_path, capsys):
    out = run(["train.py", f"--workdir={tmp_path}", "--config.optim.lrr=1"], check=False)     # as a user meets it
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "train.py: --config.optim.lrr is not a field of this config; did you mean --config.optim.lr?"]
    from sresformer_jax import cli
    assert cli.train(["train.py", f"--workdir={tmp_path}", "--config.nonexistent=1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "nonexistent" in err


def test_help_lists_the_config_fields_with_their_values(capsys):
    from sresformer_jax import cli
    with pytest.raises(SystemExit) as stop:
        cli.train(["train.py", "--config=configs/imagenet.py:ti", "--config.optim.lr=0.5",
                   "--config.model.v_reset=None", "--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and "--workdir" in out and "config fields of imagenet.py" in out
    assert "--config.total_steps=-1" in out and "--config.optim.lr=0.5" in out and "--config.model.T=4" in out
    assert "--config.model.v_reset=None" in out and "--config.model.tau=2.0" in out     # =None sets a field to None


def _image_folder(root: Path) -> Path:
    """12 training images: with batch 4, one epoch (3 steps) reads every one of them."""
    synthetic.write_image_folder(root, classes=3, per_class=(4, 2))
    return root


IMAGENET_TINY = ["--config=configs/imagenet.py:s", "--config.model.blocks=(1,1,1)", "--config.model.planes=(16,32,64)",
                 "--config.model.num_heads=(1,2,4)", "--config.model.group_size=16", "--config.model.img_size=32",
                 "--config.dataset.img_size=32", "--config.progress_bar=false", "--config.total_steps=3",
                 "--config.log_every_steps=1", "--config.batch_size=4", "--config.eval_batch_size=4",
                 "--config.model.num_classes=3", "--config.model.T=1", "--config.dataset.workers=1"]


@pytest.mark.parametrize("damage", ["truncated_jpeg", "garbage_png"])
def test_a_damaged_image_stops_naming_the_file_or_is_skipped_and_counted(tmp_path, damage):
    root = _image_folder(tmp_path / "data")
    victim = sorted((root / "train").rglob("*.JPEG"))[1]
    if damage == "truncated_jpeg":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    else:
        victim.unlink()
        victim = victim.with_suffix(".png")
        victim.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    args = [*IMAGENET_TINY, f"--config.dataset.data_dir={root}"]
    out = run(["train.py", f"--workdir={tmp_path / 'a'}", *args, "--config.optim.epochs=1"], check=False)
    assert out.returncode == 1 and f"DataFileError: {victim}" in out.stderr, out.stderr[-3000:]
    assert "skip_corrupt=True" in out.stderr and "Traceback" not in out.stderr
    ok = run(["train.py", f"--workdir={tmp_path / 'b'}", *args, "--config.dataset.skip_corrupt=True"])
    recs = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("skipped_files", 0) for r in recs) == 1
    assert f"skipped 1 damaged file(s) (dataset.skip_corrupt): {victim}" in ok.stderr


def test_an_empty_class_folder_is_named(tmp_path, capsys):
    from sresformer_jax import cli
    root = _image_folder(tmp_path / "data")
    for f in (root / "train" / sorted(os.listdir(root / "train"))[1]).iterdir():
        f.unlink()
    rc = cli.train(["train.py", f"--workdir={tmp_path / 'w'}", *IMAGENET_TINY, f"--config.dataset.data_dir={root}"])
    err = capsys.readouterr().err
    assert rc == 1 and "an empty class folder" in err and "Traceback" not in err


@pytest.mark.parametrize("dataset", ["cifar10_dvs", "dvs128_gesture"])
def test_a_truncated_event_file_stops_naming_it_or_is_left_out(tmp_path, dataset):
    from sresformer_jax.data import DataFileError, dvs
    root = tmp_path / "raw"
    if dataset == "cifar10_dvs":
        synthetic.write_cifar10_dvs(root, per_class=2, classes=("cat",))
        victim = sorted(root.rglob("*.aedat"))[0]
        victim.write_bytes(victim.read_bytes()[:-13])                     # cut inside an event
    else:
        synthetic.write_dvs128_gesture(root)
        victim = sorted(root.rglob("*.aedat"))[0]
        victim.write_bytes(victim.read_bytes()[:-100])                    # cut inside a packet
    with pytest.raises(DataFileError, match="truncated AEDAT") as e:
        dvs.READERS[dataset](victim)
    assert str(victim) in str(e.value)
    samples = {"train": [("a", str(victim), None, 0)], "test": []} if dataset == "cifar10_dvs" else None
    if samples is not None:
        with pytest.raises(DataFileError, match=str(victim)):
            dvs.build_frame_cache(dataset, str(tmp_path / "cache"), 4, samples, log=lambda *_: None)
        cache, skipped = dvs.build_frame_cache(dataset, str(tmp_path / "cache"), 4, samples, log=lambda *_: None,
                                               skip_corrupt=True)
        assert [s.path for s in skipped] == [str(victim)] and not list(cache.rglob("*.npz"))


def test_a_full_disk_stops_training_naming_the_path_and_keeps_the_previous_checkpoint(straight, tmp_path):
    """Writes over RLIMIT_FSIZE fail (EFBIG, SIGXFSZ ignored), as on a full disk; as root permissions would not."""
    wd, _ = straight
    work = tmp_path / "run"
    shutil.copytree(wd, work)
    for step in (4,):
        shutil.rmtree(work / "checkpoints" / str(step))                  # resume from step 2
    limited = ("import resource, signal, sys, runpy; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); sys.argv = sys.argv[1:]; "
               "runpy.run_path('train.py', run_name='__main__')")
    p = subprocess.run([sys.executable, "-c", limited, "train.py", f"--workdir={work}", "--config.total_steps=4",
                        *TINY], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "CheckpointWriteError: could not write checkpoint" in p.stderr and str(work / "checkpoints" / "4") in p.stderr
    assert f"{work / 'checkpoints' / '2'} is still the one a resume uses" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.splitlines()) < 20
    assert checkpoint_steps(work) == [2]
    run(["train.py", f"--workdir={work}", "--config.total_steps=4", *TINY])         # space again: resume
    assert_same_params(wd, work)


def test_eval_reads_only_complete_checkpoints_while_training_runs_and_takes_no_lock(tmp_path):
    p = popen_train([f"--workdir={tmp_path}", "--config.total_steps=400", *TINY, "--config.checkpoint_every_steps=2"])
    try:
        _wait_for(lambda: len(checkpoint_steps(tmp_path)) >= 1, p)
        lock_before = (tmp_path / ".train.lock").read_text()
        partial = tmp_path / "checkpoints" / "999.orbax-checkpoint-tmp-42"       # a save in progress
        partial.mkdir()
        (partial / "junk").write_bytes(os.urandom(64))
        e = run(["eval.py", f"--workdir={tmp_path}", "--which=latest"])
        assert "checkpoint     " in e.stdout and "999" not in e.stdout.split("checkpoint")[1].splitlines()[0]
        assert p.poll() is None                                                 # the trainer runs on
        assert (tmp_path / ".train.lock").read_text() == lock_before
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()


def test_randaugment_at_magnitude_10_trains(tmp_path):
    """Every op at magnitude 10 on every example (``rand-m10-n4-p1.0-inc1``, no spread): PosterizeIncreasing keeps 0
    bits whenever it is drawn (the case that crashed the M/L recipes), and training runs."""
    root = _image_folder(tmp_path / "data")
    run(["train.py", f"--workdir={tmp_path / 'w'}", *IMAGENET_TINY, f"--config.dataset.data_dir={root}",
         "--config.dataset.randaugment=rand-m10-n4-p1.0-inc1"])
