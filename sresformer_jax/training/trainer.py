"""The training loop: ``train_and_evaluate(config, workdir)``.

Everything a run needs is in ``config`` (an ml_collections ConfigDict, see configs/); everything it
produces goes to ``workdir``: checkpoints (last K under ``checkpoints/``, best held-out top-1 under
``best/``), ``metrics.jsonl``, TensorBoard logs and ``curves.png``. Starting again on the same workdir
resumes from its latest checkpoint exactly (step, params, optimizer, BN and firing-rate statistics,
RNG; the data position is the step).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import checkpoint, trees
from ..data import get_dataset
from ..model import build_model
from ..ops import describe
from ..runtime import rss_bytes
from .config import check_data_fits
from .evaluation import evaluate
from .logging import MetricLogger, plot_curves
from . import run_config
from .optim import make_optimizer
from .preemption import Preempted, PreemptionWatcher
from .loss_scale import make_loss_scale
from .state import TrainState, create_train_state
from .steps import global_batch, jit_steps, make_mesh, shardings



class WorkdirLock:
    """An exclusive ``flock`` on ``WORKDIR/.train.lock`` held by process 0 for the whole run, so that a second
    trainer on the same workdir refuses to start. The kernel drops it when the holder dies (even by
    kill -9), so a crashed run never leaves the workdir locked."""

    def __init__(self, workdir: Path):
        self._fd = None
        if jax.process_index() != 0:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / ".train.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RuntimeError(f"another trainer ({holder}) is running in {workdir}; wait for it, stop it, or "
                               "use another --workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf; the last good checkpoint is kept untouched."""


def _mean(metrics: list[dict]) -> dict:
    """Per-key mean over steps; a skipped float16 step's non-finite values are left out."""
    out = {}
    for k in metrics[0]:
        vals = [float(m[k]) for m in metrics if math.isfinite(float(m[k])) or not m.get("skipped_step")]
        out[k] = sum(vals) / len(vals) if vals else float("nan")
    return out


def _transfer(state: TrainState, source: str | Path) -> TrainState:
    """The official ``transfer()``: every tensor but the classifier (BN statistics and firing rates too)."""
    _, variables = checkpoint.load_variables(source)
    new = {}
    for coll in ("params", "batch_stats", "firing_rates"):
        mine = getattr(state, coll)
        theirs = {k: v for k, v in variables.get(coll, {}).items() if k != "classifier"}
        flat_mine, flat_theirs = trees.flatten(mine), trees.flatten(theirs)
        bad = sorted(f"{coll}/{'/'.join(k)}" for k in flat_theirs
                     if k in flat_mine and tuple(flat_mine[k].shape) != tuple(np.shape(flat_theirs[k])))
        missing = sorted(f"{coll}/{'/'.join(k)}" for k in flat_mine if k not in flat_theirs and "classifier" not in k)
        if bad or missing:
            raise ValueError(f"init_from {source}: the checkpoint does not fit this model "
                             f"(mis-shaped: {bad}; missing: {missing})")
        new[coll] = trees.unflatten({k: jnp.asarray(flat_theirs[k], v.dtype) if k in flat_theirs else v
                                     for k, v in flat_mine.items()})
    return state.replace(**new)


def train_and_evaluate(config, workdir: str | Path) -> dict:
    """Trains ``config`` into ``workdir``; returns the final held-out metrics."""
    from .config import validate_config

    validate_config(config)
    workdir = Path(workdir).absolute()
    with WorkdirLock(workdir):
        return _train_and_evaluate(config, workdir)


def _stored_config(workdir: Path) -> dict | None:
    """The config a workdir's run was started with: ``WORKDIR/config.json``, or (a workdir without one) the one in
    its newest readable checkpoint's metadata."""
    stored = run_config.load(workdir)
    if stored is not None:
        return stored
    step_dir = checkpoint.find_train_checkpoint(workdir, "latest")
    try:
        return checkpoint.load_train_meta(step_dir).get("config") if step_dir else None
    except Exception:  # noqa: BLE001 - unreadable: restore_latest reports it (and falls back) as it always did
        return None


def _train_and_evaluate(config, workdir: Path) -> dict:
    config_dict = json.loads(config.to_json())
    resuming = checkpoint.find_train_checkpoint(workdir, "latest") is not None
    changed = run_config.check(workdir, config_dict, _stored_config(workdir) if resuming else None)
    if jax.process_index() == 0:
        run_config.save(workdir, config_dict)
    mesh = make_mesh()
    replicated, data_sharding = shardings(mesh)
    data = get_dataset(config, jax.process_index(), jax.process_count())
    check_data_fits(data, config)
    model = build_model(config.model.to_dict(), config.precision, config.get("remat", "none"))
    steps_per_epoch = data.steps_per_epoch
    total_steps = config.optim.epochs * steps_per_epoch if config.total_steps <= 0 else config.total_steps
    tx, schedule = make_optimizer(config.optim, steps_per_epoch)
    scale = make_loss_scale(config.precision, config.get("loss_scale"))
    init = jax.jit(lambda rng: create_train_state(model, tx, rng, data.input_shape, loss_scale=scale),
                   out_shardings=replicated)
    with contextlib.ExitStack() as stack:            # every exit path closes the checkpointers and writers
        ckpts = checkpoint.TrainCheckpoints(workdir, keep=config.keep_checkpoints)
        stack.callback(ckpts.close)
        return _loop(config, workdir, stack, ckpts, model, data, tx, schedule, init, mesh, replicated,
                     data_sharding, steps_per_epoch, total_steps, changed)


