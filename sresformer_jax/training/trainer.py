"""The training loop: ``train_and_evaluate(config, workdir)``.

Everything a run needs is in ``config`` (an ml_collections ConfigDict, see configs/); everything it
produces goes to ``workdir``: checkpoints (last K under ``checkpoints/``, best held-out top-1 under
``best/``), ``metrics.jsonl``, TensorBoard logs and ``curves.png``. Starting again on the same workdir
resumes from its latest checkpoint exactly (step, params, optimizer, BN and firing-rate statistics,
RNG; the data position is the step).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

from .. import checkpoint, trees
from ..data import get_dataset
from ..model import SpikingResformer, build_model
from ..ops import describe
from ..runtime import rss_bytes
from . import run_config
from .config import check_data_fits, validate_config
from .evaluation import evaluate
from .logging import MetricLogger, plot_curves
from .loss_scale import make_loss_scale
from .optim import make_optimizer
from .preemption import Preempted, PreemptionWatcher
from .state import TrainState, create_train_state
from .steps import EvalStep, global_batch, jit_steps, make_mesh, shardings


def train_and_evaluate(config, workdir: str | Path) -> dict:
    """Trains ``config`` into ``workdir`` (resuming it if it holds checkpoints); returns the final held-out metrics.

    The whole loop: the state is restored or built, then every step trains, and on its schedule logs, evaluates
    (keeping the best checkpoint), saves, and stops after saving if the job is being preempted."""
    validate_config(config)
    workdir = Path(workdir).absolute()
    data = get_dataset(config, jax.process_index(), jax.process_count())     # before anything is written
    check_data_fits(data, config)
    with WorkdirLock(workdir), contextlib.ExitStack() as stack:            # every exit closes what it opened
        run = _start(config, workdir, data, stack)
        state, best_top1 = _restore_or_init(run, stack)
        batches, window, test, last = data.train_iterator(int(state.step)), _Window(config.batch_size), {}, {}
        for step in range(int(state.step) + 1, run.total_steps + 1):
            state, metrics = run.train_step(state, global_batch(next(batches), run.data_sharding))
            window.add(metrics)
            preempted = run.preemption.reached(step)
            end = step == run.total_steps
            evaluate_now = end or (step % run.steps_per_epoch == 0 and
                                   (step // run.steps_per_epoch) % config.eval_every_epochs == 0)
            save_now = end or preempted or step % config.checkpoint_every_steps == 0
            if step % config.log_every_steps == 0 or evaluate_now or save_now:
                window.pull(step, run.checkpoints.latest_dir)      # stops at a NaN before anything is saved
            if step % config.log_every_steps == 0 or end or (preempted and window.pulled):
                last = window.log(step, run.log, skipped_files=len(data.skipped))
            with window.paused():                                  # img/s counts training time only
                if evaluate_now:
                    test = _evaluate(run, state, step)
                    if test["top1"] > best_top1:
                        best_top1 = test["top1"]
                        run.checkpoints.save_best(step, state, run.meta(step, best_top1, test))
                if save_now:
                    run.checkpoints.save(step, state, run.meta(step, best_top1, test))
            if preempted:
                raise Preempted(run.preemption.signame, step, str(run.checkpoints.latest_dir / str(step)))
    _finish(workdir, data, run, test, best_top1, last)
    return test


@dataclasses.dataclass
class _Run:
    """What a run holds besides its train state: the model, the compiled steps, the writers and the schedule."""
    config: Any
    workdir: Path
    data: Any
    model: SpikingResformer
    mesh: jax.sharding.Mesh
    replicated: jax.sharding.NamedSharding
    data_sharding: jax.sharding.NamedSharding
    init: Callable                 # rng → a fresh TrainState (jitted, replicated)
    train_step: Callable
    eval_step: EvalStep
    checkpoints: checkpoint.TrainCheckpoints
    log: MetricLogger | None
    preemption: PreemptionWatcher
    steps_per_epoch: int
    total_steps: int
    changed: list[str]             # the fields that changed since the workdir's run started (allowed ones)

    def meta(self, step: int, best_top1: float, test: dict) -> dict:
        """What a checkpoint stores beside the state: its step, data position, best top-1, configs, test metrics."""
        return {"step": step, "epoch": step / self.steps_per_epoch, "data_position": {
            "epoch": step // self.steps_per_epoch, "index_in_epoch": step % self.steps_per_epoch},
            "best_top1": best_top1, "model_config": self.model.config(), "conv_impl": self.model.conv_impl,
            "config": json.loads(self.config.to_json()), "test": test}


def _start(config, workdir: Path, data, stack: contextlib.ExitStack) -> _Run:
    """Checks the workdir's config, builds the model, optimizer, steps and writers of a run."""
    config_dict = json.loads(config.to_json())
    resuming = checkpoint.find_train_checkpoint(workdir, "latest") is not None
    changed = run_config.check(workdir, config_dict, _stored_config(workdir) if resuming else None)
    if jax.process_index() == 0:
        run_config.save(workdir, config_dict)
    mesh = make_mesh()
    replicated, data_sharding = shardings(mesh)
    model = build_model(config.model.to_dict(), config.precision, config.get("remat", "none"))
    steps_per_epoch = data.steps_per_epoch
    total_steps = config.optim.epochs * steps_per_epoch if config.total_steps <= 0 else config.total_steps
    tx, schedule = make_optimizer(config.optim, steps_per_epoch)
    scale = make_loss_scale(config.precision, config.get("loss_scale"))
    init = jax.jit(lambda rng: create_train_state(model, tx, rng, data.input_shape, loss_scale=scale),
                   out_shardings=replicated)
    ckpts = checkpoint.TrainCheckpoints(workdir, keep=config.keep_checkpoints)
    stack.callback(ckpts.close)
    train_step, eval_step = jit_steps(model, tx, schedule, config, mesh)
    preemption = stack.enter_context(PreemptionWatcher())
    return _Run(config, workdir, data, model, mesh, replicated, data_sharding, init, train_step, eval_step, ckpts,
                None, preemption, steps_per_epoch, total_steps, changed)


