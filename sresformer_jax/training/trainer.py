"""The training loop: ``train_and_evaluate(config, workdir)``.

Everything a run needs is in ``config`` (an ml_collections ConfigDict, see configs/); everything it
produces goes to ``workdir``: checkpoints (last K under ``checkpoints/``, best held-out top-1 under
``best/``), ``metrics.jsonl``, TensorBoard logs and ``curves.png``. Starting again on the same workdir
resumes from its latest checkpoint exactly (step, params, optimizer, BN and firing-rate statistics,
RNG; the data position is the step).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import checkpoint
from ..data import get_dataset
from ..model import SpikingResformer
from .logging import MetricLogger, plot_curves
from .optim import make_optimizer
from .state import TrainState, create_train_state
from .steps import global_batch, jit_steps, make_mesh, shardings

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf; the last good checkpoint is kept untouched."""


def build_model(config) -> SpikingResformer:
    """The model of ``config.model`` computing in ``config.precision`` (parameters stay float32)."""
    if config.precision not in DTYPES:
        raise ValueError(f"config.precision must be one of {sorted(DTYPES)}, got {config.precision!r}")
    dtype = DTYPES[config.precision]
    return SpikingResformer.from_config(config.model.to_dict(), dtype=None if dtype == jnp.float32 else dtype)


def evaluate(p_eval, variables, data, data_sharding) -> dict[str, float]:
    """Held-out loss, top-1 and top-5 over the whole test set (padding masked out)."""
    sums = None
    for local in data.eval_batches():
        out = p_eval(variables, global_batch(local, data_sharding))
        sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    sums = jax.device_get(sums)
    n = max(float(sums["count"]), 1.0)
    return {"loss": float(sums["loss"]) / n, "top1": float(sums["top1"]) / n, "top5": float(sums["top5"]) / n,
            "count": int(sums["count"])}


def _transfer(state: TrainState, source: str | Path) -> TrainState:
    """The official ``transfer()``: every tensor but the classifier (BN statistics and firing rates too)."""
    _, variables = checkpoint.load_variables(source)
    new = {}
    for coll in ("params", "batch_stats", "firing_rates"):
        mine = getattr(state, coll)
        theirs = {k: v for k, v in variables.get(coll, {}).items() if k != "classifier"}
        flat_mine = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(mine)[0]}
        flat_theirs = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(theirs)[0]}
        bad = sorted(f"{coll}{k}" for k in flat_theirs
                     if k in flat_mine and tuple(flat_mine[k].shape) != tuple(np.shape(flat_theirs[k])))
        missing = sorted(f"{coll}{k}" for k in flat_mine if k not in flat_theirs and "classifier" not in k)
        if bad or missing:
            raise ValueError(f"init_from {source}: the checkpoint does not fit this model "
                             f"(mis-shaped: {bad}; missing: {missing})")

        def pick(path, v):
            k = jax.tree_util.keystr(path)
            return jnp.asarray(flat_theirs[k], v.dtype) if k in flat_theirs else v

        new[coll] = jax.tree_util.tree_map_with_path(pick, mine)
    return state.replace(**new)


def train_and_evaluate(config, workdir: str | Path) -> dict:
    """Trains ``config`` into ``workdir``; returns the final held-out metrics."""
    from .config import validate_config

    validate_config(config)
    workdir = Path(workdir).absolute()
    mesh = make_mesh()
    replicated, data_sharding = shardings(mesh)
    data = get_dataset(config, jax.process_index(), jax.process_count())
    model = build_model(config)
    steps_per_epoch = data.steps_per_epoch
    total_steps = config.optim.epochs * steps_per_epoch if config.total_steps <= 0 else config.total_steps
    tx, schedule = make_optimizer(config.optim, steps_per_epoch)

    init = jax.jit(lambda rng: create_train_state(model, tx, rng, data.input_shape), out_shardings=replicated)
    ckpts = checkpoint.TrainCheckpoints(workdir, keep=config.keep_checkpoints)
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
    model_cfg = model.config()
    log.message(f"{'resuming at step ' + str(start) if resumed else 'training'} {config.model_name} "
                f"({sum(x.size for x in jax.tree.leaves(state.params)):,} params) on {jax.device_count()} "
                f"{jax.devices()[0].platform} device(s), {jax.process_count()} process(es); "
                f"{steps_per_epoch} steps/epoch, {total_steps} steps; workdir {workdir}")

    def meta(step, **extra):
        return {"step": step, "epoch": step / steps_per_epoch, "data_position": {
            "epoch": step // steps_per_epoch, "index_in_epoch": step % steps_per_epoch},
            "best_top1": best_top1, "model_config": model_cfg, "config": json.loads(config.to_json()), **extra}

    acc, n_acc, t_log, last = None, 0, time.time(), {}
    test = {}
    it = data.train_iterator(start)
    step = start
    try:
        while step < total_steps:
            batch = global_batch(next(it), data_sharding)
            state, metrics = p_train(state, batch)
            step += 1
            acc = metrics if acc is None else jax.tree.map(jnp.add, acc, metrics)
            n_acc += 1
            if step % config.log_every_steps == 0 or step == total_steps:
                mean = {k: float(v) / n_acc for k, v in jax.device_get(acc).items()}
                if not all(math.isfinite(v) for v in mean.values()):
                    bad = [k for k, v in mean.items() if not math.isfinite(v)]
                    raise NonFiniteLossError(
                        f"non-finite {bad[0]} in steps {step - n_acc + 1}..{step}; stopping. The last good "
                        f"checkpoint in {ckpts.latest_dir} is kept; lower optim.lr or check the data.")
                dt = time.time() - t_log
                mean["img_per_s"] = n_acc * config.batch_size / dt
                log.write(step, "train", mean)
                log.progress(n_acc, loss=mean["loss"], acc=mean["top1"], lr=mean["lr"],
                             img_s=round(mean["img_per_s"], 1))
                last, acc, n_acc, t_log = mean, None, 0, time.time()
            end_of_epoch = step % steps_per_epoch == 0
            if (end_of_epoch and (step // steps_per_epoch) % config.eval_every_epochs == 0) or step == total_steps:
                test = evaluate(p_eval, state.variables(), data, data_sharding)
                log.write(step, "test", test)
                log.message(f"step {step} (epoch {step / steps_per_epoch:.2f}): held-out top-1 "
                            f"{100 * test['top1']:.2f} %, top-5 {100 * test['top5']:.2f} %, loss {test['loss']:.4f}")
                if test["top1"] > best_top1:
                    best_top1 = test["top1"]
                    ckpts.save_best(step, state, meta(step, test=test))
                t_log = time.time()
            if step % config.checkpoint_every_steps == 0 or step == total_steps:
                ckpts.save(step, state, meta(step, test=test))
    finally:
        ckpts.close()
        log.close()
    curves = plot_curves(workdir) if jax.process_index() == 0 else None
    if jax.process_index() == 0:
        print(json.dumps({"final_test": test, "best_top1": best_top1, "train": last,
                          "checkpoints": str(ckpts.latest_dir), "best": str(ckpts.best_dir),
                          "curves": str(curves) if curves else None}, indent=1))
        print(f"\nEvaluate it with:  python eval.py --workdir={workdir}")
    return test