def _loop(config, workdir, stack, ckpts, model, data, tx, schedule, init, mesh, replicated, data_sharding,
          steps_per_epoch, total_steps, changed) -> dict:
    abstract = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract)
    restored = ckpts.restore_latest(abstract)
    if restored is not None:
        state, meta = restored
        best_top1 = meta.get("best_top1", -1.0)
        resumed = True
    else:
        state = init(jax.random.PRNGKey(config.seed))
        best_top1, resumed = -1.0, False
        if config.init_from:
            state = jax.device_put(_transfer(state, config.init_from), replicated)
    start = int(state.step)

    p_train, p_eval = jit_steps(model, tx, schedule, config, mesh)
    log = MetricLogger(workdir, total_steps, start, progress=config.progress_bar)
    stack.callback(log.close)
    preemption = stack.enter_context(PreemptionWatcher())
    model_cfg = model.config()
    log.message(f"{'resuming at step ' + str(start) if resumed else 'training'} {config.model_name} "
                f"({sum(x.size for x in jax.tree.leaves(state.params)):,} params) on {jax.device_count()} "
                f"{jax.devices()[0].platform} device(s), {jax.process_count()} process(es); conv_impl "
                f"{describe(model.conv_impl)}; {steps_per_epoch} steps/epoch, {total_steps} steps; workdir {workdir}")
    for line in changed if resumed else []:
        log.message(f"resuming with a changed {line}")

    def meta(step, **extra):
        return {"step": step, "epoch": step / steps_per_epoch, "data_position": {
            "epoch": step // steps_per_epoch, "index_in_epoch": step % steps_per_epoch},
            "best_top1": best_top1, "model_config": model_cfg, "conv_impl": model.conv_impl,
            "config": json.loads(config.to_json()), **extra}

    pending, pulled, t_log, last = [], [], time.time(), {}
    test = {}
    it = data.train_iterator(start)
    step = start

    def pull():
        """Moves the metrics of the steps run since the last pull to the host, stopping at the first
        non-finite value (so that no non-finite state is ever evaluated or saved)."""
        nonlocal pending
        values, first = jax.device_get(pending), step - len(pending) + 1
        pending = []
        for i, m in enumerate(values):
            bad = [k for k, v in m.items() if not math.isfinite(float(v))]
            if bad and not m.get("skipped_step"):       # float16: an overflow step is skipped, not a failure
                raise NonFiniteLossError(
                    f"step {first + i}: {bad[0]} is {float(m[bad[0]])}; training stopped. The last good "
                    f"checkpoint ({ckpts.latest_dir}) was not overwritten; lower optim.lr or check the data.")
        pulled.extend(values)

    while step < total_steps:
        batch = global_batch(next(it), data_sharding)
        state, metrics = p_train(state, batch)
        step += 1
        pending.append(metrics)
        end_of_epoch = step % steps_per_epoch == 0
        evaluate_now = (end_of_epoch and (step // steps_per_epoch) % config.eval_every_epochs == 0
                        ) or step == total_steps
        preempted = preemption.reached(step)
        save_now = step % config.checkpoint_every_steps == 0 or step == total_steps or preempted
        if step % config.log_every_steps == 0 or evaluate_now or save_now:
            pull()
        if step % config.log_every_steps == 0 or step == total_steps or (preempted and pulled):
            n = len(pulled)
            mean = _mean(pulled)
            mean["img_per_s"] = n * config.batch_size / (time.time() - t_log)
            mean["host_rss_mib"] = rss_bytes() / 2**20                # memory growth shows up in metrics.jsonl
            if len(data.skipped):
                mean["skipped_files"] = len(data.skipped)             # damaged files so far (skip_corrupt)
            pulled = []
            log.write(step, "train", mean)
            log.progress(n, loss=mean["loss"], acc=mean["top1"], lr=mean["lr"],
                         img_s=round(mean["img_per_s"], 1))
            last, t_log = mean, time.time()
        t_pause = time.time()
        if evaluate_now:
            test = evaluate(p_eval, state.variables(), data.eval_batches(), mesh)
            log.write(step, "test", test)
            log.message(f"step {step} (epoch {step / steps_per_epoch:.2f}): held-out top-1 "
                        f"{100 * test['top1']:.2f} %, top-5 {100 * test['top5']:.2f} %, loss {test['loss']:.4f}")
            if test["top1"] > best_top1:
                best_top1 = test["top1"]
                ckpts.save_best(step, state, meta(step, test=test))
        if save_now:
            ckpts.save(step, state, meta(step, test=test))
        if preempted:
            raise Preempted(preemption.signame, step, str(ckpts.latest_dir / str(step)))
        t_log += time.time() - t_pause          # img/s counts training time only
    stack.close()
    if len(data.skipped):
        shown = "; ".join(f"{p}: {why}" for p, why in data.skipped.items()[:3])
        print(f"skipped {len(data.skipped)} damaged file(s) (dataset.skip_corrupt): {shown}"
              f"{' …' if len(data.skipped) > 3 else ''}", file=sys.stderr)
    curves = plot_curves(workdir) if jax.process_index() == 0 else None
    if jax.process_index() == 0:
        print(json.dumps({"final_test": test, "best_top1": best_top1, "train": last,
                          "checkpoints": str(ckpts.latest_dir), "best": str(ckpts.best_dir),
                          "curves": str(curves) if curves else None}, indent=1))
        print(f"\nEvaluate it with:  python eval.py --workdir={workdir}")
    return test