def _restore_or_init(run: _Run, stack: contextlib.ExitStack) -> tuple[TrainState, float]:
    """The workdir's newest readable checkpoint, or a fresh state (fine-tuned from ``init_from``); opens the log."""
    config, replicated = run.config, run.replicated
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated),
                            jax.eval_shape(run.init, jax.random.PRNGKey(config.seed)))
    restored = run.checkpoints.restore_latest(abstract)
    if restored is not None:
        state, meta = restored
        best_top1 = meta.get("best_top1", -1.0)
    else:
        state, best_top1 = run.init(jax.random.PRNGKey(config.seed)), -1.0
        if config.init_from:
            state = jax.device_put(_transfer(state, config.init_from), replicated)
    start = int(state.step)
    run.log = MetricLogger(run.workdir, run.total_steps, start, progress=config.progress_bar)
    stack.callback(run.log.close)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    run.log.message(f"{'resuming at step ' + str(start) if restored else 'training'} {config.model_name} "
                    f"({params:,} params) on {jax.device_count()} {jax.devices()[0].platform} device(s), "
                    f"{jax.process_count()} process(es); conv_impl {describe(run.model.conv_impl)}; "
                    f"{run.steps_per_epoch} steps/epoch, {run.total_steps} steps; workdir {run.workdir}")
    for line in run.changed if restored else []:
        run.log.message(f"resuming with a changed {line}")
    return state, best_top1


def _evaluate(run: _Run, state: TrainState, step: int) -> dict:
    test = evaluate(run.eval_step, state.variables(), run.data.eval_batches(), run.mesh)
    run.log.write(step, "test", test)
    run.log.message(f"step {step} (epoch {step / run.steps_per_epoch:.2f}): held-out top-1 "
                    f"{100 * test['top1']:.2f} %, top-5 {100 * test['top5']:.2f} %, loss {test['loss']:.4f}")
    return test


