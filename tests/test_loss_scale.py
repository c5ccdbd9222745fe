"""float16 training with dynamic loss scaling: GradScaler's rule, skipped overflow steps, checkpointed scale."""
from __future__ import annotations

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sresformer_jax import checkpoint
from sresformer_jax.configs import quickstart
from sresformer_jax.training.loss_scale import make_loss_scale
from sresformer_jax.training.optim import make_optimizer
from sresformer_jax.training.state import create_train_state
from sresformer_jax.training.steps import train_step
from sresformer_jax.model import build_model
from sresformer_jax.training.trainer import _mean

TINY = dict(planes=(8,), num_heads=(1,), blocks=(1,), patch_sizes=(2,), group_size=8, num_classes=4, img_size=8)


def grad_scaler(scale, tracker, finite, interval, growth=2.0, backoff=0.5):
    """torch.cuda.amp.GradScaler.update, written out from its documentation."""
    if not finite:
        return scale * backoff, 0
    tracker += 1
    if tracker == interval:
        return scale * growth, 0
    return scale, tracker


def test_the_scale_follows_grad_scalers_rule():
    ls = make_loss_scale("float16", {"init_scale": 2.0 ** 16, "growth_interval": 3})
    scale, tracker = 2.0 ** 16, 0
    rng = np.random.default_rng(0)
    for finite in [bool(b) for b in rng.random(40) > 0.2]:
        ls = jax.jit(lambda s, f: s.adjust(f))(ls, jnp.asarray(finite))
        scale, tracker = grad_scaler(scale, tracker, finite, 3)
        assert float(ls.scale) == scale and int(ls.counter) == tracker
    defaults = make_loss_scale("float16")
    assert float(defaults.scale) == 2.0 ** 16 and defaults.growth_interval == 2000
    assert defaults.growth_factor == 2.0 and defaults.backoff_factor == 0.5
    assert jax.tree.leaves(make_loss_scale("bfloat16")) == []            # no scaling outside float16
    with pytest.raises(ValueError, match="growth_factor"):
        make_loss_scale("float16", {"growth_factor": 1.0})
    with pytest.raises(ValueError, match="backoff_factor"):
        make_loss_scale("float16", {"backoff_factor": 1.5})


@pytest.fixture(scope="module")
def fp16():
    cfg = quickstart.get_config()
    model = build_model({**cfg.model.to_dict(), **TINY}, "float16", conv_impl="xla")
    tx, schedule = make_optimizer(cfg.optim, steps_per_epoch=10)
    step = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=cfg))
    batch = {"image": jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1)), "label": jnp.arange(4) % 4}

    init = jax.jit(lambda rng, scale: create_train_state(model, tx, rng, (8, 8, 1), loss_scale=scale))

    def state(**scale):
        return init(jax.random.PRNGKey(0), make_loss_scale("float16", scale))
    return step, batch, state


def test_a_finite_float16_step_updates_and_counts(fp16):
    step, batch, state = fp16
    s0 = state(growth_interval=2)
    step.lower(s0, batch)                        # a state holding the scale lowers (as bench.py lowers it)
    s1, m1 = step(s0, batch)
    assert float(m1["skipped_step"]) == 0 and np.isfinite(float(m1["loss"])) and float(m1["grad_norm"]) > 0
    assert float(s1.loss_scale.scale) == 2.0 ** 16 and int(s1.loss_scale.counter) == 1
    assert not np.array_equal(jax.tree.leaves(s1.params)[0], jax.tree.leaves(s0.params)[0])
    s2, _ = step(s1, batch)
    assert float(s2.loss_scale.scale) == 2.0 ** 17 and int(s2.loss_scale.counter) == 0   # grew after 2


@pytest.mark.slow
def test_an_overflowing_step_is_skipped_and_backs_off(fp16):
    """A scale so large that the float16 cotangents overflow: parameters and optimizer state are kept, the scale
    halves, the step still counts (the data moves on, as in PyTorch), and the loss reported is the true one."""
    step, batch, state = fp16
    s0 = state(init_scale=2.0 ** 60)
    s1, m = step(s0, batch)
    assert float(m["skipped_step"]) == 1 and np.isfinite(float(m["loss"])) and float(m["grad_norm"]) == 0
    chex.assert_trees_all_equal(s1.params, s0.params)
    chex.assert_trees_all_equal(s1.opt_state, s0.opt_state)
    assert float(s1.loss_scale.scale) == 2.0 ** 59 and int(s1.loss_scale.counter) == 0
    assert int(s1.step) == 1


def test_the_scale_is_checkpointed_and_float32_checkpoints_keep_their_layout(fp16, tmp_path):
    step, batch, state = fp16
    s, _ = step(state(init_scale=1024.0), batch)
    ckpts = checkpoint.TrainCheckpoints(tmp_path / "fp16")
    ckpts.save(1, s, {"step": 1})
    ckpts.close()
    abstract = jax.eval_shape(lambda: state())
    restored, _ = checkpoint.TrainCheckpoints(tmp_path / "fp16").restore_latest(abstract)
    assert float(restored.loss_scale.scale) == 1024.0 and int(restored.loss_scale.counter) == 1
    assert restored.loss_scale.growth_interval == 2000
    chex.assert_trees_all_equal(restored.params, s.params)
    assert checkpoint._train_state_dict(s)["loss_scale"].keys() == {"scale", "counter"}
    f32 = s.replace(loss_scale=make_loss_scale("float32"))
    assert "loss_scale" not in checkpoint._train_state_dict(f32)


def test_logged_means_leave_out_a_skipped_steps_overflow():
    m = _mean([{"loss": 2.0, "skipped_step": 0.0}, {"loss": float("inf"), "skipped_step": 1.0}])
    assert m == {"loss": 2.0, "skipped_step": 0.5}
    assert np.isnan(_mean([{"loss": float("nan"), "skipped_step": 0.0}])["loss"])


@pytest.mark.slow
def test_float16_training_survives_overflow_steps(tmp_path):
    """As a user runs it: train.py in float16 with a scale that overflows at first; the run backs off, finishes,
    and metrics.jsonl records the scale and the fraction of skipped steps."""
    from conftest import TINY as RUN, run
    p = run(["train.py", f"--workdir={tmp_path}", "--config.total_steps=6", "--config.precision=float16",
             "--config.loss_scale.init_scale=1e30", *RUN])
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["split"] == "train"]
    assert train[0]["skipped_step"] > 0 and train[0]["loss_scale"] < 1e30, train
    assert all(np.isfinite(r["loss"]) for r in train) and "Traceback" not in p.stderr