def _finish(workdir: Path, data, run: _Run, test: dict, best_top1: float, last: dict) -> None:
    """After the writers are closed: skipped files, the curves, and the summary with the command that evaluates."""
    if len(data.skipped):
        shown = "; ".join(f"{p}: {why}" for p, why in data.skipped.items()[:3])
        print(f"skipped {len(data.skipped)} damaged file(s) (dataset.skip_corrupt): {shown}"
              f"{' …' if len(data.skipped) > 3 else ''}", file=sys.stderr)
    if jax.process_index() == 0:
        curves = plot_curves(workdir)
        print(json.dumps({"final_test": test, "best_top1": best_top1, "train": last,
                          "checkpoints": str(run.checkpoints.latest_dir), "best": str(run.checkpoints.best_dir),
                          "curves": str(curves) if curves else None}, indent=1))
        print(f"\nEvaluate it with:  python eval.py --workdir={workdir}")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf; the last good checkpoint is kept untouched."""


class _Window:
    """The train metrics of the steps since the last log line: kept on the device until a log, evaluation or save
    point pulls them, then checked (a non-finite value stops the run before anything is evaluated or saved) and
    averaged into one ``metrics.jsonl`` record, with images/s over the training time only."""

    def __init__(self, batch_size: int):
        self.batch_size, self.pending, self.pulled, self.start, self._paused = batch_size, [], [], time.time(), 0.0

    def add(self, metrics: dict) -> None:
        self.pending.append(metrics)

    def pull(self, step: int, latest_dir: Path) -> None:
        values, first = jax.device_get(self.pending), step - len(self.pending) + 1
        self.pending = []
        for i, m in enumerate(values):
            bad = [k for k, v in m.items() if not math.isfinite(float(v))]
            if bad and not m.get("skipped_step"):       # float16: an overflow step is skipped, not a failure
                raise NonFiniteLossError(
                    f"step {first + i}: {bad[0]} is {float(m[bad[0]])}; training stopped. The last good "
                    f"checkpoint ({latest_dir}) was not overwritten; lower optim.lr or check the data.")
        self.pulled.extend(values)

    def log(self, step: int, log: MetricLogger, skipped_files: int = 0) -> dict:
        mean = _mean(self.pulled)
        mean["img_per_s"] = len(self.pulled) * self.batch_size / (time.time() - self.start - self._paused)
        mean["host_rss_mib"] = rss_bytes() / 2**20                      # memory growth shows up in metrics.jsonl
        if skipped_files:
            mean["skipped_files"] = skipped_files                      # damaged files so far (skip_corrupt)
        log.write(step, "train", mean)
        log.progress(len(self.pulled), loss=mean["loss"], acc=mean["top1"], lr=mean["lr"],
                     img_s=round(mean["img_per_s"], 1))
        self.pulled, self.start, self._paused = [], time.time(), 0.0
        return mean

    @contextlib.contextmanager
    def paused(self):
        t0 = time.time()
        try:
            yield
        finally:
            self._paused += time.time() - t0


def _mean(metrics: list[dict]) -> dict:
    """Per-key mean over steps; a skipped float16 step's non-finite values are left out."""
    out = {}
    for k in metrics[0]:
        vals = [float(m[k]) for m in metrics if math.isfinite(float(m[k])) or not m.get("skipped_step")]
        out[k] = sum(vals) / len(vals) if vals else float("nan")
    return out


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


def _transfer(state: TrainState, source: str | Path) -> TrainState:
    """The official ``transfer()``: every tensor but the classifier (BN statistics and firing rates too)."""
    collections = ("params", "batch_stats", "firing_rates")
    _, variables = checkpoint.load_variables(source)

    def all_but_the_classifier(tree: dict) -> dict:
        return {k: v for k, v in trees.paths(tree).items() if k.split("/")[1] != "classifier"}

    theirs = all_but_the_classifier({c: variables.get(c, {}) for c in collections})
    trees.check_fits(all_but_the_classifier({c: getattr(state, c) for c in collections}), theirs,
                     f"init_from {source}: the checkpoint does not fit this model")
    return state.replace(**{c: trees.unflatten({tuple(k.split("/")[1:]): jnp.asarray(theirs.get(k, v), v.dtype)
                                                for k, v in trees.paths({c: getattr(state, c)}).items()})
                            for c in collections})


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
